"""Every cell's results in two tables: one row per (cell, ablation, row label), and all curves.

The aggregate is what figures read: results/<study>/aggregate.parquet holds each summary row joined to
the ablation memberships the grid gave the cell (ablation, experiment, label, label_order,
figure), so a figure filters on its ablation and groups by (task, label) over seeds. A cell whose
files are missing appears with status "missing" when a partial table was asked for; otherwise
missing and unreadable files are an error that names them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import pandas as pd

from fpt_core import results
from fpt_core.results import ResultError

MEMBER_COLUMNS = (
    "cell_id", "ablation", "experiment", "label", "label_order", "task", "seed",
)


def read_cell(cell_dir: Path, cell_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A cell's summary and curve, checked against the results schema and the cell id."""
    summary = results.read_summary(cell_dir)
    curve = results.read_curve(cell_dir)
    found = summary["cell_id"].iloc[0]
    if found != cell_id:
        raise ResultError(f"{cell_dir / results.SUMMARY}: holds cell {found}, not {cell_id}")
    return summary, curve


def collect(cell_dirs: Mapping[str, str | Path], members: list[dict], partial: bool = False
            ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(aggregate, curves, problems), reading each member cell from its directory in
    `cell_dirs`; problems name each missing or unreadable cell file."""
    membership = pd.DataFrame(members, columns=list(MEMBER_COLUMNS))
    summaries, curves, problems = [], [], []
    for cell_id in dict.fromkeys(membership["cell_id"]):
        cell_dir = Path(cell_dirs[cell_id])
        if not (cell_dir / results.SUMMARY).exists():
            problems.append(f"{cell_dir / results.SUMMARY} (missing)")
            continue
        try:
            summary, curve = read_cell(cell_dir, cell_id)
        except ResultError as e:
            problems.append(str(e))
            continue
        summaries.append(summary)
        curves.append(curve)
    unreadable = [p for p in problems if not p.endswith("(missing)")]
    if unreadable or (problems and not partial):
        raise ResultError(f"{len(problems)} cell(s) not usable: " + "; ".join(problems))
    found = _concat(summaries, results.SUMMARY_COLUMNS)
    found = found.drop(columns=["task", "seed"], errors="ignore")  # the membership has them
    table = membership.merge(found, on="cell_id", how="left")
    table["status"] = table["status"].fillna("missing")
    return table, _concat(curves, results.CURVE_COLUMNS), problems


def _concat(frames: list[pd.DataFrame], columns: tuple[str, ...]) -> pd.DataFrame:
    """The frames one under the other; with none, an empty table that still has `columns`."""
    if not frames:
        text = ("cell_id", "status")
        return pd.DataFrame({c: pd.Series(dtype="object" if c in text else "float64")
                             for c in columns})
    return pd.concat(frames, ignore_index=True)


def aggregate(cell_dirs: Mapping[str, str | Path], members: list[dict], table_path: str | Path,
              curves_path: str | Path, partial: bool = False) -> list[str]:
    """Write the aggregate and curve tables; return the problems that a partial table skipped."""
    table, curves, problems = collect(cell_dirs, members, partial)
    results.write_parquet(table, Path(table_path))
    results.write_parquet(curves, Path(curves_path))
    return problems
