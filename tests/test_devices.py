"""GPUs of one machine shared out among its jobs (fpt_core/devices.py), and the points where a
training step would make the host wait for the GPU (fpt_core/train.py), counted on the CPU.

Claiming runs in real processes (the locks are per process) on GPUs faked by FPT_FAKE_GPUS,
and end to end through Snakemake's local executor with `--resources gpu=2`.
"""
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from datetime import datetime
from itertools import combinations
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import fpt_core.train as train_mod
from fpt_core import devices
from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError
from fpt_core.run import Run
from fpt_core.study import Study
from fpt_core.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "profiles", "environment.yml", "paper")
SCHEDULER_VARS = ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES", devices.FAKE, devices.SLOT)

# A job: claim, say what it holds, hold it until its stdin closes (or it is killed).
HOLDER = """
import os, sys
from fpt_core import devices
devices.claim(int(sys.argv[1]))
print("HELD", os.environ["CUDA_VISIBLE_DEVICES"], os.environ["FPT_GPU_SLOT"], flush=True)
sys.stdin.read()
"""


def machine_env(locks: Path, fake: int | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARS}
    env[devices.LOCKS] = str(locks)
    if fake is not None:
        env[devices.FAKE] = str(fake)
    return {**env, **extra}


class Job:
    def __init__(self, env: dict, gpus: int = 1):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(gpus)], cwd=ROOT, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.gpus: str | None = None
        self._said: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self._said.put(line) for line in self.proc.stdout],
                         daemon=True).start()

    def held(self, timeout: float = 20.0) -> str | None:
        """The GPUs it holds (CUDA_VISIBLE_DEVICES), once it says so; None if not by `timeout`."""
        end = time.monotonic() + timeout
        while self.gpus is None:
            try:
                line = self._said.get(timeout=max(0.0, end - time.monotonic()))
            except queue.Empty:
                return None
            self.lines.append(line)
            if line.startswith("HELD"):
                _, visible, slot = line.split()
                assert visible == slot
                self.gpus = visible
        return self.gpus

    def finish(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(20) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(20)


@pytest.fixture
def jobs():
    started: list[Job] = []
    yield started
    for job in started:
        if job.proc.poll() is None:
            job.kill()


def start(jobs: list, env: dict, gpus: int = 1) -> Job:
    jobs.append(Job(env, gpus))
    return jobs[-1]


# ------------------------------------------------------------------------------ claiming

def test_each_job_gets_its_own_gpu_and_a_killed_or_finished_jobs_gpu_goes_to_the_next(tmp_path, jobs):
    env = machine_env(tmp_path / "locks", fake=2)
    a, b = start(jobs, env), start(jobs, env)
    assert {a.held(), b.held()} == {"0", "1"}
    waiting = start(jobs, env)
    assert waiting.held(timeout=2.0) is None  # both GPUs are held: it waits
    assert any("waiting for 1 of GPUs 0,1" in line for line in waiting.lines)
    a.kill()  # a crash: the kernel drops its lock
    assert waiting.held() == a.gpus
    b.finish()
    assert start(jobs, env).held() == b.gpus


def test_a_job_holding_two_gpus_waits_for_both_holding_none_meanwhile(tmp_path, jobs):
    env = machine_env(tmp_path / "locks", fake=3)
    one = start(jobs, env, gpus=1)
    assert one.held() == "0"
    two = start(jobs, env, gpus=2)
    assert two.held() == "1,2"
    other_two = start(jobs, env, gpus=2)
    assert other_two.held(timeout=2.0) is None
    one.finish()
    # GPU 0 alone is not enough for other_two, so it takes nothing: a one-GPU job gets it
    assert start(jobs, env, gpus=1).held() == "0"
    two.finish()
    assert other_two.held() == "1,2"


def test_visible_devices_are_the_pool_and_keep_their_names(tmp_path, jobs):
    env = machine_env(tmp_path / "locks", CUDA_VISIBLE_DEVICES="3,GPU-5f1c")
    assert {start(jobs, env).held(), start(jobs, env).held()} == {"3", "GPU-5f1c"}
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == ["gpu-3.lock", "gpu-GPU-5f1c.lock"]


def test_inside_a_slurm_allocation_with_more_gpus_jobs_share_them_with_locks_of_its_own(tmp_path, jobs):
    env = machine_env(tmp_path / "locks", SLURM_JOB_ID="77", CUDA_VISIBLE_DEVICES="0,1")
    assert {start(jobs, env).held(), start(jobs, env).held()} == {"0", "1"}
    assert (tmp_path / "locks" / "slurm-77" / "gpu-0.lock").exists()
    # another allocation on the node numbers its own GPUs 0 and 1 too
    other = machine_env(tmp_path / "locks", SLURM_JOB_ID="78", CUDA_VISIBLE_DEVICES="0,1")
    assert start(jobs, other).held() == "0"


def test_gpus_a_scheduler_gave_are_kept_and_nothing_is_claimed_without_gpus(tmp_path, monkeypatch):
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(devices.LOCKS, str(tmp_path / "locks"))
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert devices.claim(1) is None
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3" and devices.SLOT not in os.environ
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # no GPU left visible
    assert devices.claim(1) is None
    monkeypatch.setenv(devices.FAKE, "2")
    assert devices.claim(0) is None
    assert not (tmp_path / "locks").exists()
    with pytest.raises(ConfigError, match="each job holds 3 GPUs, but this machine has 2"):
        devices.claim(3)


# ------------------------------------------------------------------------- through Snakemake

def workdir(where: Path, cfg: dict) -> Path:
    """A copy of the workflow (as tests/test_pipeline.py makes one) with `cfg` as its config."""
    for name in WORKFLOW_FILES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, where / name)
    (where / "config").mkdir()
    (where / "config" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return where


def _times(log: str, pattern: str) -> list[tuple[datetime, str]]:
    return [(datetime.fromisoformat(m[1]), m[2]) for m in re.finditer(pattern, log, re.M)]


@pytest.mark.slow
def test_snakemake_jobs_on_two_gpus_never_share_one_and_hand_it_on(tmp_path):
    cfg = {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 60, "eval_every": 30,
                     "eval_size": 50, "batch_size": 16},
        "axes": {"task": ["bit-xor"], "seed": [0, 1, 2, 3, 4]},
        "ablations": {"headline": {"rows": {"fpt": {}}}},
        "train": {"device": "cpu", "gpus": 1, "pack_cells": 1},
        "figures": {"reported": "paper/reported.csv"},
    }
    where = workdir(tmp_path, cfg)
    study = Study.from_config(cfg)
    assert len(study.grid.cells) == 5
    env = machine_env(tmp_path / "locks", fake=2, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    targets = [study.summary(cell_id) for cell_id in study.grid.cells]
    done = subprocess.run([sys.executable, "-m", "snakemake", *targets, "--cores", "2",
                           "--resources", "gpu=2"],
                          cwd=where, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout

    held = []  # (claimed, ended, gpu, cell id) per job
    for log in (where / "logs" / "train").glob("pack-*.log"):
        text = log.read_text()
        (claimed, gpu), = _times(text, r"^(\S+) claimed GPU (\S+) \(CUDA_VISIBLE_DEVICES=\2,")
        (ended, gpu_done), = _times(text, r"^(\S+) done with GPU (\S+);")
        cell_id, = re.findall(r"^\[1/1\] ([0-9a-f]{12}) .*: training, log", text, re.M)
        summary = pd.read_parquet(where / study.summary(cell_id))
        assert summary["gpu_slot"].iloc[0] == gpu == gpu_done
        held.append((claimed, ended, gpu, cell_id))
    assert sorted(c for *_, c in held) == sorted(study.grid.cells)
    assert {gpu for _, _, gpu, _ in held} == {"0", "1"}
    overlap = lambda a, b: a[0] < b[1] and b[0] < a[1]  # noqa: E731
    for a, b in combinations(held, 2):
        assert a[2] != b[2] or not overlap(a, b), f"GPU {a[2]} held by two jobs at once: {a}, {b}"
    assert any(overlap(a, b) for a, b in combinations(held, 2)), "no two jobs ran at once"
    for gpu in ("0", "1"):
        turns = sorted(h for h in held if h[2] == gpu)
        assert all(before[1] < after[0] for before, after in zip(turns, turns[1:]))
    assert max(sum(h[2] == gpu for h in held) for gpu in ("0", "1")) >= 3  # 5 jobs, 2 GPUs


# ----------------------------------------------------- host synchronisations per training step

# Ops whose output size depends on tensor values: on a GPU each waits for the device to size it.
aten = torch.ops.aten
DATA_SHAPED = {aten.nonzero.default, aten.masked_select.default, aten._unique2.default,
               aten.unique_dim.default, aten.unique_consecutive.default,
               aten.repeat_interleave.Tensor}
# Ways to read a tensor on the host that bypass the dispatcher.
HOST_COPIES = ("tolist", "numpy", "cpu")
# Tasks draw their data on the host from seeded CPU generators on every device (train.py): what
# their code makes, and what is computed from that alone, is on the host on a GPU too.
HOST_CODE = str(ROOT / "fpt_core" / "tasks")


def _caller():
    """The innermost frame outside torch and this file: the code that asked for the op."""
    frame = sys._getframe(2)
    while frame is not None and ("/torch/" in frame.f_code.co_filename
                                 or frame.f_code.co_filename == __file__):
        frame = frame.f_back
    return frame


class HostReads(TorchDispatchMode):
    """Every point where a training step on a GPU would make the host wait for the device,
    seen on the CPU, by the optimiser steps before it: reads of a tensor that would be on the
    device, and copies to the device that are not non_blocking (each waits for the stream to
    drain). Scalar reads (item, bool, float, int, a tensor in a Python condition) reach the
    dispatcher as _local_scalar_dense; tolist, numpy, cpu and to do not, and are patched."""

    def __init__(self):
        super().__init__()
        self.steps, self.optimizers, self.events = 0, [], []
        self.host: dict[int, weakref.ref] = {}  # by id: a tensor's == compares its values

    def born_on_host(self, t) -> bool:
        ref = self.host.get(id(t))
        return ref is not None and ref() is t

    def on_host(self, t, caller) -> bool:
        """Made on the host, read by the tasks' code, or one of Adam's step counters (torch
        keeps them on the host on every device unless capturable or fused)."""
        in_tasks = caller is not None and caller.f_code.co_filename.startswith(HOST_CODE)
        return (self.born_on_host(t) or in_tasks
                or any(t is s.get("step") for opt in self.optimizers for s in opt.state.values()))

    def record(self, what: str, caller) -> None:
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}" if caller is not None else "?"
        self.events.append((self.steps, what, where))

    def read(self, what: str, t, caller) -> None:
        if not self.on_host(t, caller):
            self.record(what, caller)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = _caller()
        if func is aten._local_scalar_dense.default or func in DATA_SHAPED or (
                func is aten.index.Tensor and any(i is not None and i.dtype == torch.bool for i in args[1])):
            self.read("scalar read" if func is aten._local_scalar_dense.default else str(func),
                      args[0], caller)
        out = func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if ((caller is not None and caller.f_code.co_filename.startswith(HOST_CODE))
                or (inputs and all(self.born_on_host(t) for t in inputs))):
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor):
                    self.host[id(t)] = weakref.ref(t)
        return out


def _to_a_device(args, kwargs) -> bool:
    return "device" in kwargs or any(isinstance(a, (str, torch.device)) for a in args)


@pytest.fixture
def host_reads(monkeypatch):
    reads = HostReads()
    for name in HOST_COPIES:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.read(_name, self, _caller())
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    real_to = torch.Tensor.to

    def to(self, *a, **k):
        if _to_a_device(a, k) and not k.get("non_blocking") and reads.born_on_host(self):
            reads.record("blocking copy", _caller())
        return real_to(self, *a, **k)
    monkeypatch.setattr(torch.Tensor, "to", to)
    # Steps are told apart by the optimiser's steps, whatever loop makes them.
    hooks = [register_optimizer_step_pre_hook(
                 lambda opt, *_: None if opt in reads.optimizers else reads.optimizers.append(opt)),
             register_optimizer_step_post_hook(lambda *_: setattr(reads, "steps", reads.steps + 1))]
    yield reads
    for hook in hooks:
        hook.remove()


def test_the_counter_sees_every_wait_for_the_device_and_no_host_work(host_reads):
    t = torch.tensor([1.0, 0.0])  # made outside the tasks: on the device on a GPU
    task = make_task(make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"}))
    with host_reads:
        t[0].item(), bool(t[0]), float(t[1]), int(t[1]), t.tolist(), t.numpy(), t.cpu()
        t[t > 0], torch.nonzero(t)
        if t.sum() > 0:
            pass
        t.to("cpu"), t.to(torch.float64)  # already where it goes: no copy
        x, _ = task.train_batch(0, 4)  # drawn on the host
        (x + 1).tolist(), x.sum().item()
        x.to("cpu", non_blocking=True)
        x.to(torch.device("cpu"))
    assert [what for _, what, _ in host_reads.events] == [
        "scalar read", "scalar read", "scalar read", "scalar read", "tolist", "numpy", "cpu",
        "aten.index.Tensor", "aten.nonzero.default", "scalar read", "blocking copy"]


STEPS, EVAL_EVERY, CHECKPOINT_EVERY = 12, 4, 6


@pytest.mark.parametrize("cell", [
    pytest.param({"backbone": "minilm-l6", "trainable": "fpt"}, id="bert-live"),
    pytest.param({"backbone": "lstm", "trainable": "all"}, id="lstm-live"),
    pytest.param({"backbone": "gpt2-tiny", "trainable": "fpt"}, id="gpt2-live"),
    pytest.param({"backbone": "minilm-l6", "trainable": "output", "dropout": 0.0, "n_train": 200},
                 id="cached-features"),
])
def test_a_step_that_neither_evaluates_nor_checkpoints_never_waits_for_the_device(
        tmp_path, host_reads, cell):
    cell = make_cell({"task": "bit-xor", "init": "random", "depth": 1, "steps": STEPS,
                      "eval_every": EVAL_EVERY, "eval_size": 32, "batch_size": 4,
                      "grad_clip": 1.0, **cell})
    with host_reads:
        train_mod.train_cell(cell, tmp_path, Run(progress=False, checkpoint_every=CHECKPOINT_EVERY))
    # Between the k-th and the next optimiser step: what follows step k (bringing the losses
    # back, evaluating, checkpointing, where due), then the next step up to its update.
    after = {k: [e for e in host_reads.events if e[0] == k] for k in range(1, STEPS)}
    evaluating = [k for k in after if k % EVAL_EVERY == 0]
    checkpointing = [k for k in after if k % CHECKPOINT_EVERY == 0]
    quiet = [k for k in after if k not in evaluating + checkpointing]
    assert len(quiet) == 8
    # where it reports: one transfer of the steps' losses and correct counts, then the scores
    trainer = str(ROOT / "fpt_core")
    for k in evaluating + checkpointing:
        assert any(what == "tolist" and where.startswith(trainer)
                   for _, what, where in after[k]), after[k]
    for k in evaluating:
        assert any(what == "scalar read" and where.startswith(trainer)
                   for _, what, where in after[k]), after[k]
    assert {k: after[k] for k in quiet if after[k]} == {}
