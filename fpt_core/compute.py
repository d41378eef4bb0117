"""What the study cost: wall time per ablation and task, from every cell's own summary.

Snakemake's report counts only the jobs run from this checkout (its Statistics page reads
.snakemake/metadata), so committed, copied or cluster-trained results would be left out. Each
summary records its cell's wall time and device, so this table counts every cell of the study
wherever it was trained. A cell shared by two ablations counts in each ablation's rows and once
in the study's total.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from fpt_core.atomic import atomic_path  # noqa: E402
from fpt_core.summaries import latex_escape  # noqa: E402

TRAINED = ("finished", "diverged")
# PNG metadata names the matplotlib version; without it a figure depends only on what it shows.
PNG_METADATA = {"Software": None}
TOTAL = "whole study"
COLUMNS = ("ablation", "task", "cells", "missing", "hours", "median_min", "longest_min",
           "devices")


def compute_title(study: str) -> str:
    """The compute table's title: a function of the study's name alone, so a redraw from the same
    aggregate rewrites the committed file byte for byte."""
    return f"compute of the {study} study"


def _row(cells: pd.DataFrame, ablation: str, task: str) -> dict:
    """One line of the table from the (unique) cells it covers."""
    trained = cells[cells["status"].isin(TRAINED)]
    minutes = trained["wall_time_s"].astype(float) / 60
    return {
        "ablation": ablation, "task": task, "cells": len(trained),
        "missing": int((~cells["status"].isin(TRAINED)).sum()),
        "hours": minutes.sum() / 60,
        "median_min": minutes.median(),  # NaN where none trained
        "longest_min": minutes.max(),
        "devices": ", ".join(sorted(trained["device"].dropna().astype(str).unique())),
    }


def compute_table(aggregate: pd.DataFrame) -> pd.DataFrame:
    """Per (ablation, task), then a total row per ablation and one for the study (unique cells)."""
    rows = []
    for ablation, members in aggregate.groupby("ablation", sort=False):
        cells = members.drop_duplicates("cell_id")
        for task, of_task in cells.groupby("task", sort=False):
            rows.append(_row(of_task, ablation, task))
        rows.append(_row(cells, ablation, "all"))
    rows.append(_row(aggregate.drop_duplicates("cell_id"), TOTAL, "all"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


WHAT = ("Wall time of every trained cell of the study, read from each cell's summary, so it "
        "counts cells trained anywhere (another checkout, the cluster, the committed results); "
        "Snakemake's own report statistics count only jobs run from this checkout. A cell "
        "shared by two ablations counts in both; the last row counts each cell once. "
        "Pretraining runs are not included.")
HEADERS = {"hours": "wall time (h)", "median_min": "median cell (min)",
           "longest_min": "longest cell (min)"}


def markdown(compute: pd.DataFrame, title: str) -> str:
    shown = compute.rename(columns=HEADERS)
    return (f"# {title}\n\n{WHAT}\n\n"
            + shown.to_markdown(index=False, floatfmt=".2f", missingval="") + "\n")


def latex(compute: pd.DataFrame, title: str) -> str:
    """The same table as markdown(), booktabs style, the description in its caption."""
    return compute.rename(columns=HEADERS).to_latex(
        index=False, float_format="%.2f", na_rep="", escape=True, position="htbp",
        caption=latex_escape(f"{title}. {WHAT}"))


def draw(compute: pd.DataFrame, png: Path, title: str) -> None:
    """Hours per ablation, stacked by task."""
    sns.set_theme(style="whitegrid", context="paper")
    per_task = compute[(compute["task"] != "all") & (compute["ablation"] != TOTAL)]
    hours = per_task.pivot_table(index="ablation", columns="task", values="hours",
                                 aggfunc="sum", sort=False).fillna(0)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(hours) + 1.6), layout="constrained")
    hours.iloc[::-1].plot.barh(stacked=True, ax=ax, width=0.7,
                               color=sns.color_palette("colorblind", hours.shape[1]))
    total = compute[compute["ablation"] == TOTAL].iloc[0]
    ax.set_xlabel("wall time (hours, every trained cell)")
    ax.set_ylabel("")
    ax.legend(title="task", fontsize="small", loc="lower right")
    ax.set_title(f"{title}: {total['cells']} cells, {total['hours']:.2f} h in all"
                 + (f", {total['missing']} not trained" if total["missing"] else ""))
    with atomic_path(Path(png)) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata=PNG_METADATA)
    plt.close(fig)


def draw_compute(table_path: str | Path, png: str | Path, md: str | Path,
                 title: str | None = None, study: str | None = None,
                 tex: str | Path | None = None) -> pd.DataFrame:
    """The compute table and figure of a study, from its aggregate table, titled
    compute_title(study) unless `title` is given; `tex`: the table as LaTeX too."""
    if title is None and study is None:
        raise TypeError("draw_compute: give the study's name (or a title)")
    title = title if title is not None else compute_title(study)
    compute = compute_table(pd.read_parquet(table_path))
    with atomic_path(Path(md)) as tmp:
        tmp.write_text(markdown(compute, title), encoding="utf-8")
    if tex is not None:
        with atomic_path(Path(tex)) as tmp:
            tmp.write_text(latex(compute, title), encoding="utf-8")
    draw(compute, Path(png), title)
    return compute
