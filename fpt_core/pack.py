"""Packs: a grid's unfinished cells in groups that one process trains one after another.

Starting Python, importing torch and transformers, and loading a backbone cost seconds per
process; a bit-task cell at batch 4 trains in less. A pack pays them once for several cells. On a
cluster a pack is one Slurm job holding one GPU, instead of each small cell holding one for a few
minutes. Each cell still trains into its own directory, with its own log, checkpoints and resume,
exactly as `fpt train` would train it alone: nothing a cell computes depends on the cells before
it in its pack (tests/test_pack.py compares bit for bit). Where `train: together` allows, cells
of a pack that share their frozen weights step together (fpt_core/together.py), each with the
results of training it alone up to float rounding (tests/test_together.py).

Packs are formed from unfinished cells only, so a pack's name (a hash of its cells) changes as
cells finish: a pack killed half-way is, on the next run, a smaller pack of what is left, and
no finished cell is ever trained again. Cells of one pack share what is costly to load: the
backbone, its init and precision.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import tempfile
import traceback
from contextlib import ExitStack, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from fpt_core import results
from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError, DataError, ResultError
from fpt_core.run import Run
from fpt_core.together import groups
from fpt_core.train import Preempted, train_cell, train_cells

PACK_KEY = ("backbone", "init", "precision")


def pack_name(cells: list) -> str:
    """Readable and unique: the backbone's last path part, the init, and a hash of the cell ids."""
    first = cells[0]
    digest = hashlib.sha1(",".join(sorted(c.id for c in cells)).encode()).hexdigest()[:10]
    backbone = re.sub(r"[^a-z0-9]+", "-", Path(str(first.backbone)).name.lower()).strip("-")
    return f"{backbone}-{first.init}-{len(cells)}-{digest}"


def make_packs(cells: Iterable, size: int, minutes: float | None = None,
               cost: Callable[[Any], float] | None = None, together: int = 1) -> dict[str, list]:
    """Group cells by PACK_KEY, then split each group into packs of at most `size` cells and,
    with `minutes` and `cost` (a cell's estimated minutes), at most that much work each (a cell
    that alone needs more gets a pack of its own). Cells that can step together (at most
    `together` of them, together.groups) go to one pack, so that its process can step them
    together. Each pack keeps the grid's order."""
    if size < 1:
        raise ValueError(f"pack size must be at least 1, not {size}")
    by_key: dict[tuple, list] = {}
    for cell in cells:
        by_key.setdefault(tuple(str(getattr(cell, k)) for k in PACK_KEY), []).append(cell)
    packs: dict[str, list] = {}
    for members in by_key.values():
        order = {id(c): i for i, c in enumerate(members)}
        units = groups(members, min(together, size))
        if minutes and cost is not None:
            chunks = _fill(units, size, minutes, cost)
        else:
            chunks = _deal(units, size, math.ceil(len(members) / size))
        for chunk in chunks:
            chunk = sorted(chunk, key=lambda c: order[id(c)])
            packs[pack_name(chunk)] = chunk
    return packs


def _deal(units: list[list], size: int, n: int) -> list[list]:
    """Units dealt round-robin to n packs (the packs of a group get alike mixes of tasks and run
    times), a unit that fits no pack's room starting one more."""
    chunks: list[list] = [[] for _ in range(n)]
    turn = 0
    for unit in units:
        k = next((k % len(chunks) for k in range(turn, turn + len(chunks))
                  if len(chunks[k % len(chunks)]) + len(unit) <= size), None)
        if k is None:
            chunks.append([])
            k = len(chunks) - 1
        chunks[k] += unit
        turn = k + 1
    return chunks


def _fill(units: list[list], size: int, minutes: float, cost: Callable[[Any], float]) -> list[list]:
    """First fit, longest units first: few packs, none over `size` cells or `minutes` (a unit of
    cells stepped together counted as the sum of its cells)."""
    bins: list[tuple[list, float]] = []
    for unit in sorted(units, key=lambda u: sum(map(cost, u)), reverse=True):
        need = sum(map(cost, unit))
        for i, (chunk, total) in enumerate(bins):
            if len(chunk) + len(unit) <= size and total + need <= minutes:
                bins[i] = (chunk + unit, total + need)
                break
        else:
            bins.append((list(unit), need))
    return [chunk for chunk, _ in bins]


def train_pack(jobs: list[dict], run: dict) -> list[str]:
    """Train the jobs' cells ({"values", "out", "log", "name", and "together": the most cells
    stepped together, Resources.together, 1 where absent}) with the run settings `run`: in
    groups that step together (together.groups), a group of one alone; return the ids of
    those that failed. A failed cell does not stop the others (its traceback is in its own
    log); a stop signal does: every cell of the group training checkpoints, and
    train.Preempted goes up to the caller."""
    failed = []
    settings = Run(**run)
    cells = [make_cell(job["values"]) for job in jobs]
    most = max((job.get("together", 1) for job in jobs), default=1)
    number = {id(cell): i for i, cell in enumerate(cells)}
    for group in groups(cells, most):
        members = [(number[id(cell)], cell) for cell in group]
        where = {i: f"[{i + 1}/{len(jobs)}] {cell.id} ({jobs[i]['name']})" for i, cell in members}
        for i, cell in members:
            together = f", stepped together with {len(group) - 1} more" if len(group) > 1 else ""
            print(f"{where[i]}: training{together}, log {jobs[i]['log']}", flush=True)
        try:
            outcomes = _train_logged(group, settings, [jobs[i] for i, _ in members])
        except Preempted as e:
            for i, _ in members:
                print(f"{where[i]}: stopped: {e}", flush=True)
            raise
        for (i, cell), outcome in zip(members, outcomes):
            if isinstance(outcome, Exception):
                failed.append(cell.id)
                print(f"{where[i]}: failed: {type(outcome).__name__}: "
                      f"{' '.join(str(outcome).split())}", flush=True)
                continue
            row = outcome.iloc[0]
            print(f"{where[i]}: {row['status']}, test acc {row['final_test_acc']:.4f}, "
                  f"{row['steps_done']} steps", flush=True)
    return failed


def _train_logged(group: list, run: Run, jobs: list[dict]) -> list:
    """train_cells with what each cell prints going to its own log, line by line, so the log
    shows the run as it goes (as one `fpt train` job's log would), and each failure there: a
    traceback, or one line for an error in the config or the data. A cell alone has all the
    process prints in its log; cells together print their own lines to their own logs, and the
    rest goes to the process's output."""
    with ExitStack() as stack:
        logs = []
        for job in jobs:
            Path(job["log"]).parent.mkdir(parents=True, exist_ok=True)
            logs.append(stack.enter_context(open(job["log"], "a", buffering=1)))
        if len(group) == 1:
            stack.enter_context(redirect_stdout(logs[0]))
            stack.enter_context(redirect_stderr(logs[0]))
        try:
            outcomes = train_cells(group, [job["out"] for job in jobs], run, logs)
        except Preempted as e:
            for log in logs:
                print(f"stopped: {e}; the next run resumes", file=log)
            raise
        for outcome, log in zip(outcomes, logs):
            if isinstance(outcome, (ConfigError, DataError)):  # the user's to fix: one line says how
                print(f"error: {outcome}", file=log)
            elif isinstance(outcome, BaseException):
                traceback.print_exception(outcome, file=log)
        return outcomes


# How closely a cell trained again must reproduce its committed curve: bitwise up to float
# printing on the device kind it was trained on; across kinds (CPU vs GPU) reductions run in
# other orders, and accuracies may drift by a little.
SAME_KIND_TOLERANCE = 1e-6
OTHER_KIND_TOLERANCE = 0.02


def restore_model(job: dict) -> Path:
    """Train a finished cell ({"values", "run", "out"}) again beside its results and keep the
    weights (model.pt), after checking that the run reproduced the committed curve."""
    cell, run = make_cell(job["values"]), Run(**job["run"])
    out = Path(job["out"])
    committed = results.read_summary(out)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.restore-", dir=out.parent) as tmp:
        again = train_cell(cell, tmp, run)
        _check_reproduced(out, Path(tmp), committed, again)
        os.replace(Path(tmp) / results.MODEL, out / results.MODEL)
    print(f"{cell.id}: trained again, curve reproduced; weights in {out / results.MODEL}")
    return out / results.MODEL


def _check_reproduced(out: Path, tmp: Path, committed, again) -> None:
    kind = str(committed["device"].iloc[0]).split()[0] == str(again["device"].iloc[0]).split()[0]
    tolerance = SAME_KIND_TOLERANCE if kind else OTHER_KIND_TOLERANCE
    old, new = results.read_curve(out), results.read_curve(tmp)
    differs = len(old) != len(new) or not np.allclose(
        old["test_acc"].to_numpy(float), new["test_acc"].to_numpy(float), rtol=0, atol=tolerance)
    if differs:
        gap = (float(np.abs(old["test_acc"].to_numpy(float) - new["test_acc"].to_numpy(float)).max())
               if len(old) == len(new) else float("nan"))
        raise ResultError(
            f"{out}: training the cell again did not reproduce its committed curve (largest test "
            f"accuracy difference {gap:.3g}, allowed {tolerance:g}); its results come from other "
            f"code or hardware: delete {out} to train it afresh")
