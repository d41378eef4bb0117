"""`fpt bench`'s measures of one process: the trainer's step against the paper's, its MFU,
output-only epochs on cached features, counter-based dropout against torch's, and the
pipeline's dry run. (Cells stepped together: fpt_bench/ensemble.py.)"""
from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fpt_bench.report import TARGETS, device_label, line
from fpt_bench.timing import alternate, matmul_peak, paired_fraction, peak_mb, reset_peak
from fpt_bench.workload import (
    Settings,
    SyntheticTask,
    TensorPool,
    attention_name,
    bench_cell,
    build,
    describe,
    make_spec,
    paper_style,
    reference_step,
    torch_dropout,
    trainer_step,
    until,
)
from fpt_core.dropout import COUNTER_ATTENTION
from fpt_core.features import CachedFeatures
from fpt_core.flops import model_flops
from fpt_core.tasks import make_task
from fpt_core.train import train_step


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
    task = make_task(ours_cell) if shape == "bit-memory" else TensorPool(spec, ours_cell.batch_size)
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
    return lines


def measure_output_only(s: Settings) -> list[dict]:
    """An output-only epoch on cached features vs the trainer recomputing the backbone each step."""
    spec = make_spec("cifar10")
    cell = bench_cell(s, "cifar10", trainable="output")
    task = SyntheticTask(spec, s.n_train, max(64, s.n_train // 4)).load()
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
    return [line(
        "output_only_epoch", dtype=cell.precision, ours=1 / timed["ours"]["s"],
        baseline=1 / timed["baseline"]["s"], unit="epochs/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"], cache_peak),
        peak_mem_mb_ours=timed["ours"]["peak_mb"], peak_mem_mb_baseline=timed["baseline"]["peak_mb"],
        device=device_label(s.device), shape="cifar10", model=label,
        n_train=s.n_train, steps_per_epoch=epoch, cache_build_s=round(build_s, 4),
        repeats=len(timed["ours"]["all_s"]))]


def measure_dropout(s: Settings, shape: str = "cifar10") -> list[dict]:
    """The trainer's step with counter-based dropout (fpt_core/dropout.py: masks hashed from the
    cell's seed and step) vs the same model with torch's dropout drawn from a generator
    (nn.Dropout, sdpa's own attention dropout): what stateless masks cost."""
    spec = make_spec(shape)
    cell = bench_cell(s, shape)
    ours, ours_params, ours_opt = build(cell, spec, s.device)
    ref, ref_params, ref_opt = build(cell, spec, s.device)
    torch_dropout(ref)
    task = TensorPool(spec, cell.batch_size)
    counter = {"ours": 0, "baseline": 0}

    def steps(model, opt, params, name):
        def run():
            for _ in range(s.steps):
                trainer_step(model, opt, params, task, cell, s.device, counter[name])
                counter[name] += 1
        return run

    timed = alternate({"baseline": steps(ref, ref_opt, ref_params, "baseline"),
                       "ours": steps(ours, ours_opt, ours_params, "ours")},
                      s.repeats, s.device, until(s))
    label = describe(s, ours)
    return [line(
        "counter_dropout", dtype=cell.precision, ours=s.steps / timed["ours"]["s"],
        baseline=s.steps / timed["baseline"]["s"], unit="steps/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"]),
        device=device_label(s.device), shape=shape, model=label, batch=cell.batch_size,
        dropout=cell.dropout, attention=f"{COUNTER_ATTENTION} vs sdpa",
        repeats=len(timed["ours"]["all_s"]), steps_per_repeat=s.steps)]


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
