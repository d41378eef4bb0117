"""Timing and memory for `fpt bench`: contenders taken in turn, peaks, a matmul's peak rate and
the --quick budget."""
from __future__ import annotations

import resource
import statistics
import time

import torch
from torch.utils import benchmark

from fpt_bench.report import significant


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


def paired_fraction(flops: int, step_times: list[float], n: int, peak_times: list[float]) -> float:
    """Median over repeats of the step's FLOP/s over the peak timed in the same repeat: on a
    shared machine the load changes between repeats, and a peak from a quieter moment than
    the step would understate the fraction (or overstate it, past 1)."""
    return significant(statistics.median(
        (flops / t) / (2 * n**3 / p) for t, p in zip(step_times, peak_times)), 4)
