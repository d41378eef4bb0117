"""`fpt calibrate`: what a study's cells compute and cost on the device at hand, measured once and
kept in results/<study>/calibration.json for `fpt plan` and the train jobs' Slurm requests.

1. Parity: a handful of the study's cells, chosen to cover its kinds (backbone families, input
   kinds, frozen / fully trained / output-only, precisions), train PARITY_STEPS steps on the
   device and on the CPU from the same seed and synthetic batches, and their losses and trainable
   weights are compared (TOLERANCE). A cell too big to run twice in its share of the budget runs
   with a tiny stand-in of its backbone (same class and blocks, 32 wide), and says so.
2. Speed and memory: every step shape of the study (flops.cell_work(...).key) the budget allows
   is timed and its peak memory read (measure.PeakMemory); the others are scaled by fits.
3. A study with a cell that does not fit the device's memory is refused, a line per cell,
   before anything is written; otherwise the file is written.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

from fpt_core import measure
from fpt_core.atomic import atomic_path
from fpt_core.backbones.registry import BACKBONES, write_tiny_backbones
from fpt_core.flops import Work, cell_work
from fpt_core.hardware import machine_name, precision_context
from fpt_core.measure import CalibratedRate, key_text
from fpt_core.model import build_model
from fpt_core.plan import HEADROOM, LAUNCH_S
from fpt_core.tasks import make_task
from fpt_core.train import step_seed, train_step, trainable_state

CALIBRATION = "calibration.json"
DEFAULT_BUDGET = 180.0  # seconds: parity and as many step shapes as fit, on any device
PARITY_STEPS = 4
PARITY_SHARE = 0.3  # of the budget; the rest times step shapes
MAX_PARITY_CELLS = 8
# (loss, update) relative differences allowed between the device and the CPU's fp32 reference.
# fp32: summation order alone, ~1e-6 of a loss; Adam's first steps are nearly lr x sign(gradient),
# so an element whose gradient is within rounding of zero steps the other way, 2 lr apart, and
# the update's relative difference is ~2 sqrt(fraction of such elements): 1e-3..1e-2 in fp32.
# tf32 (10-bit mantissa) and bf16 (8-bit) against fp32: losses ~1e-3 and ~1e-2 apart, updates
# ~0.05 and ~0.2. A device that skips or garbles the update is 1 or more apart.
TOLERANCE = {"fp32": (1e-4, 5e-2), "tf32": (3e-2, 0.5), "bf16": (3e-2, 0.5)}
WARMUP, TIMED = 2, 5
BUILD_S_PER_PARAM = 2e-8  # random init on a busy CPU core: 11-16 ns measured, a first guess
# Slurm --time from calibrated seconds: x1.5 (not the stated rate's x2: what is left unknown is a
# shared node's noise, evaluations and checkpoints scaled rather than timed, data loading; a job
# that overruns resumes from its checkpoint), + 10 min start-up, to 5 min, 15 min to 7 days.
RUNTIME_HEADROOM = (1.5,) + HEADROOM[1:]
# Slurm --mem from the host's peak: x1.5 (allocator fragmentation, the second copy of weights that
# loading pretrained ones holds for a moment) + 1 GiB for the task's data, which no probe loads
# (CIFAR-10 as float inputs, the largest, is ~0.7 GB); rounded up to 100 MB.
MEM_HEADROOM, DATA_ALLOWANCE = 1.5, 1 << 30
# A cell fits the device when 1.2 x its peak (reserved beyond allocated) plus what torch does not
# count (the CUDA context and cuBLAS workspace, ~1 GiB; on the CPU the process itself) fit.
FIT_MARGIN, CUDA_CONTEXT = 1.2, 1 << 30
# Bytes kept per hidden unit per token per block for backward when nothing is timed yet: 34 in
# 16-bit (Korthikanti et al. 2022, without the attention scores fused attention does not keep),
# doubled for fp32.
ACTIVATION_BYTES = 136
MIB = 1 << 20


def calibration_path(study) -> str:
    return f"{study.results_dir}/{CALIBRATION}"


def _size(n: float) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / MIB:.0f} MiB"


# ---------------------------------------------------------------- the study's step shapes

def study_shapes(study) -> dict[str, list[tuple]]:
    """key text -> [(cell, work)] of every cell the study trains, pretraining included."""
    shapes: dict[str, list[tuple]] = {}
    for cell in study.cells().values():
        work = cell_work(cell, study.grid, study.run.feature_cache)
        shapes.setdefault(key_text(work.key), []).append((cell, work))
    return shapes


def describe(work: Work) -> str:
    c, s = work.cell, work.spec
    groups = "+".join(c.trainable) if len(c.trainable) < 6 else "all"
    return (f"{c.backbone}{f' depth {c.depth}' if c.depth else ''} {s.name} ({s.n_tokens} x "
            f"{s.input_dim} {s.input_kind}) batch {c.batch_size} {c.precision} {groups}"
            f"{' cached' if work.cached else ''}")


_TERMS: dict[str, dict] = {}  # key text -> memory_terms, built once per process


def memory_terms(work: Work) -> dict:
    """What the memory model needs of a shape, from its architecture alone (a meta model)."""
    key = key_text(work.key)
    if key in _TERMS:
        return _TERMS[key]
    model = build_model(work.cell, work.spec, device="meta")
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    task = make_task(work.cell, load=False)
    sizes, hidden, b = task.sizes(), model.backbone.hidden, work.cell.batch_size
    # kept for backward, per block (the `none` backbone keeps its input layer's and layer norm's)
    tokens = b * work.spec.n_tokens * hidden * max(model.backbone.n_blocks, 1)
    if set(work.cell.trainable) == {"output"}:  # nothing kept below the output layer: a block's
        tokens = (task.eval_batch_size(b) if work.cached else b) * work.spec.n_tokens * hidden
    examples = (sizes.train or 0) + sizes.test + (sizes.val or 0) + sizes.train_sample
    _TERMS[key] = {"params": params, "trainable": trainable, "activation_units": tokens,
                   "eval_batch": task.eval_batch_size(b),
                   "feature_bytes": 4 * examples * work.spec.n_readout * hidden if work.cached else 0}
    return _TERMS[key]


def guess_bytes(terms: dict, activation: float = ACTIVATION_BYTES, state_only: bool = False) -> float:
    """Weights in fp32, a gradient and Adam's two moments per trainable weight, and activations."""
    state = 4 * terms["params"] + 12 * terms["trainable"]
    return state if state_only else state + activation * terms["activation_units"]


# ---------------------------------------------------------------- parity

def family(work: Work) -> str:
    return Path(str(work.cell.backbone)).name.split("-")[0]


def parity_kinds(work: Work, main: str | None = None) -> set[str]:
    """What a cell stands for; of the study's main family (most cells), each kind of training."""
    groups = set(work.cell.trainable)
    trained = ("output-only" if groups == {"output"}
               else "fully trained" if {"attention", "feedforward"} <= groups else "frozen")
    kinds = {f"{family(work)} family", f"{work.spec.input_kind} input", trained, work.cell.precision}
    return kinds | ({f"{main} {trained}"} if family(work) == main else set())


def choose_parity(shapes: dict, cost) -> list[tuple]:
    """Greedily, the cell that covers most kinds not yet covered, the cheapest of equals."""
    main = Counter(family(w) for members in shapes.values() for _, w in members).most_common(1)[0][0]
    candidates = [members[0] for members in shapes.values()]
    covered, chosen = set(), []
    while len(chosen) < MAX_PARITY_CELLS:
        best = max(candidates, key=lambda cw: (len(parity_kinds(cw[1], main) - covered), -cost(cw[1])))
        if not parity_kinds(best[1], main) - covered:
            break
        covered |= parity_kinds(best[1], main)
        chosen.append(best)
        candidates.remove(best)
    return chosen


class _SyntheticBatches:
    """The trainer's batch-source interface on synthetic batches drawn from (seed, step) on the
    host, so the device and the CPU see the same examples."""

    def __init__(self, model, spec, cell, device):
        self.model, self.spec, self.cell, self.device = model, spec, cell, device

    def train_batch(self, step: int):
        generator = torch.Generator().manual_seed(step_seed(self.cell.seed, step))
        return measure.synthetic_batch(self.spec, self.cell.batch_size, self.device, generator)

    def logits(self, x):
        return self.model(x)


def train_few(cell, spec, device) -> tuple[list[float], dict, dict]:
    """Losses of PARITY_STEPS steps of the trainer's own step, the trainable weights after them
    and before (on the CPU)."""
    model = build_model(cell, spec)  # weights drawn on the CPU from the cell's seed
    before = trainable_state(model)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay)
    source = _SyntheticBatches(model, spec, cell, device)
    with precision_context(cell.precision, device):
        losses = [train_step(source, optimizer, params, cell, device, step)[0]
                  for step in range(PARITY_STEPS)]
    after = {n: w.cpu().float() for n, w in trainable_state(model).items()}
    return [float(loss) for loss in losses], after, before


def parity(cell, spec, device) -> dict:
    """The device in the cell's precision against the CPU in fp32, random weights (no download)
    and the cell's own dropout (its masks hash (seed, step), the same on every device)."""
    cell = dataclasses.replace(cell, init="random")
    reference = dataclasses.replace(cell, precision="fp32")
    ref_losses, ref, before = train_few(reference, spec, torch.device("cpu"))
    losses, got, _ = train_few(cell, spec, device)
    loss = max(abs(a - b) / max(abs(b), 1e-6) for a, b in zip(losses, ref_losses))
    apart = math.sqrt(sum(float((got[n] - ref[n]).pow(2).sum()) for n in ref))
    moved = math.sqrt(sum(float((ref[n] - before[n]).pow(2).sum()) for n in ref))
    update = apart / moved if moved else (0.0 if apart == 0 else math.inf)
    loss_tol, update_tol = TOLERANCE[cell.precision]
    return {"precision": cell.precision, "loss_diff": loss, "update_diff": update,
            "tolerance": [loss_tol, update_tol], "agreed": loss <= loss_tol and update <= update_tol}


def run_parity(study, shapes, device, share_s: float, say) -> list[dict]:
    cpu_rate = 0.5 * measure.matmul_rate("cpu")  # a step reaches about half the matmul peak

    def cost(work):  # seconds of the CPU reference and the device run, each built
        step = work.step_flops / cpu_rate + work.step_units * LAUNCH_S["train"]
        return 2 * (BUILD_S_PER_PARAM * memory_terms(work)["params"] + PARITY_STEPS * step)

    chosen, out = choose_parity(shapes, cost), []
    deadline = time.monotonic() + share_s
    if device.type == "cpu":
        say("parity on the CPU against the CPU: exact by construction; it checks the machinery")
    with tempfile.TemporaryDirectory(prefix="fpt-calibrate-") as stand_ins:
        for i, (cell, work) in enumerate(chosen):
            name, left = f"{study.cell_name(cell.id)} [{cell.id}]", deadline - time.monotonic()
            if left <= 0:
                say(f"parity  {name}: not run (the parity share of the budget, {share_s:.0f} s, is spent)")
                continue
            check = _parity_line(name, work, device, cost(work), left / (len(chosen) - i), stand_ins, say)
            if check is not None:
                out.append({"cell_id": cell.id, "name": study.cell_name(cell.id), **check})
    return out


def _parity_line(name, work, device, cost_s, share_s, stand_ins, say) -> dict | None:
    run, note = work.cell, ""
    if cost_s > share_s:
        source = str(work.cell.backbone)
        if source not in BACKBONES:
            say(f"parity  {name}: not run (~{cost_s:.0f} s here, and {source} has no tiny stand-in)")
            return None
        tiny = write_tiny_backbones(stand_ins, [source])[source]
        run = dataclasses.replace(work.cell, backbone=str(tiny))
        note = f"; a tiny stand-in of {source}: the cell itself would take ~{cost_s:.0f} s twice"
    result = parity(run, work.spec, device)
    loss_tol, update_tol = result["tolerance"]
    verdict = ("agreed" if result["agreed"] else "DIFFERS") + (
        f" (loss {result['loss_diff']:.2g} of tolerance {loss_tol:g}, update "
        f"{result['update_diff']:.2g} of tolerance {update_tol:g})")
    say(f"parity  {name} ({', '.join(sorted(parity_kinds(work)))}; {PARITY_STEPS} steps{note}): {verdict}")
    return {"stand_in": bool(note), **result}


# ---------------------------------------------------------------- speed and memory

def run_speed(shapes, device, deadline: float, say) -> tuple[dict, tuple, float]:
    """Probes of the step shapes: the one of most memory first (the fit verdict and most of the
    hours hinge on it), then each time the one farthest in log FLOPs from those timed (the fit
    sees both ends), of those the time left allows; at least one. Returns key -> Probe, the time
    fit and the activation bytes fitted."""
    works = {k: members[0][1] for k, members in shapes.items()}
    terms = {k: memory_terms(w) for k, w in works.items()}
    rate = 0.5 * measure.matmul_rate(device)
    probes, points = {}, []

    def est(k):  # seconds of its probe: the build, the steps and an evaluation batch
        a, b = measure.fit_two(points) if points else (1 / rate, 0.0)
        step = a * works[k].step_flops + b * works[k].step_units
        return BUILD_S_PER_PARAM * terms[k]["params"] + (WARMUP + TIMED + 1) * step

    left = sorted(works, key=lambda k: -guess_bytes(terms[k]))
    while left:
        fits = [k for k in left if est(k) <= deadline - time.monotonic()]
        if not fits and probes:
            break
        if not probes:
            pick = fits[0] if fits else min(left, key=est)
        else:
            pick = key_text(measure.farthest([works[k] for k in fits], [f for f, _, _ in points]).key)
        left.remove(pick)
        w = works[pick]
        # an evaluation batch's memory too on a GPU, where it costs milliseconds (on the CPU,
        # more than the steps)
        evaluation = terms[pick]["eval_batch"] if device.type == "cuda" else None
        probes[pick] = probe = measure.probe_step(
            w.cell, w.spec, device, WARMUP, TIMED, max(deadline - time.monotonic(), 1.0),
            cached=w.cached, eval_batch=evaluation)
        points.append((w.step_flops, w.step_units, probe.seconds))
        say(f"step    {describe(w)}: {probe.seconds * 1e3:.3g} ms, peak {_size(probe.peak_bytes)} (timed)")
    live = [(probes[k].peak_bytes - guess_bytes(terms[k], state_only=True)) / terms[k]["activation_units"]
            for k in probes if not works[k].cached]
    return probes, measure.fit_two(points), max(max(live, default=ACTIVATION_BYTES), 0.0)


def build_entries(shapes, probes, fit, activation, device) -> list[dict]:
    a, b = fit
    entries = []
    for k, members in shapes.items():
        w, probe = members[0][1], probes.get(k)
        t = memory_terms(w)
        estimate = guess_bytes(t, activation)
        peak = (probe.peak_bytes if probe else estimate) + t["feature_bytes"]
        host = probe.host_peak_bytes if probe else (4 * t["params"] if device.type == "cuda" else estimate)
        entries.append({"key": json.loads(k), "description": describe(w), "cells": len(members),
                        "measured": probe is not None,
                        "seconds": probe.seconds if probe else a * w.step_flops + b * w.step_units,
                        "peak_bytes": int(peak), "host_peak_bytes": int(host + t["feature_bytes"]),
                        "step_flops": w.step_flops, "step_units": w.step_units})
    return entries


def need_bytes(entry: dict, device, rss: int) -> int:
    return int(FIT_MARGIN * entry["peak_bytes"] + (CUDA_CONTEXT if device.type == "cuda" else rss))


# ---------------------------------------------------------------- the command

def run(study, device: torch.device, *, budget: float = DEFAULT_BUDGET,
        memory_limit_mb: float | None = None, out: str | None = None, say=print) -> int:
    """Calibrate `study` on `device`; 0 with the file written, 2 when a cell does not fit."""
    started = time.monotonic()
    deadline = started + budget
    if device.type == "cpu":  # as each job of the grid will run, at most a thread per core here
        torch.set_num_threads(min(study.resources.threads, len(os.sched_getaffinity(0))))
    shapes = study_shapes(study)
    cuda = torch.version.cuda if device.type == "cuda" else None
    say(f"calibrating {study.name} on {machine_name(device)} ({device}, torch {torch.__version__}"
        f"{f', CUDA {cuda}' if cuda else ''}), budget {budget:g} s: {sum(map(len, shapes.values()))} "
        f"cells, {len(shapes)} step shapes")
    checks = run_parity(study, shapes, device, PARITY_SHARE * budget, say)
    rss = measure.settled_rss()  # a job's process before it builds anything
    probes, fit, activation = run_speed(shapes, device, deadline, say)
    entries = build_entries(shapes, probes, fit, activation, device)
    if len(probes) < len(shapes):
        say(f"step    {len(shapes) - len(probes)} more step shapes scaled by the fit (budget spent)")
    limit = int(memory_limit_mb * MIB) if memory_limit_mb else measure.device_memory(device)
    refused = 0
    for entry in entries:
        need, how = need_bytes(entry, device, rss), "measured" if entry["measured"] else "extrapolated"
        for cell, _ in shapes[key_text(entry["key"])] if need > limit else ():
            refused += 1
            say(f"does not fit: {study.cell_name(cell.id)} [{cell.id}]: needs {_size(need)} ({how}), "
                f"{device} has {_size(limit)}")
    if refused:
        say(f"refused: {refused} cells do not fit; nothing written, {time.monotonic() - started:.0f} s")
        return 2
    data = {"study": study.name, "device": str(device), "device_type": device.type,
            "device_name": machine_name(device), "torch": torch.__version__, "cuda": cuda,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget, "elapsed_s": round(time.monotonic() - started, 1),
            "threads": torch.get_num_threads(), "memory_measure": measure.memory_measure(device),
            "memory_limit_bytes": limit, "process_rss_bytes": rss, "parity": checks,
            "fit": {"seconds": "a x step FLOPs + b x launch units", "a": fit[0], "b": fit[1],
                    "memory": "4 bytes per weight + 12 per trainable weight + activation_bytes x "
                              "batch x tokens x hidden x blocks", "activation_bytes": activation},
            "steps": entries}
    path = Path(out or calibration_path(study))
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")
    say(f"wrote {path}: {len(probes)} of {len(entries)} step shapes timed, "
        f"{sum(c['agreed'] for c in checks)} of {len(checks)} parity cells agreed, "
        f"{time.monotonic() - started:.0f} s")
    return 0


# ---------------------------------------------------------------- reading it back

@dataclasses.dataclass
class Calibration:
    path: str
    data: dict

    @classmethod
    def for_study(cls, study) -> Calibration | None:
        """The study's calibration where it was measured on the kind of device its jobs run on."""
        path = Path(calibration_path(study))
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        wanted = study.run.device.partition(":")[0]
        return cls(str(path), data) if wanted in ("auto", data["device_type"]) else None

    def rate(self) -> CalibratedRate:
        return CalibratedRate(self.data, self.path)

    def entries(self, works) -> list[dict] | None:
        found = {key_text(e["key"]): e for e in self.data["steps"]}
        picked = [found.get(key_text(w.key)) for w in works]
        return None if None in picked else picked

    def runtime_minutes(self, cells_and_works) -> int:
        rate = self.rate()
        seconds = sum(rate.seconds(w, precision=c.precision, steps=c.steps) for c, w in cells_and_works)
        factor, plus, step, low, high = RUNTIME_HEADROOM
        return int(min(max(math.ceil((factor * seconds / 60 + plus) / step) * step, low), high))

    def mem_mb(self, works) -> int | None:
        """MB of host memory a job of these shapes asks for; None where a shape is missing (the
        config changed since)."""
        entries = self.entries(works)
        if not entries:
            return None
        need = MEM_HEADROOM * (self.data["process_rss_bytes"] + max(e["host_peak_bytes"] for e in entries))
        return int(math.ceil((need + DATA_ALLOWANCE) / MIB / 100) * 100)
