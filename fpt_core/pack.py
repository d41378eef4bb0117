"""Packs: a grid's unfinished cells in groups that one process trains one after another.

Starting Python, importing torch and transformers, and loading a backbone cost seconds per
process; a bit-task cell at batch 4 trains in less. A pack pays them once for several cells. On a
cluster a pack is one Slurm job holding one GPU, instead of each small cell holding one for a few
minutes. Each cell still trains by `train.train_cell` into its own directory, with its own log,
checkpoints and resume, exactly as `fpt train` would train it alone: nothing a cell computes
depends on the cells before it in its pack (tests/test_pack.py compares bit for bit).

Packs are formed from unfinished cells only, so a pack's name (a hash of its cells) changes as
cells finish: a pack killed half-way is, on the next run, a smaller pack of what is left, and
no finished cell is ever trained again. Cells of one pack share what is costly to load: the
backbone, its init and precision, and the device.
"""
from __future__ import annotations

import hashlib
import math
import re
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Callable, Iterable

PACK_KEY = ("backbone", "init", "precision", "device")


def pack_name(cells: list) -> str:
    """Readable and unique: the backbone's last path part, the init, and a hash of the cell ids."""
    first = cells[0]
    digest = hashlib.sha1(",".join(sorted(c.id for c in cells)).encode()).hexdigest()[:10]
    backbone = re.sub(r"[^a-z0-9]+", "-", Path(str(first.backbone)).name.lower()).strip("-")
    return f"{backbone}-{first.init}-{len(cells)}-{digest}"


def make_packs(cells: Iterable, size: int, minutes: float | None = None,
               cost: Callable[[Any], float] | None = None) -> dict[str, list]:
    """Group cells by PACK_KEY, then split each group into packs of at most `size` cells and,
    with `minutes` and `cost` (a cell's estimated minutes), at most that much work each (a cell
    that alone needs more gets a pack of its own). Each pack keeps the grid's order."""
    if size < 1:
        raise ValueError(f"pack size must be at least 1, not {size}")
    groups: dict[tuple, list] = {}
    for cell in cells:
        groups.setdefault(tuple(str(getattr(cell, k)) for k in PACK_KEY), []).append(cell)
    packs: dict[str, list] = {}
    for members in groups.values():
        if minutes and cost is not None:
            chunks = _fill(members, size, minutes, cost)
        else:
            # dealt round-robin: the packs of a group get alike mixes of tasks and run times
            n = math.ceil(len(members) / size)
            chunks = [members[i::n] for i in range(n)]
        for chunk in chunks:
            packs[pack_name(chunk)] = chunk
    return packs


def _fill(members: list, size: int, minutes: float, cost: Callable[[Any], float]) -> list[list]:
    """First fit, longest cells first: few packs, none over `size` cells or `minutes`."""
    order = {id(c): i for i, c in enumerate(members)}
    bins: list[tuple[list, float]] = []
    for cell in sorted(members, key=cost, reverse=True):
        need = cost(cell)
        for i, (chunk, total) in enumerate(bins):
            if len(chunk) < size and total + need <= minutes:
                bins[i] = (chunk + [cell], total + need)
                break
        else:
            bins.append(([cell], need))
    return [sorted(chunk, key=lambda c: order[id(c)]) for chunk, _ in bins]


def pack_of(packs: dict[str, list]) -> dict[str, str]:
    """cell id -> the name of its pack."""
    return {cell.id: name for name, cells in packs.items() for cell in cells}


def train_pack(jobs: list[dict]) -> list[str]:
    """Train each job's cell ({"values", "out", "log", "name"}) in turn; return the ids of those
    that failed. A failed cell does not stop the others (its traceback is in its own log); a stop
    signal does: the cell checkpoints, and train.Preempted goes up to the caller."""
    from fpt_core.cell import make_cell
    from fpt_core.train import Preempted, train_cell

    failed = []
    for i, job in enumerate(jobs, 1):
        cell = make_cell(job["values"])
        where = f"[{i}/{len(jobs)}] {cell.id} ({job['name']})"
        print(f"{where}: training, log {job['log']}", flush=True)
        try:
            summary = _train_logged(cell, job["out"], job["log"], train_cell, Preempted)
        except Preempted as e:
            print(f"{where}: stopped: {e}", flush=True)
            raise
        except Exception as e:  # noqa: BLE001 - the other cells of the pack still train
            failed.append(cell.id)
            print(f"{where}: failed: {type(e).__name__}: {' '.join(str(e).split())}", flush=True)
            continue
        row = summary.iloc[0]
        print(f"{where}: {row['status']}, test acc {row['final_test_acc']:.4f}, "
              f"{row['steps_done']} steps", flush=True)
    return failed


def _train_logged(cell, out: str, log: str, train_cell, preempted):
    """train_cell with everything it prints going to the cell's own log, line by line, so the
    log shows the run as it goes (as one `fpt train` job's log would)."""
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as f, redirect_stdout(f), redirect_stderr(f):
        try:
            return train_cell(cell, out)
        except preempted as e:
            print(f"stopped: {e}; the next run resumes", file=sys.stderr)
            raise
        except Exception:
            traceback.print_exc()
            raise
