"""Figures and tables of the ablations, drawn from the aggregated results only.

Each ablation gets one image and one Markdown table, our accuracy (mean and standard deviation
over seeds, in percent) beside the paper's number for the same (experiment, row, task) from
reported.csv. Three kinds:

- bars: grouped bars per task, one bar per row label (the generic figure; any new ablation)
- curves: learning curves per task and the steps to reach the accuracy threshold
- train-test: train accuracy beside test accuracy per row label

A table with cells missing (a partial aggregate) says so in the figure's title and the table.
"""
from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from fpt_core.summaries import (  # noqa: E402
    CONVERGED_WITHIN, FINAL_WINDOW, chance, comparable, completeness_note, converge_summary,
    data_note, data_sources, load_reported, markdown_table, metric_values, other_setting,
    steps_summary, summarize, task_title,
)

PAPER_COLOR = "black"


def ablation_rows(table: pd.DataFrame, ablation: str) -> pd.DataFrame:
    rows = table[table["ablation"] == ablation]
    if rows.empty:
        raise ValueError(f"ablation {ablation!r} is not in the aggregate; "
                         f"present: {', '.join(sorted(table['ablation'].unique()))}")
    return rows


def labels_in_order(rows: pd.DataFrame) -> list[str]:
    return list(rows.sort_values("label_order")["label"].drop_duplicates())


def tasks_in_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["task"].dropna())) or ["?"]


def _paper_points(ax, x: np.ndarray, values: np.ndarray, label: str | None,
                  notes: np.ndarray | None = None) -> None:
    """The paper's numbers as black diamonds over the bars, hollow where the paper's setting
    differs from the row's (another model size, a number quoted from another paper)."""
    values = values.astype(float)
    same = np.array([comparable(n if isinstance(n, str) else "") for n in
                     (notes if notes is not None else [""] * len(values))], dtype=bool)
    known = np.isfinite(values)
    if (known & same).any():
        ax.scatter(x[known & same], values[known & same], marker="D", s=28, color=PAPER_COLOR,
                   zorder=5, label=label)
    if (known & ~same).any():
        ax.scatter(x[known & ~same], values[known & ~same], marker="D", s=28, facecolors="none",
                   edgecolors=PAPER_COLOR, zorder=5,
                   label="paper, other setting" if label else None)


def _chance_line(ax, task: str) -> None:
    level = chance(task)
    if level is not None:
        ax.axhline(level, color="grey", linestyle=":", linewidth=1, label="chance", zorder=1)


def _figure_legend(fig, axes) -> None:
    """One legend for the paper's diamonds and the chance line, top right, clear of the bars."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=len(seen),
                   fontsize="small")


def _facets(n: int, width: float = 3.6, height: float = 3.2):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.9), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _title(fig, title: str, note: str, has_paper: bool, reported) -> None:
    # wrapped to the figure's width: a narrow figure would otherwise cut its title off
    text = textwrap.fill(title + (f"  [{note}]" if note else ""), width=int(fig.get_figwidth() * 9))
    if reported is None:
        text += "\n(paper numbers unavailable:\nreported.csv not found)"
    elif not has_paper:
        text += "\n(the paper reports no numbers for this experiment)"
    fig.suptitle(text, color="firebrick" if note else "black")


@dataclass
class Ablation:
    """What every figure function draws from: one ablation's rows of the aggregate and more."""

    rows: pd.DataFrame  # the aggregate's rows of this ablation
    curves: pd.DataFrame  # every cell's learning curve
    reported: pd.DataFrame | None  # the paper's numbers
    title: str
    metric: str  # final_test_acc or best_test_acc
    thresholds: dict[str, float]  # per task, for steps to threshold
    png: Path
    md: Path
    paper_notes: dict[str, str] = field(default_factory=dict)  # row -> the paper's other setting


def draw_bars(a: Ablation) -> None:
    rows, metric, reported, title, png, md = a.rows, a.metric, a.reported, a.title, a.png, a.md
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    summary = other_setting(summarize(rows, metric, reported), a.paper_notes)
    note = completeness_note(rows)
    sources = data_sources(rows)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    fig, axes = _facets(len(tasks), width=max(3.2, 0.7 * len(labels) + 1.2))
    for ax, task in zip(axes, tasks):
        data = rows[rows["task"] == task].assign(acc=lambda d: 100 * metric_values(d, metric))
        here = [label for label in labels if label in set(data["label"])]  # rows run on task
        sns.barplot(data=data, x="label", y="acc", hue="label", order=here, hue_order=here,
                    palette=palette, errorbar="sd", capsize=0.2, legend=False, ax=ax)
        ax.set_xlim(-0.5, len(here) - 0.5)  # keep the place of a row whose cells are missing
        sub = summary[summary["task"] == task].set_index("label").reindex(here)
        _paper_points(ax, np.arange(len(here)), sub["paper"].to_numpy(), "paper",
                      sub["paper_note"].to_numpy())
        _chance_line(ax, task)
        ax.set_title(task_title(task, sources))
        ax.set_xlabel("")
        ax.set_ylabel("test accuracy (%)" if metric.endswith("test_acc") else metric)
        ax.set_ylim(0, 105)
        ax.tick_params(axis="x", rotation=35)
        for tick in ax.get_xticklabels():
            tick.set_horizontalalignment("right")
    _figure_legend(fig, axes)
    _title(fig, title, note, summary["paper"].notna().any(), reported)
    _save(fig, png)
    what = (f"Test accuracy (%, `{metric}`): ours as mean ± std over seeds; the paper's "
            "number for the same experiment, row and task beside it." + data_note(sources))
    md.write_text(markdown_table(summary, labels, tasks, title, note, what))


def draw_train_test(a: Ablation) -> None:
    rows, metric, reported, title, png, md = a.rows, a.metric, a.reported, a.title, a.png, a.md
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    note = completeness_note(rows)
    test = other_setting(summarize(rows, metric, reported, suffix="-test"), a.paper_notes)
    train = other_setting(summarize(rows, "train_acc", reported, suffix="-train"), a.paper_notes)
    test, train = test.assign(split="test"), train.assign(split="train")
    sources = data_sources(rows)
    fig, axes = _facets(len(tasks), width=max(3.2, 0.9 * len(labels) + 1.2))
    long = pd.concat([
        rows.assign(acc=100 * metric_values(rows, metric), split="test"),
        rows.assign(acc=100 * rows["train_acc"].astype(float), split="train"),
    ], ignore_index=True)
    for ax, task in zip(axes, tasks):
        data = long[long["task"] == task]
        here = [label for label in labels if label in set(data["label"])]
        sns.barplot(data=data, x="label", y="acc", hue="split", order=here,
                    hue_order=["train", "test"], errorbar="sd", capsize=0.15, ax=ax)
        ax.set_xlim(-0.5, len(here) - 0.5)
        for offset, part in ((-0.2, train), (0.2, test)):
            sub = part[part["task"] == task].set_index("label").reindex(here)
            _paper_points(ax, np.arange(len(here)) + offset, sub["paper"].to_numpy(),
                          "paper" if offset < 0 else None, sub["paper_note"].to_numpy())
        _chance_line(ax, task)
        ax.set_title(task_title(task, sources))
        ax.set_xlabel("")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.legend(fontsize="small")
    _title(fig, title, note, pd.concat([test, train])["paper"].notna().any(), reported)
    _save(fig, png)
    parts = [train.assign(label=train["label"] + " (train)"),
             test.assign(label=test["label"] + " (test)")]
    splits = ["train", "test"]
    if "train_sample_acc" in rows and rows["train_sample_acc"].notna().any():
        sample = summarize(rows, "train_sample_acc", None, suffix="-train-sample")
        parts.append(sample.assign(label=sample["label"] + " (train sample)"))
        splits = ["train", "train sample", "test"]
    both = pd.concat(parts)
    order = [f"{label} ({split})" for label in labels for split in splits]
    what = ("Train and test accuracy (%), mean ± std over seeds, beside the paper's numbers. "
            "Train is the paper's measure: accuracy on the batches trained on since the last "
            "evaluation, in train mode (dropout on), as its code logs it and the figure shows. "
            "Train sample is ours: a fixed sample of training examples scored like the test split "
            "(eval mode)." + data_note(sources))
    md.write_text(markdown_table(both, order, tasks, title, note, what))


def draw_curves(a: Ablation) -> None:
    rows, curves, reported, title, png, md = a.rows, a.curves, a.reported, a.title, a.png, a.md
    thresholds = a.thresholds
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    note = completeness_note(rows)
    steps = other_setting(steps_summary(rows, reported, curves, thresholds), a.paper_notes)
    sources = data_sources(rows)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    members = rows[["cell_id", "label", "task"]].drop_duplicates()
    data = curves.merge(members, on="cell_id")
    data = data.assign(acc=100 * data["test_acc"].astype(float))
    fig, axes = _facets(len(tasks), width=4.2)
    for ax, task in zip(axes, tasks):
        here = data[data["task"] == task]
        if len(here):
            sns.lineplot(data=here, x="step", y="acc", hue="label", hue_order=labels,
                         palette=palette, errorbar=("pi", 100), ax=ax)
        threshold = steps.loc[steps["task"] == task, "threshold"].dropna()
        if len(threshold):
            ax.axhline(100 * threshold.iloc[0], color="grey", linestyle="--", linewidth=1,
                       label="threshold")
        ax.set_title(task_title(task, sources))
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 105)
        if ax.get_legend() is not None and ax is not axes[0]:
            ax.get_legend().remove()
    if axes and axes[0].get_legend() is not None:
        axes[0].legend(fontsize="small")
    _title(fig, title, note, steps["paper"].notna().any(), reported)
    _save(fig, png)
    used = ", ".join(f"{t} {100 * v:.0f}%" for t, v in
                     steps.drop_duplicates("task").set_index("task")["threshold"].items()
                     if not math.isnan(v))
    converge = other_setting(converge_summary(rows, reported, curves), a.paper_notes)
    what = ("Steps to converge: the first evaluated step within "
            f"{100 * CONVERGED_WITHIN:.0f} point of the run's own final test accuracy (the mean "
            f"of its last {FINAL_WINDOW} evaluations), mean ± std over seeds, beside the paper's "
            "Table 6 (steps to converge of its full-size runs). A run that learns nothing "
            "converges at once, to chance: read this with the accuracies of the curves."
            + data_note(sources))
    threshold_what = ("Steps to threshold: gradient steps until the test accuracy first reached "
                      f"the threshold{f' ({used})' if used else ''}, mean ± std over the seeds "
                      "that reached it (the curves show mean and range over seeds).")
    md.write_text(markdown_table(converge, labels, tasks, title, note, what, digits=0) + "\n"
                  + markdown_table(steps, labels, tasks, "Steps to threshold", "", threshold_what,
                                   digits=0))


# Figure kinds by name (an ablation's `figure:`); each draws a PNG and a Markdown table.
FIGURES = {"bars": draw_bars, "curves": draw_curves, "train-test": draw_train_test}


def _save(fig, png: Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def draw_ablation(table_path: str | Path, curves_path: str | Path, ablation: str, kind: str,
                  title: str, metric: str, reported_path: str | Path | None,
                  png: str | Path, md: str | Path, thresholds: dict[str, float] | None = None,
                  paper_notes: dict[str, str] | None = None) -> None:
    """The figure and table of one ablation, from the aggregate tables, by its kind."""
    if kind not in FIGURES:
        raise ValueError(f"figure: unknown value {kind!r}; allowed: {', '.join(FIGURES)}")
    sns.set_theme(style="whitegrid", context="paper")
    rows = ablation_rows(pd.read_parquet(table_path), ablation)
    FIGURES[kind](Ablation(rows, pd.read_parquet(curves_path), load_reported(reported_path), title,
                           metric, thresholds or {}, Path(png), Path(md), paper_notes or {}))


def draw_attention(attention_path: str | Path, png: str | Path, example: int = 0) -> None:
    """Head-averaged attention of each frozen block on one held-out example."""
    sns.set_theme(style="white", context="paper")
    table = pd.read_parquet(attention_path)
    table = table[table["example"] == example]
    layers = sorted(table["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(2.6 * len(layers), 3.0), squeeze=False)
    for ax, layer in zip(axes[0], layers):
        grid = table[table["layer"] == layer].pivot(index="query", columns="key", values="weight")
        ax.imshow(grid.to_numpy(), cmap="viridis", vmin=0, aspect="auto", interpolation="nearest")
        ax.set_title(f"block {layer}")
        ax.set_xlabel("key")
        ax.set_ylabel("query" if layer == layers[0] else "")
    task, cell = table["task"].iloc[0], table["cell_id"].iloc[0]
    fig.suptitle(f"attention (mean over heads), {task}, cell {cell}")
    _save(fig, Path(png))
