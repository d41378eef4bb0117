"""Step times and memory measured on this machine: a few of a study's step shapes timed, the rest
scaled by a fit of seconds to FLOPs and kernel launches (`fpt plan --measure`; `fpt calibrate`
times every shape its budget allows and keeps the result, fpt_core/calibrate.py)."""
from __future__ import annotations

import collections
import ctypes
import ctypes.util
import dataclasses
import gc
import json
import math
import os
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import nnls

from fpt_core.errors import ConfigError
from fpt_core.flops import Work
from fpt_core.hardware import cpu_model, precision_context
from fpt_core.model import autocast, build_model
from fpt_core.plan import LAUNCH_S

# One probe of a step shape: median seconds of a step, and the peak memory of building the model,
# stepping it and one evaluation batch: on the device, and on the host (equal on the CPU).
Probe = collections.namedtuple("Probe", "seconds peak_bytes host_peak_bytes")


class FittedRate:
    """Seconds of a cell from step times of some step shapes (keys), and for the others (and for
    evaluation passes) the fit seconds = a x FLOPs + b x launch units. Subclasses fill steps_s,
    fit and where; `label` names where the times came from in plan lines."""

    label = "measured"

    def __init__(self, device: str):
        self.device = device
        self.unit = "GPU-hours" if torch.device(device).type == "cuda" else "CPU-hours"
        self.steps_s: dict = {}  # key -> seconds of one step
        self.fit = (0.0, 0.0)  # a (s per FLOP), b (s per launch unit)

    def seconds(self, work: Work, *, precision: str, steps: int, companions: int = 1) -> float:
        """As measured (the precision each shape was timed in); `steps` of them, the launches of
        a step shared by `companions` cells stepped together."""
        a, b = self.fit
        if work.key in self.steps_s:
            step = self.steps_s[work.key]
            step -= b * work.step_units * (1 - 1 / companions)
        else:
            step = a * work.step_flops + b * work.step_units / companions
        per_unit = b * LAUNCH_S["eval"] / LAUNCH_S["train"]  # an evaluation batch launches fewer
        pass_flops, pass_batches = work.passes(steps)
        return steps * max(step, 0.0) + a * pass_flops + per_unit * work.pass_units * pass_batches

    def method(self, work: Work, precision: str) -> str:
        return f"{self.label if work.key in self.steps_s else 'scaled'} {self.device}"

    def fit_text(self) -> str:
        a, b = self.fit
        return (f"seconds = FLOPs / {1 / a / 1e9 if a else float('inf'):.3g} GFLOP/s + "
                f"{b * 1e3:.3g} ms per block")


class MeasuredRate(FittedRate):
    """Steps timed here for a few step shapes (keys); the fit for the others."""

    def __init__(self, device: str = "auto", max_keys: int = 6, budget_s: float = 60.0,
                 warmup: int = 3, timed: int = 5, threads: int | None = None):
        allowed = ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")
        if device not in allowed:
            raise ConfigError(f"device: {device!r} is not available here; allowed: {', '.join(allowed)}")
        super().__init__(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if threads and self.device == "cpu":  # as each job of the grid will run; on a busy CPU
            torch.set_num_threads(threads)    # two threads can be ten times slower than one
        self.max_keys, self.budget_s, self.warmup, self.timed = max(1, max_keys), budget_s, warmup, timed
        self.points = []  # (FLOPs, units, seconds) of each timed key
        self.where = (torch.cuda.get_device_name(0) if self.device == "cuda"
                      else f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)")

    def prepare(self, works: list[Work]) -> None:
        """Time the median key, then, of the keys the fit says fit their share of the budget left,
        the one farthest in log FLOPs from those timed, until max_keys or none fits."""
        left = list({w.key: w for w in sorted(works, key=lambda w: w.step_flops) if not w.cached}.values())
        started = time.perf_counter()
        while left and len(self.steps_s) < self.max_keys:
            share = (self.budget_s - (time.perf_counter() - started)) / (self.max_keys - len(self.steps_s))
            a, b = self.fit
            runs = self.warmup + self.timed
            fits = ([w for w in left if runs * (a * w.step_flops + b * w.step_units) <= share]
                    if self.points else [left[len(left) // 2]])
            if not fits:
                break
            pick = farthest(fits, [f for f, _, _ in self.points])
            left.remove(pick)
            seconds = time_step(pick.cell, pick.spec, self.device, self.warmup, self.timed, max(share, 1.0))
            self.steps_s[pick.key] = seconds
            self.points.append((pick.step_flops, pick.step_units, seconds))
            self.fit = fit_two(self.points)

    def describe(self) -> str:
        return (f"measured on {self.where}: {len(self.steps_s)} step shapes timed ({self.warmup} "
                f"warm-up + up to {self.timed} timed steps, median; random weights, synthetic "
                f"batches), the others and all evaluation passes scaled by the fit {self.fit_text()}")


class CalibratedRate(FittedRate):
    """Seconds from a calibration file (`fpt calibrate`, fpt_core/calibrate.py): its timed step
    shapes as timed, the fit for the others."""

    label = "calibrated"

    def __init__(self, data: dict, path: str):
        super().__init__(data["device"])
        self.data, self.path = data, path
        self.fit = (data["fit"]["a"], data["fit"]["b"])
        self.steps_s = {tuple_key(e["key"]): e["seconds"] for e in data["steps"] if e["measured"]}

    def describe(self) -> str:
        d = self.data
        return (f"calibrated on {d['device_name']} ({self.path}, {d['date']}, torch {d['torch']}"
                f"{', CUDA ' + d['cuda'] if d['cuda'] else ''}): {len(self.steps_s)} of "
                f"{len(d['steps'])} step shapes timed, the others and all evaluation passes scaled "
                f"by the fit {self.fit_text()}")


def tuple_key(value):
    """A key read back from JSON as the tuple cell_work made."""
    return tuple(tuple_key(v) for v in value) if isinstance(value, list) else value


def key_text(key) -> str:
    """A step shape's key as the calibration file spells it."""
    return json.dumps(key)


def farthest(works: list[Work], timed_flops: list[float]) -> Work:
    """The work farthest in log step FLOPs from every FLOP count already timed (the first when
    none is): the fit then sees the whole range of sizes."""
    logs = [math.log(f) for f in timed_flops]
    return max(works, key=lambda w: min((abs(math.log(w.step_flops) - x) for x in logs), default=0))


def fit_two(points) -> tuple[float, float]:
    """a, b >= 0: seconds ~ a FLOPs + b units, least squares in relative error (1 point: a only)."""
    x = np.array([[f / s, u / s] for f, u, s in points]).reshape(-1, 2)
    scale = np.maximum(x.max(axis=0, initial=0.0), 1e-30)  # columns of like size for nnls
    (a, b), _ = nnls(x / scale, np.ones(len(points)))
    return float(a / scale[0]), float(b / scale[1])


# ---------------------------------------------------------------- memory

def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == field:
                    return int(value.split()[0]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Linux resets the process's peak resident set (VmHWM) on writing 5 to clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _proc_status("VmHWM") is not None
    except OSError:
        return False


_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


def settled_rss() -> int:
    """The process's resident set, bytes, once its freed memory is collected and its freed heap
    returned to the OS (its lifetime peak where /proc is missing)."""
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)
    return _proc_status("VmRSS") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory of the work inside the block. On a GPU, device memory torch allocated
    (torch.cuda.max_memory_allocated, reset first) beyond what was allocated before. On the host,
    the growth of the process's peak resident set: freed heap is first returned to the OS
    (malloc_trim) and the peak reset (/proc/self/clear_refs), so the growth is this block's own;
    where the peak cannot be reset, the growth of the lifetime peak (ru_maxrss), a lower bound.
    tracemalloc would miss torch's tensors, which its allocator takes outside Python's."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.host_how = "VmHWM growth"
        self.peak_bytes = self.host_peak_bytes = 0

    def __enter__(self):
        rss = settled_rss()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._device_base = torch.cuda.memory_allocated(self.device)
        if _reset_peak_rss():
            self._host_base = rss
        else:
            self.host_how = "ru_maxrss growth (a lower bound)"
            self._host_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc) -> None:
        peak = _proc_status("VmHWM") if self.host_how == "VmHWM growth" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.host_peak_bytes = max(peak - self._host_base, 0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._device_base
        else:
            self.peak_bytes = self.host_peak_bytes


def device_memory(device) -> int:
    """Bytes a job may use on `device`: the GPU's memory, or the host's (its cgroup's limit)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        text = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        return min(total, int(text)) if text.isdigit() else total
    except OSError:
        return total


def memory_measure(device) -> str:
    """What PeakMemory reports as peak_bytes on `device`, in words."""
    if torch.device(device).type == "cuda":
        return "torch.cuda.max_memory_allocated (reset before each shape)"
    how = "VmHWM, reset through /proc/self/clear_refs" if _reset_peak_rss() else "ru_maxrss, a lower bound"
    return f"growth of the process's peak resident set ({how}, after malloc_trim)"


# ---------------------------------------------------------------- timing

def time_step(cell, spec, device: str, warmup: int = 3, timed: int = 5,
              limit_s: float | None = None) -> float:
    """Median seconds of a step: random weights, synthetic batch, Adam; fewer once past limit_s."""
    return probe_step(cell, spec, device, warmup, timed, limit_s).seconds


def synthetic_batch(spec, batch: int, device, generator: torch.Generator | None = None):
    """Inputs and labels of the task's shape (token ids from 1: 0 is the pad id)."""
    shape = (batch, spec.n_tokens)
    x = (torch.randint(1, spec.input_dim, shape, generator=generator) if spec.input_kind == "tokens"
         else torch.randn(*shape, spec.input_dim, generator=generator))
    y = torch.randint(0, spec.n_classes, (batch, spec.n_predictions), generator=generator)
    return x.to(device), y.to(device)


def probe_step(cell, spec, device: str, warmup: int = 3, timed: int = 5,
               limit_s: float | None = None, cached: bool = False,
               eval_batch: int | None = None) -> Probe:
    """Median seconds of a training step (random weights, synthetic batch, Adam; fewer timed
    steps once past limit_s, and a warm-up step that alone takes half of it is the measurement:
    one-time costs are small beside such a step) and the peak memory of building the model,
    its steps and, with eval_batch, one evaluation batch. A cached shape (output-only on frozen
    features) steps the output layer on features; its memory is the model's and one batch of
    feature extraction."""
    device = torch.device(device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    with PeakMemory(device) as memory, precision_context(cell.precision, device):
        model = build_model(dataclasses.replace(cell, init="random"), spec, device=device)  # train mode
        if eval_batch:
            x, _ = synthetic_batch(spec, eval_batch, device)
            model.eval()
            with torch.no_grad(), autocast(cell.precision, device):
                model(x)
            model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=cell.lr) if params else None
        x, y = synthetic_batch(spec, cell.batch_size, device)
        if cached:
            x = torch.randn(cell.batch_size, spec.n_readout, model.backbone.hidden, device=device)
        forward = (lambda: model.output_layer(x).reshape(len(y), spec.n_predictions, spec.n_classes)) \
            if cached else (lambda: model(x))

        def step():
            with autocast(cell.precision, device):
                logits = forward()
            loss = F.cross_entropy(logits.float().reshape(-1, spec.n_classes), y.reshape(-1))
            if optimizer is not None:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cell.grad_clip or float("inf"))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sync()

        times: list[float] = []
        for _ in range(warmup):
            start = time.perf_counter()
            step()
            if limit_s is not None and time.perf_counter() - start > limit_s / 2:
                times.append(time.perf_counter() - start)
                break
        while len(times) < max(timed, 1) and (not times or limit_s is None or sum(times) < limit_s):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return Probe(statistics.median(times), memory.peak_bytes, memory.host_peak_bytes)


def matmul_rate(device, seconds: float = 0.2, n: int = 512) -> float:
    """FLOP/s of fp32 n x n matrix products here: a first guess of a step's time before any is
    timed."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    (a @ a).sum()
    sync()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ a
        count += 1
    sync()
    return 2 * n ** 3 * count / (time.perf_counter() - start)
