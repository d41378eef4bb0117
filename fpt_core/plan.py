"""`fpt plan`: the compute a study will cost, estimated before launch, with and without each
lever that cuts it.

A cell costs its steps and the forward passes outside them (fpt_core/flops.py: FLOPs and kernel
launches). Seconds: stated (a GPU's data-sheet peak x an assumed utilisation, + a cost per
kernel launch), or measured (fpt_core/measure.py: a few step shapes timed here).

The levers, each as the config asks for it, and what the plan counts for it:
- precision: tf32 (or bf16) matrix products where a cell asks, instead of fp32;
- stopping: `stop: converged` cells run until convergence, which the plan takes from the paper's
  own Table 6 (steps to converge of its pretrained and random runs) plus the cell's patience,
  instead of their whole budget; a cell whose paper number sits at its task's floor trains its
  budget, since the rule waits for a run to leave its floor;
- together: cells that share their frozen weights step together (`train: together`), one
  step's kernel launches serving them all.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pandas as pd

from fpt_core.convergence import LEARNED_MARGIN, task_floor
from fpt_core.errors import ConfigError
from fpt_core.flops import Work, cell_work
from fpt_core.hardware import GPUS
from fpt_core.together import groups

# Model-FLOP utilisation of the arithmetic, launches aside. Tensor cores 15%: at batch 2-16 the
# products have 20 to 16k rows against 768-1280 columns, memory-bound on a GPU built for far
# larger ones, and norms, dropout and casts run at memory speed (well-tuned large-batch GPT-2
# training reaches 35-50%). fp32 50%: CUDA cores peak 8-16x lower, so the same products come
# closer to it. TF32 (half bf16's peak, twice its bytes) is assumed at bf16's rate, no higher,
# until measured on the GPU (fpt calibrate).
MFU = {"tensor": 0.15, "fp32": 0.5}
# Eager PyTorch issues ~25 kernels per block forward and ~35 backward at ~10-15 us of host time
# each; a small model's step waits on these launches, not on arithmetic.
LAUNCH_S = {"train": 0.8e-3, "eval": 0.3e-3}  # per launch unit (a block) per step or eval batch
DEFAULT_GPU = "a100-80gb"
HEADROOM = (2.0, 10, 5, 15, 7 * 24 * 60)  # x estimate, + minutes, rounded up to, floor, ceiling
# The paper's Table 6 in reported.csv: steps to converge of its pretrained and random runs.
TABLE6 = {"experiment": "compute-efficiency", "pretrained": "fpt-steps-to-converge",
          "random": "random-steps-to-converge"}


@dataclasses.dataclass(frozen=True)
class Levers:
    precision: bool = True
    stopping: bool = True
    together: bool = True


NONE = Levers(False, False, False)
# Each lever added in turn, for the plan's table: its name and what the plan takes for it.
STAGES = (
    ("none: fp32, every whole budget, each cell alone", NONE),
    ("+ precision as configured (tf32, bf16)", Levers(True, False, False)),
    ("+ stop at convergence (Table 6 + patience)", Levers(True, True, False)),
    ("+ cells stepped together", Levers(True, True, True)),
)


class StatedRate:
    """Seconds from a GPU's data-sheet peak, an assumed MFU and a cost per kernel launch."""

    unit = "GPU-hours"

    def __init__(self, gpu: str = DEFAULT_GPU):
        if gpu not in GPUS:
            raise ConfigError(f"gpu: unknown value {gpu!r}; allowed: {', '.join(GPUS)}")
        self.gpu, self.spec = gpu, GPUS[gpu]

    def dtype(self, precision: str) -> str:
        """What the GPU multiplies in for a cell of `precision` (the trainer's fallback: fp32)."""
        return self.spec.precision(precision, allow_fallback=True)

    def flops_per_s(self, precision: str) -> float:
        dtype = self.dtype(precision)
        if dtype == "fp32":
            return 1e12 * self.spec.fp32 * MFU["fp32"]
        bf16 = 1e12 * self.spec.bf16 * MFU["tensor"]
        return bf16 if dtype == "bf16" else min(bf16, 1e12 * self.spec.tf32)

    def seconds(self, work: Work, *, precision: str, steps: int, companions: int = 1) -> float:
        """`steps` of the cell's steps in `precision`, the launches of a step shared by
        `companions` cells stepped together, and its passes outside the steps."""
        rate = self.flops_per_s(precision)
        train = steps * (work.step_flops / rate + work.step_units * LAUNCH_S["train"] / companions)
        pass_flops, pass_batches = work.passes(steps)
        return train + pass_flops / rate + pass_batches * work.pass_units * LAUNCH_S["eval"]

    def method(self, work: Work, precision: str) -> str:
        return f"stated {self.gpu} {self.dtype(precision)}"

    def describe(self) -> str:
        s = self.spec
        tf32 = f"{s.tf32:g} TF32" if s.tf32 else "no TF32"
        return (f"stated, nothing measured: {s.name}, data-sheet dense peaks {s.bf16:g} TFLOP/s "
                f"bf16, {tf32} (tensor cores) and {s.fp32:g} fp32 (vendor data sheets), x assumed "
                f"MFU {MFU['tensor']:.0%} bf16 and {MFU['fp32']:.0%} fp32, TF32 at bf16's rate, "
                f"no higher, until measured; + kernel launches, {LAUNCH_S['train'] * 1e3:g} ms per "
                f"block per step and {LAUNCH_S['eval'] * 1e3:g} ms per block per evaluation batch; "
                f"stopping from the paper's Table 6 (reported.csv) + each cell's patience, the whole "
                f"budget where the paper's number sits at its task's floor")


def convergence_steps(reported: str | Path | None) -> dict[tuple[str, str], float]:
    """(task, 'pretrained' | 'random') -> the paper's steps to converge (its Table 6)."""
    if reported is None or not Path(reported).is_file():
        return {}
    table = pd.read_csv(reported)
    table = table[table["experiment"] == TABLE6["experiment"]]
    return {(r.task, kind): float(r.value) for r in table.itertuples()
            for kind in ("pretrained", "random") if r.row == TABLE6[kind]}


def at_floor(grid, reported: str | Path | None) -> frozenset[str]:
    """Cells whose paper number, in any row they serve, sits at its task's floor (chance or the
    trivial baseline): the stopping rule waits for a run to leave its floor, so these are
    expected to train their whole budget."""
    if reported is None or not Path(reported).is_file():
        return frozenset()
    table = pd.read_csv(reported)
    value = {(r.experiment, r.row, r.task): float(r.value) for r in table.itertuples()}
    return frozenset(
        m.cell_id for m in grid.members
        if (m.experiment, m.label, m.task) in value
        and value[(m.experiment, m.label, m.task)] / 100 <= task_floor(m.task) + LEARNED_MARGIN)


def lever_terms(cell, levers: Levers, converge: dict, companions: int,
                floored: frozenset[str] = frozenset()) -> dict:
    """The precision, steps and companions a cell's time is priced at with `levers` pulled."""
    return {"precision": cell.precision if levers.precision else "fp32",
            "steps": expected_steps(cell, converge, floored) if levers.stopping else cell.steps,
            "companions": companions if levers.together else 1}


def expected_steps(cell, converge: dict, floored: frozenset[str] = frozenset()) -> int:
    """The steps a cell is expected to run: its budget, or with stop: converged, the paper's
    steps to converge for its task (pretrained language blocks, or otherwise random ones) and
    `patience` evaluations more, at most the budget; its budget where the paper's run never left
    the task's floor (`floored`)."""
    if cell.stop != "converged" or cell.id in floored:
        return cell.steps
    kind = "pretrained" if cell.init == "pretrained" and "/" not in cell.backbone else "random"
    known = converge.get((cell.task, kind))
    if known is None:
        return cell.steps
    return int(min(cell.steps, known + cell.patience * cell.eval_every))


def estimate(grid, rate, *, converge: dict | None = None, together: int = 1,
             feature_cache: bool = True, floored: frozenset[str] = frozenset()) -> pd.DataFrame:
    """One row per cell, pretraining included: cell_id, ablations, task, backbone, steps (the
    budget), expected_steps, flops_per_step, companions, seconds and hours as configured, the
    hours of each lever stage (STAGES), and how the seconds were found."""
    converge = converge or {}
    ablations: dict[str, dict] = {}
    for m in grid.members:
        ablations.setdefault(m.cell_id, {})[m.ablation] = None  # config order, once each
    cells = [(c, [f"pretrain:{name}"]) for name, c in grid.pretrain.items()]
    cells += [(c, list(ablations.get(cid, ()))) for cid, c in grid.cells.items()]
    works = {c.id: cell_work(c, grid, feature_cache) for c, _ in cells}
    getattr(rate, "prepare", lambda works: None)(list(works.values()))  # a measured rate times first
    companions = {c.id: len(g) for g in groups([c for c, _ in cells], together) for c in g}
    rows = []
    for cell, names in cells:
        work = works[cell.id]
        stages = {name: rate.seconds(work, **lever_terms(cell, levers, converge, companions[cell.id], floored))
                  for name, levers in STAGES}
        seconds = rate.seconds(work, **lever_terms(cell, Levers(), converge, companions[cell.id], floored))
        rows.append({"cell_id": cell.id, "ablations": ",".join(names), "task": cell.task,
                     "backbone": cell.backbone, "steps": cell.steps,
                     "expected_steps": expected_steps(cell, converge, floored),
                     "flops_per_step": float(work.step_flops), "companions": companions[cell.id],
                     "seconds": seconds, "hours": seconds / 3600,
                     **{name: s / 3600 for name, s in stages.items()},
                     "method": rate.method(work, cell.precision)})
    return pd.DataFrame(rows)


def summarize(df: pd.DataFrame, unit: str = "GPU-hours") -> str:
    """Cells, steps and `unit` per ablation, then in total (a cell in two ablations counted
    once), then the total with each lever added in turn."""
    per = df.assign(ablation=df["ablations"].str.split(",")).explode("ablation")
    table = per.groupby("ablation", sort=False).agg(
        cells=("cell_id", "nunique"), steps=("expected_steps", "sum"), hours=("hours", "sum"))
    unique = df.drop_duplicates("cell_id")
    table.loc["total (distinct cells)"] = [len(unique), unique["expected_steps"].sum(),
                                           unique["hours"].sum()]
    table = table.astype({"cells": int, "steps": int})
    table["hours"] = table["hours"].map(_hours)
    table = table.rename(columns={"hours": unit, "steps": "expected steps"})
    lines = [table.to_string(), "", f"levers, {unit} of the distinct cells, each added in turn:"]
    before = None
    for name, _ in STAGES:
        total = unique[name].sum()
        change = f"  ({(total - before) / before:+.0%})" if before else ""
        lines.append(f"  {name:<52}{_hours(total):>12}{change}")
        before = total
    methods = ", ".join(f"{n} {m}" for m, n in df["method"].value_counts().items())
    return "\n".join(lines) + f"\n\ncells by method: {methods}"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 10 else f"{h:.3g}"


def runtime_minutes_for(cells, gpu: str = DEFAULT_GPU, grid=None) -> int:
    """Slurm --time of a job that trains `cells` one after another: 2 x the stated estimate of
    their whole budgets (a cell that stops early only ends sooner) + 10 min of start-up, rounded
    up to 5 min, at least 15 min, at most 7 days. A pipeline-pretrained backbone needs the grid."""
    rate = StatedRate(gpu)
    seconds = sum(rate.seconds(cell_work(c, grid), precision=c.precision, steps=c.steps) for c in cells)
    factor, plus, step, low, high = HEADROOM
    return int(min(max(math.ceil((factor * seconds / 60 + plus) / step) * step, low), high))
