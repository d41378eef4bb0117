"""When a run has converged: the paper's notion (Table 6: within a point of where it ends up),
decided online from the evaluations a run already makes, so a cell can stop at convergence
instead of training its whole budget (`stop: converged`).

Online, the end is unknown, so a run has converged when `patience` evaluations in a row have
not beaten the best before them by a point: the last gain of a point is then `patience`
evaluations old. The rule reads only the curve, which checkpoints carry, so a resumed run stops
where an uninterrupted one would. It watches validation accuracy where the cell has a
validation split (a stop decided on the test split would select on it) and test accuracy
otherwise, as the paper's own curves did.

A run whose best accuracy is still at its task's floor (chance, or the trivial baseline where a
task has one) has not converged but not yet started: the paper's frozen random transformer sat
at chance on bit-xor for thousands of steps before it solved the task (Table 6: 20,000 steps),
so the rule waits for a run to leave its floor. A run that never leaves it trains its budget.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from fpt_core import catalog
from fpt_core.atomic import atomic_path

WITHIN = 0.01  # a point of accuracy: the paper's Table 6 counts a run converged within one
LEARNED_MARGIN = 0.02  # a run has left its task's floor once it is more than this above it


@functools.cache
def task_floor(task: str) -> float:
    """What a run that learned nothing scores on a registered task: the higher of chance and the
    trivial baseline (0 for a task not registered here)."""
    row = catalog.TASKS.get(task)
    return max(row.chance, row.baseline or 0.0) if row else 0.0


def monitored(curve: list[dict]) -> str:
    """The accuracy the rule watches: validation where the run evaluates one, else test."""
    return "val_acc" if curve and not math.isnan(curve[-1].get("val_acc", math.nan)) else "test_acc"


def converged(curve: list[dict], patience: int, within: float = WITHIN, floor: float = 0.0) -> bool:
    """Whether the last `patience` evaluations of `curve` gained less than `within` on the best
    accuracy before them, once the run has left its task's `floor`."""
    if len(curve) <= patience:
        return False
    key = monitored(curve)
    accuracy = [row[key] for row in curve]
    if max(accuracy) <= floor + LEARNED_MARGIN:
        return False
    return max(accuracy[-patience:]) < max(accuracy[:-patience]) + within


def stop_index(curve: list[dict], patience: int, within: float = WITHIN, floor: float = 0.0) -> int | None:
    """The evaluation at which a run with this curve would have stopped (None: never): replays
    the online rule on a finished run's curve."""
    for end in range(patience + 1, len(curve) + 1):
        if converged(curve[:end], patience, within, floor):
            return end - 1
    return None


def replay(curves: pd.DataFrame, patience: int, within: float = WITHIN,
           floors: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Per cell of finished runs' `curves` (results.CURVE_COLUMNS), what `stop: converged` with
    this patience (and each cell's task floor in `floors`, 0 where absent) would have changed:
    the step it stops at (its budget where it never stops), and the final and best test
    accuracy at that step beside the whole budget's. Exact for a deterministic run: a run that
    stops is the budget run cut short (the rule reads only its curve)."""
    rows = []
    for cell_id, curve in curves.sort_values(["cell_id", "step"], kind="stable").groupby("cell_id", sort=False):
        records = curve.to_dict("records")
        stop = stop_index(records, patience, within, (floors or {}).get(cell_id, 0.0))
        kept = records if stop is None else records[:stop + 1]
        rows.append({"cell_id": cell_id, "evaluations": len(records), "steps": records[-1]["step"],
                     "stop_step": kept[-1]["step"], "final": records[-1]["test_acc"],
                     "final_stopped": kept[-1]["test_acc"],
                     "best": max(r["test_acc"] for r in records),
                     "best_stopped": max(r["test_acc"] for r in kept)})
    out = pd.DataFrame(rows, columns=["cell_id", "evaluations", "steps", "stop_step", "final",
                                      "final_stopped", "best", "best_stopped"])
    return out.assign(final_change=out["final_stopped"] - out["final"],
                      best_change=out["best_stopped"] - out["best"])


PATIENCES = (3, 5)  # the default grid's cells evaluate about 10 times: longer waits never stop


def stopping_table(aggregate: pd.DataFrame, curves: pd.DataFrame,
                   patiences: tuple[int, ...] = PATIENCES) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What `stop: converged` would change on a study's finished runs, replayed per patience:
    per task, how many cells stop early, the share of steps they keep, the mean and worst change
    of the final and best test accuracy (points); and every cell whose final accuracy it lowers
    by more than a point, with the rows it serves."""
    rows_of = (aggregate.assign(row=aggregate["ablation"] + "/" + aggregate["label"].astype(str))
               .groupby("cell_id").agg(task=("task", "first"), seed=("seed", "first"),
                                       rows=("row", lambda r: ", ".join(sorted(set(r))))))
    summary, losers = [], []
    for patience in patiences:
        replayed = replay(curves[curves["cell_id"].isin(rows_of.index)], patience,
                          floors=rows_of["task"].map(task_floor).to_dict()).join(rows_of, on="cell_id")
        for task, cells in replayed.groupby("task", sort=True):
            summary.append({"patience": patience, "task": task, "cells": len(cells),
                            "stopped": int((cells["stop_step"] < cells["steps"]).sum()),
                            "steps_kept": cells["stop_step"].sum() / cells["steps"].sum(),
                            "final_mean": 100 * cells["final_change"].mean(),
                            "final_worst": 100 * cells["final_change"].min(),
                            "best_mean": 100 * cells["best_change"].mean(),
                            "lose_over_1": int((cells["final_change"] < -WITHIN).sum())})
        lost = replayed[replayed["final_change"] < -WITHIN]
        losers.append(lost.assign(patience=patience))
    columns = ["patience", "task", "rows", "seed", "cell_id", "stop_step", "steps", "final", "final_stopped"]
    return pd.DataFrame(summary), pd.concat(losers)[columns].reset_index(drop=True)


def write_stopping(table_path: str | Path, curves_path: str | Path, md: str | Path, study: str) -> pd.DataFrame:
    """figures/<study>/stopping.md from the study's aggregate and curve tables; returns the
    per-task summary."""
    summary, losers = stopping_table(pd.read_parquet(table_path), pd.read_parquet(curves_path))
    with atomic_path(Path(md)) as tmp:
        tmp.write_text(stopping_markdown(summary, losers, f"stopping at convergence in the {study} study"),
                       encoding="utf-8")
    return summary


def stopping_markdown(summary: pd.DataFrame, losers: pd.DataFrame, title: str) -> str:
    """The replay as a page: the per-task table, then the cells that lose more than a point."""
    head = (f"# {title}\n\nEach finished cell's curve replayed under `stop: converged` (stop once "
            "`patience` evaluations in a row gain less than a point on the best before them, read on "
            "validation accuracy where the cell has a split, else test, and never while the best is "
            f"within {100 * LEARNED_MARGIN:.0f} points of the task's chance or trivial baseline; exact "
            "for a deterministic run, which stops as its budget run cut short). "
            "`steps_kept`: the stopped runs' steps over the budget's; changes in points of test "
            "accuracy, stopped minus budget.\n\n")
    table = summary.to_markdown(index=False, floatfmt=".2f")
    if losers.empty:
        return head + table + "\n\nNo cell loses more than a point of final accuracy.\n"
    shown = losers.assign(final=100 * losers["final"], final_stopped=100 * losers["final_stopped"])
    return (head + table + "\n\nCells whose final accuracy drops by more than a point:\n\n"
            + shown.to_markdown(index=False, floatfmt=".1f") + "\n")
