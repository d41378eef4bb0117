"""`fpt bench`: the speed levers, each measured as a ratio taken side by side in one run.

Shared machines make absolute timings noisy, so every measure alternates its two contenders
repeat by repeat in one process and compares medians. One JSON object per line:

    {"measure", "device", "dtype", "ours", "baseline", "ratio", "unit", "target", "met",
     "peak_mem_mb", ...}

Measures:
- levers (first, always): what this hardware offers (fpt_core.hardware.levers: native bf16,
  fused attention, a usable torch.compile) and the precision the measures run ours in.
- step_throughput: the trainer's step on the model fpt_core.model.build_model gives a cell in
  our fastest precision for this machine (bf16 where the hardware computes it natively: bf16
  autocast, frozen matrices stored in bf16; else fp32), with fused attention and GELU and
  batches from the task as torch tensors, against a step written the way the paper's code
  trains (fp32, eager attention, HF's Python GELU, a batch built in NumPy each step, a
  loss.item() every step), same weights, batch and frozen groups: the speed-up a user of this
  machine gets. GPT-2-small-shaped FPT, random weights, on the cifar10 shape (64 tokens of 48)
  and bit-memory (120 tokens of 50, 1000 bits read from the last 20 tokens).
- mfu: the step's useful FLOPs per second (fpt_core.plan.model_flops) over the peak of a large
  matrix product in the same dtype (torch.utils.benchmark), timed between the same repeats;
  the paper-style step's fraction beside it.
- output_only_epoch: an output-layer-only epoch on cached frozen features (fpt_core.features)
  against the trainer path that runs the backbone every step.
- shared_backbone: cells at batch 4 that share one frozen backbone stepped together
  (fpt_bench.ensemble) against the same cells stepped one after another.
- dry_run: `snakemake -n --configfile config/paper.yaml --quiet`, in seconds.

A measure this machine cannot take quickly is not taken: a line with "skipped" says why (bf16
where it is emulated, compiling on a CPU under --quick, a --quick budget already spent).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils import benchmark

from fpt_core import hardware
from fpt_core.plan import model_flops

MEASURES = ("step", "mfu", "output_only", "shared", "dry_run")
TARGETS = {"step_throughput": 3.0, "mfu": 0.35, "output_only_epoch": 100.0,
           "shared_backbone": 2.0, "dry_run": 10.0}
QUICK_BUDGET_S = 95.0  # --quick: imports, a build overrunning its share and a loaded machine fit in 2 min
# Relative cost of each --quick job, for its share of the budget left when it starts.
WEIGHTS = {"step_throughput": 3.0, "output_only_epoch": 1.5, "shared_backbone": 1.0, "dry_run": 2.0}
EMULATED_BF16 = "emulated, several times slower than fp32"
MIN_JOB_S = 5.0  # --quick starts a job only with this many seconds per unit of its weight left


@dataclass(frozen=True)
class Settings:
    backbone: str  # gpt2, or gpt2-tiny for smoke tests
    depth: int | None  # blocks kept; None keeps all 12
    repeats: int  # alternating repeats per measure
    steps: int  # steps timed per repeat
    n_train: int  # output-only split size
    n_cells: int  # cells in the shared-backbone measure
    device: torch.device
    compile: bool
    precision: str  # ours: the fastest this device computes (fastest_precision)
    budget: "Budget | None" = None  # --quick only


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fpt bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few repeats and 3 of the 12 blocks (< 2 min on 2 cores)")
    p.add_argument("--tiny", action="store_true", help="the 2-block gpt2-tiny backbone (smoke test)")
    p.add_argument("--out", help="also write the JSON lines to this file")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--threads", type=int,
                   help="torch CPU threads (default 1 on the CPU: on a shared machine a descheduled "
                        "OpenMP thread stalls the others at every barrier)")
    p.add_argument("--repeats", type=int, help="alternating repeats per measure")
    p.add_argument("--depth", type=int, help="GPT-2 blocks kept (default 3 with --quick, else 12)")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASURES)}")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (slow to start on CPU)")
    p.add_argument("--workdir", default=str(Path(__file__).resolve().parent.parent),
                   help="directory holding the Snakefile for the dry run")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    common = {"device": device, "compile": args.compile, "precision": fastest_precision(device)}
    if args.tiny:
        return Settings("gpt2-tiny", None, args.repeats or 2, 1, 64, 2, **common)
    depth = args.depth if args.depth is not None else (3 if args.quick else None)
    if args.quick:
        return Settings("gpt2", depth, args.repeats or 3, 1, 64, 4, **common,
                        budget=Budget(QUICK_BUDGET_S))
    return Settings("gpt2", depth, args.repeats or 5, 2, 512, 4, **common)


def fastest_precision(device: torch.device) -> str:
    """bf16 where the hardware multiplies in it; elsewhere emulated bf16 loses to fp32."""
    return "bf16" if hardware.native_bf16(device) else "fp32"


class Budget:
    """--quick's wall clock: each job gets its weight's share of the time left when it starts,
    and a job that starts after the budget is spent is skipped with a line saying so."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.start = time.perf_counter()
        self.weights: list[float] = []  # of the jobs not yet started, the next one first
        self.until: float | None = None  # perf_counter time by which the current job should end

    def left(self) -> float:
        return self.start + self.seconds - time.perf_counter()

    def begin(self) -> None:
        share = self.weights[0] / sum(self.weights) if self.weights else 1.0
        self.weights = self.weights[1:]
        self.until = time.perf_counter() + max(self.left(), 0.0) * share


def until(s: Settings) -> float | None:
    return s.budget.until if s.budget is not None else None


def time_left(s: Settings) -> float | None:
    """Seconds until the current job should end (at least MIN_JOB_S), or None: no budget."""
    return None if s.budget is None else max(s.budget.until - time.perf_counter(), MIN_JOB_S)


# ---------------------------------------------------------------- memory and timing

def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # clears the kernel's RSS high-water mark (VmHWM) for this process
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def alternate(contenders: dict, repeats: int, device: torch.device,
              until: float | None = None) -> dict[str, dict]:
    """Run each contender once to warm up, then in turn `repeats` times (fewer where a round
    would end after `until`, at least one): median seconds and peak MB.

    A training step is too long for torch.utils.benchmark.Timer's own loops (timeit warms up
    twice per call, blocked_autorange once), and on a shared machine only contenders taken in
    turn see the same load, so the turns are taken here."""
    start = time.perf_counter()
    for run in contenders.values():
        run()
    sync(device)
    if until is not None:
        round_s = time.perf_counter() - start
        repeats = max(1, min(repeats, int((until - time.perf_counter()) / max(round_s, 1e-9))))
    times = {name: [] for name in contenders}
    peaks = {name: 0.0 for name in contenders}
    for _ in range(repeats):
        for name, run in contenders.items():
            reset_peak(device)
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
            peaks[name] = max(peaks[name], peak_mb(device))
    return {name: {"s": statistics.median(times[name]), "all_s": [round(t, 4) for t in times[name]],
                   "times": times[name], "peak_mb": peaks[name]} for name in contenders}


def device_label(device: torch.device) -> str:
    name = hardware.machine_name(device)
    if device.type == "cuda":
        return name
    bf16 = "native bf16" if hardware.native_bf16(device) else "no native bf16"
    return f"cpu ({name}, {bf16}, {torch.get_num_threads()} threads)"


# ---------------------------------------------------------------- matmul peak

def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, min_run_time: float = 0.2):
    """(run, seconds): each run times n x n x n products (2 n^3 FLOPs each) with
    torch.utils.benchmark's blocked_autorange on this process's threads, and appends the
    median seconds of one product to `seconds`."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    timer = benchmark.Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
    seconds: list[float] = []

    def run():
        seconds.append(timer.blocked_autorange(min_run_time=min_run_time).median)

    return run, seconds


# ---------------------------------------------------------------- tasks and steps

class TensorPool:
    """Training batches prebuilt as torch tensors, served by step as a task's train_batch."""

    def __init__(self, spec, batch_size: int, seed: int = 0, pool: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.spec = spec
        self.batches = [synthetic_batch(spec, batch_size, g) for _ in range(pool)]

    def train_batch(self, step: int, batch_size: int):
        return self.batches[step % len(self.batches)]


def synthetic_batch(spec, batch_size: int, g: torch.Generator):
    x = torch.randn(batch_size, spec.n_tokens, spec.input_dim, generator=g)
    y = torch.randint(0, spec.n_classes, (batch_size, spec.n_predictions), generator=g)
    return x, y


def numpy_batch(spec, batch_size: int, rng: np.random.Generator):
    """A batch built in NumPy every step, as the paper's data code did."""
    if spec.name == "bit-memory":
        bits = rng.integers(0, 2, size=(batch_size, 5, 1000)) * 2 - 1
        which = rng.integers(0, 5, size=batch_size)
        query = bits[np.arange(batch_size), which]
        masked = query * rng.integers(0, 2, size=query.shape)
        x = np.concatenate([bits, masked[:, None]], axis=1).reshape(batch_size, spec.n_tokens, spec.input_dim)
        y = (query > 0).astype(np.int64)
    else:
        x = rng.standard_normal((batch_size, spec.n_tokens, spec.input_dim))
        y = rng.integers(0, spec.n_classes, size=(batch_size, spec.n_predictions))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


def trainer_step(model, optimizer, params, task, cell, device, step: int) -> float:
    """One step exactly as fpt_core.train.train_cell's loop takes it."""
    from fpt_core.train import LiveBatches, train_step

    return train_step(LiveBatches(model, task, cell, device), optimizer, params, cell, device, step)[0].item()


def reference_step(model, optimizer, spec, batch_size: int, rng, grad_clip: float, device) -> float:
    """One step the way the paper's trainer took it: fp32, NumPy batch, a loss.item() sync."""
    x, y = numpy_batch(spec, batch_size, rng)
    x, y = x.to(device), y.to(device)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach().cpu().item()


def make_spec(name: str):
    from fpt_core.tasks import TaskSpec

    shapes = {  # (input_dim, n_tokens, n_classes, n_readout, n_predictions)
        "cifar10": (48, 64, 10, 1, 1),
        "bit-memory": (50, 120, 2, 20, 1000),
        "bit-xor": (1, 10, 2, 5, 5),
    }
    d, t, c, r, p = shapes[name]
    return TaskSpec(name=name, input_kind="vector", input_dim=d, n_tokens=t, n_classes=c,
                    n_readout=r, n_predictions=p, chance=1 / c, threshold=0.9)


def bench_cell(s: Settings, task: str, **overrides):
    from fpt_core.cell import make_cell

    values = {"task": task, "backbone": s.backbone, "init": "random", "depth": s.depth,
              "batch_size": 16, "precision": s.precision, "progress": False,
              "device": s.device.type, **overrides}
    return make_cell(values)


def build(cell, spec, device):
    """Model, trainable parameters and optimizer, as fpt_core.train.train_cell prepares them."""
    from fpt_core.model import build_model

    model = build_model(cell, spec).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay)
    return model, params, optimizer


def paper_style(model) -> None:
    """The model as the paper's code ran it: eager attention and HF's Python GELU."""
    from transformers.activations import GELUTanh, NewGELUActivation

    hf = getattr(model.backbone, "model", None)
    if hf is not None and hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation("eager")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GELUTanh):
                setattr(module, name, NewGELUActivation())


def attention_name(model) -> str:
    hf = getattr(model.backbone, "model", None)
    return getattr(getattr(hf, "config", None), "_attn_implementation", "n/a")


def describe(s: Settings, model) -> str:
    blocks = model.backbone.n_blocks
    return f"{s.backbone} random, {blocks} blocks"


# ---------------------------------------------------------------- measures

def measure_step(s: Settings, shape: str, with_mfu: bool) -> list[dict]:
    """Trainer step vs paper-style step on one task shape; and the MFU of our step."""
    spec = make_spec(shape)
    ours_cell = bench_cell(s, shape)
    ref_cell = bench_cell(s, shape, precision="fp32")
    ours, ours_params, ours_opt = build(ours_cell, spec, s.device)
    ref, _, ref_opt = build(ref_cell, spec, s.device)
    paper_style(ref)
    ours_attention = attention_name(ours)
    run_ours = torch.compile(ours) if s.compile else ours
    task = real_task(ours_cell) if shape == "bit-memory" else TensorPool(spec, ours_cell.batch_size)
    rng = np.random.default_rng(0)
    counter = {"ours": 0}

    def ours_steps():
        for _ in range(s.steps):
            trainer_step(run_ours, ours_opt, ours_params, task, ours_cell, s.device, counter["ours"])
            counter["ours"] += 1

    def ref_steps():
        for _ in range(s.steps):
            reference_step(ref, ref_opt, spec, ref_cell.batch_size, rng, ref_cell.grad_clip, s.device)

    n = 8192 if s.device.type == "cuda" else (512 if s.backbone == "gpt2-tiny" else 2048)
    dtype = torch.bfloat16 if s.precision == "bf16" else torch.float32
    peak_fn, peak_seconds = matmul_peak(s.device, dtype, n)
    contenders = {"baseline": ref_steps, "ours": ours_steps}
    if with_mfu:
        contenders["peak"] = peak_fn
    timed = alternate(contenders, s.repeats, s.device, until(s))
    common = {"device": device_label(s.device), "shape": shape, "model": describe(s, ours),
              "batch": ours_cell.batch_size, "repeats": len(timed["ours"]["all_s"]),
              "steps_per_repeat": s.steps}
    ours_rate, ref_rate = s.steps / timed["ours"]["s"], s.steps / timed["baseline"]["s"]
    lines = [line(
        "step_throughput", dtype=f"{s.precision} vs fp32", ours=ours_rate, baseline=ref_rate,
        unit="steps/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"]),
        peak_mem_mb_ours=timed["ours"]["peak_mb"], peak_mem_mb_baseline=timed["baseline"]["peak_mb"],
        attention=f"{ours_attention} vs eager", times_s=timed["ours"]["all_s"],
        baseline_times_s=timed["baseline"]["all_s"], compiled=s.compile, **common)]
    if with_mfu:
        flops = model_flops(ours, ours_cell.batch_size)
        peaks = peak_seconds[1:]  # the first run was the warm-up
        peak = 2 * n**3 / statistics.median(peaks)
        lines.append(line(
            "mfu", dtype=s.precision, ours=flops["total"] * ours_rate / 1e12, baseline=peak / 1e12,
            unit="TFLOP/s", peak=timed["ours"]["peak_mb"], flops_per_step=flops["total"],
            flops_forward=flops["forward"], flops_backward=flops["backward"],
            fraction=paired_fraction(flops["total"] * s.steps, timed["ours"]["times"], n, peaks),
            baseline_fraction=paired_fraction(flops["total"] * s.steps, timed["baseline"]["times"],
                                              n, peaks),
            peak_matmul=f"{n}x{n}x{n} {s.precision}", **common))
    del ours, ref, run_ours, ours_opt, ref_opt
    gc.collect()
    return lines


def paired_fraction(flops: int, step_times: list[float], n: int, peak_times: list[float]) -> float:
    """Median over repeats of the step's FLOP/s over the peak timed in the same repeat: on a
    shared machine the load changes between repeats, and a peak from a quieter moment than
    the step would understate the fraction (or overstate it, past 1)."""
    return significant(statistics.median(
        (flops / t) / (2 * n**3 / p) for t, p in zip(step_times, peak_times)), 4)


def real_task(cell):
    from fpt_core.tasks import make_task

    return make_task(cell)


def synthetic_dataset(spec, n_train: int, n_test: int, seed: int = 0):
    """A task with a fixed split of random examples in the given shape, for output-only epochs."""
    from fpt_core.tasks.base import Task

    class Synthetic(Task):
        name = spec.name

        def make_spec(self):
            return spec

        def _load(self):
            g = torch.Generator().manual_seed(seed)
            self._set_train(*synthetic_batch(spec, n_train, g))
            self._set_held_out(*synthetic_batch(spec, n_test, g))

    return Synthetic(seed=seed, eval_size=None).load()


def measure_output_only(s: Settings) -> list[dict]:
    """An output-only epoch on cached features vs the trainer recomputing the backbone each step."""
    from fpt_core.features import CachedFeatures
    from fpt_core.train import train_step

    spec = make_spec("cifar10")
    cell = bench_cell(s, "cifar10", trainable="output")
    task = synthetic_dataset(spec, s.n_train, max(64, s.n_train // 4))
    model, params, opt = build(cell, spec, s.device)
    cached_opt = torch.optim.Adam(params, lr=cell.lr)
    epoch = -(-s.n_train // cell.batch_size)
    reset_peak(s.device)
    cache = CachedFeatures(model, task, cell, s.device, 64)
    cache_peak = peak_mb(s.device)
    state = {"recomputed": 0, "cached": 0}

    def recomputed():
        start = state["recomputed"]
        for step in range(start, start + epoch):
            trainer_step(model, opt, params, task, cell, s.device, step)
        state["recomputed"] += epoch

    def cached():
        start = state["cached"]
        for step in range(start, start + epoch):
            train_step(cache, cached_opt, params, cell, s.device, step)[0].item()
        state["cached"] += epoch

    timed = alternate({"baseline": recomputed, "ours": cached}, s.repeats, s.device, until(s))
    build_s, label = cache.build_s, describe(s, model)
    del model, cache
    gc.collect()
    return [line(
        "output_only_epoch", dtype=cell.precision, ours=1 / timed["ours"]["s"],
        baseline=1 / timed["baseline"]["s"], unit="epochs/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"], cache_peak),
        peak_mem_mb_ours=timed["ours"]["peak_mb"], peak_mem_mb_baseline=timed["baseline"]["peak_mb"],
        device=device_label(s.device), shape="cifar10", model=label,
        n_train=s.n_train, steps_per_epoch=epoch, cache_build_s=round(build_s, 4),
        repeats=len(timed["ours"]["all_s"]))]


def measure_shared(s: Settings, shape: str) -> list[dict]:
    """Cells sharing one frozen backbone at batch 4: stepped together vs one after another."""
    from fpt_bench.ensemble import SharedBackbone

    spec = make_spec(shape)
    lrs = [1e-3 * (i + 1) for i in range(s.n_cells)]
    cells = [bench_cell(s, shape, batch_size=4, lr=lr) for lr in lrs]
    built = [build(c, spec, s.device) for c in cells]
    models = [b[0] for b in built]
    group = SharedBackbone(models, lrs, grad_clip=cells[0].grad_clip, precision=cells[0].precision)
    pool = TensorPool(spec, 4, pool=2 * s.n_cells)
    counter = {"solo": 0, "together": 0}

    def one_after_another():
        step = counter["solo"]
        for k, (model, params, opt) in enumerate(built):
            for i in range(s.steps):
                trainer_step(model, opt, params, Offset(pool, k), cells[k], s.device, step + i)
        counter["solo"] += s.steps

    def together():
        step = counter["together"]
        for i in range(s.steps):
            batches = [pool.train_batch(step + i + k, 4) for k in range(s.n_cells)]
            xs = torch.stack([x for x, _ in batches]).to(s.device)
            ys = torch.stack([y for _, y in batches]).to(s.device)
            group.train_step(xs, ys).tolist()
        counter["together"] += s.steps

    timed = alternate({"baseline": one_after_another, "ours": together}, s.repeats, s.device,
                      until(s))
    cell_steps = s.n_cells * s.steps
    out = line(
        "shared_backbone", dtype=cells[0].precision, ours=cell_steps / timed["ours"]["s"],
        baseline=cell_steps / timed["baseline"]["s"], unit="cell-steps/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"]),
        peak_mem_mb_ours=timed["ours"]["peak_mb"], peak_mem_mb_baseline=timed["baseline"]["peak_mb"],
        device=device_label(s.device), shape=shape, model=describe(s, models[0]), batch=4,
        cells=s.n_cells, repeats=len(timed["ours"]["all_s"]))
    del built, models, group
    gc.collect()
    return [out]


class Offset:
    """Cell k's view of a shared pool: its own batches, as its own task would give it."""

    def __init__(self, pool: TensorPool, k: int):
        self.pool, self.k = pool, k

    def train_batch(self, step: int, batch_size: int):
        return self.pool.train_batch(step + self.k, batch_size)


def measure_dry_run(workdir: Path, limit_s: float | None = None) -> list[dict]:
    base = {"measure": "dry_run", "device": device_label(torch.device("cpu")), "dtype": None,
            "baseline": None, "ratio": None, "unit": "s", "target": TARGETS["dry_run"]}
    missing = [f for f in ("Snakefile", "config/paper.yaml") if not (workdir / f).is_file()]
    if missing:
        return [{**base, "ours": None, "met": False, "peak_mem_mb": None,
                 "skipped": f"{', '.join(missing)} not found in {workdir}"}]
    cmd = [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
        peak = 0.0
        while proc.poll() is None:  # the child's own high-water mark; rusage would count the fork
            peak = max(peak, child_hwm_mb(proc.pid))
            time.sleep(0.05)
            if limit_s is not None and time.perf_counter() - start > limit_s:
                proc.kill()
                proc.wait()
                return [{**base, "ours": None, "met": False, "peak_mem_mb": round(peak, 1),
                         "skipped": f"not done in {limit_s:.0f} s, the --quick budget left; "
                                    "run without --quick"}]
        seconds = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        log.seek(0)
        output = log.read()
    result = {**base, "ours": round(seconds, 3),
              "met": proc.returncode == 0 and seconds < TARGETS["dry_run"],
              "peak_mem_mb": round(peak, 1), "command": " ".join(cmd[2:]),
              # CPU seconds: on a shared machine the wall time mostly waits for a core
              "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 3)}
    if proc.returncode != 0:
        result["error"] = " ".join(output.strip().splitlines()[-3:])[:500]
    return [result]


def child_hwm_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for row in f:
                if row.startswith("VmHWM:"):
                    return int(row.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def line(measure: str, *, dtype, ours: float, baseline: float, unit: str, peak: float, **extra) -> dict:
    ratio = ours / baseline if baseline else None
    target = TARGETS[measure]
    return {"measure": measure, "device": extra.pop("device"), "dtype": dtype,
            "ours": significant(ours), "baseline": significant(baseline),
            "ratio": None if ratio is None else significant(ratio, 4), "unit": unit, "target": target,
            "met": ratio is not None and ratio >= target, "peak_mem_mb": round(peak, 1), **extra}


def significant(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def info_line(measure: str, device: torch.device, **extra) -> dict:
    """A line with every key of a measure's line but no ratio: a report, a skip or an error."""
    return {"measure": measure, "device": device_label(device), "dtype": None, "ours": None,
            "baseline": None, "ratio": None, "unit": None, "target": TARGETS.get(measure),
            "met": False, "peak_mem_mb": None, **extra}


def error_line(measure: str, device: torch.device, err: Exception) -> dict:
    return info_line(measure, device, error=f"{type(err).__name__}: {err}"[:500])


def levers_line(s: Settings) -> dict:
    return info_line("levers", s.device, met=None, precision=s.precision,
                     **{k: v for k, v in hardware.levers(s.device).items() if k != "device"})


def skips(s: Settings) -> tuple[Settings, list[dict]]:
    """The settings without what cannot be measured quickly here, and a line for each such."""
    lines = []
    if s.precision != "bf16":
        lines.append(info_line(
            "step_throughput", s.device, dtype="bf16 vs fp32",
            skipped=f"bf16 is not native on this {s.device.type}: {EMULATED_BF16}; every "
                    f"measure runs ours in fp32, the fastest precision here"))
    why = None
    if s.compile and not hardware.compile_usable(s.device):
        why = "torch.compile cannot generate code here (no C++ compiler, or no triton on a GPU)"
    elif s.compile and s.budget is not None and s.device.type == "cpu":
        why = ("compiling takes 30-100 s on a CPU, over the --quick budget; "
               "run without --quick to measure it")
    if why:
        lines.append(info_line("step_throughput", s.device, dtype=f"{s.precision} compiled",
                               skipped=why))
        s = replace(s, compile=False)
    return s, lines


def over_budget(s: Settings, measure: str) -> dict | None:
    """A skip line where too little of the --quick budget is left to start `measure`."""
    if s.budget is None or s.budget.left() >= MIN_JOB_S * WEIGHTS[measure]:
        return None
    spent = time.perf_counter() - s.budget.start
    return info_line(measure, s.device, skipped=f"the --quick budget of {s.budget.seconds:.0f} s "
                     f"is spent ({spent:.0f} s so far on this machine); run without --quick")


def plan(s: Settings, only: set[str], workdir: Path):
    """(measure name for errors, thunk) in running order."""
    jobs = []
    for shape in ("cifar10", "bit-memory"):
        if "step" in only or "mfu" in only:
            jobs.append(("step_throughput", lambda shape=shape: filter_lines(
                measure_step(s, shape, "mfu" in only), only)))
    if "output_only" in only:
        jobs.append(("output_only_epoch", lambda: measure_output_only(s)))
    if "shared" in only:
        for shape in ("cifar10", "bit-xor"):
            jobs.append(("shared_backbone", lambda shape=shape: measure_shared(s, shape)))
    if "dry_run" in only:
        jobs.append(("dry_run", lambda: measure_dry_run(workdir, time_left(s))))
    return jobs


def filter_lines(lines: list[dict], only: set[str]) -> list[dict]:
    keep = {"step_throughput": "step", "mfu": "mfu"}
    return [ln for ln in lines if keep[ln["measure"]] in only]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    only = set(MEASURES) if not args.only else {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = only - set(MEASURES)
    if unknown:
        from fpt_core.errors import ConfigError

        raise ConfigError(f"--only: unknown measure {sorted(unknown)[0]!r}; allowed: {', '.join(MEASURES)}")
    threads = args.threads or (1 if not torch.cuda.is_available() or args.device == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    s, skipped = skips(settings_from(args))
    jobs = plan(s, only, Path(args.workdir))
    if s.budget is not None:
        s.budget.weights = [WEIGHTS[name] for name, _ in jobs]
    out = open(args.out, "w") if args.out else None
    failed = False
    try:
        emit([levers_line(s), *skipped], out)
        for name, job in jobs:
            late = over_budget(s, name)
            if s.budget is not None:
                s.budget.begin()
            try:
                lines = [late] if late else job()
            except Exception as err:  # one failing measure must not hide the others
                failed = True
                lines = [error_line(name, s.device, err)]
            emit(lines, out)
    finally:
        if out:
            out.close()
    return 1 if failed else 0


def emit(lines: list[dict], out) -> None:
    for ln in lines:
        text = json.dumps(ln)
        print(text, flush=True)
        if out:
            out.write(text + "\n")
            out.flush()
