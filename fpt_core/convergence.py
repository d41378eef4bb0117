"""When a run has converged: the paper's notion (Table 6: within a point of where it ends up),
decided online from the evaluations a run already makes, so a cell can stop at convergence
instead of training its whole budget (`stop: converged`).

Online, the end is unknown, so a run has converged when `patience` evaluations in a row have
not beaten the best before them by a point: the last gain of a point is then `patience`
evaluations old. The rule reads only the curve, which checkpoints carry, so a resumed run stops
where an uninterrupted one would. It watches validation accuracy where the cell has a
validation split (a stop decided on the test split would select on it) and test accuracy
otherwise, as the paper's own curves did.
"""
from __future__ import annotations

import math

import pandas as pd

WITHIN = 0.01  # a point of accuracy: the paper's Table 6 counts a run converged within one


def monitored(curve: list[dict]) -> str:
    """The accuracy the rule watches: validation where the run evaluates one, else test."""
    return "val_acc" if curve and not math.isnan(curve[-1].get("val_acc", math.nan)) else "test_acc"


def converged(curve: list[dict], patience: int, within: float = WITHIN) -> bool:
    """Whether the last `patience` evaluations of `curve` gained less than `within` on the best
    accuracy before them."""
    if len(curve) <= patience:
        return False
    key = monitored(curve)
    accuracy = [row[key] for row in curve]
    return max(accuracy[-patience:]) < max(accuracy[:-patience]) + within


def stop_index(curve: list[dict], patience: int, within: float = WITHIN) -> int | None:
    """The evaluation at which a run with this curve would have stopped (None: never): replays
    the online rule on a finished run's curve."""
    for end in range(patience + 1, len(curve) + 1):
        if converged(curve[:end], patience, within):
            return end - 1
    return None


def replay(curves: pd.DataFrame, patience: int, within: float = WITHIN) -> pd.DataFrame:
    """Per cell of finished runs' `curves` (results.CURVE_COLUMNS), what `stop: converged` with
    this patience would have changed: the step it stops at (its budget where it never stops),
    and the final and best test accuracy at that step beside the whole budget's. Exact for a
    deterministic run: a run that stops is the budget run cut short (the rule reads only its
    curve)."""
    rows = []
    for cell_id, curve in curves.sort_values(["cell_id", "step"], kind="stable").groupby("cell_id", sort=False):
        records = curve.to_dict("records")
        stop = stop_index(records, patience, within)
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
