"""Figures and tables of the ablations, drawn from the aggregated results only.

Each ablation gets one image and one table (Markdown, and LaTeX where asked): our accuracy (mean
and standard deviation over seeds, in percent, a 95% interval and a test against the
ablation's reference row) beside the paper's number for the same (experiment, row, task) from
reported.csv. Three kinds:

- bars: grouped bars per task, one bar per row label (the generic figure; any new ablation);
  for an ablation that selects over a swept field (`select:`), the selected value's test
  accuracy per row and the sweep beneath (fpt_core/selection.py)
- curves: learning curves per task and the steps to reach the accuracy threshold
- train-test: train accuracy beside test accuracy per row label

A table with cells missing (a partial aggregate) says so in the figure's title and the table.
Redrawn from the same aggregate, every file comes out byte for byte the same. The drawing
helpers they share are in fpt_core/drawing.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from fpt_core.drawing import (  # noqa: E402
    Ablation,
    ablation_rows,
    axes_title,
    error_bars,
    facets,
    figure_legend,
    figure_title,
    footnotes,
    labels_in_order,
    paper_points,
    reference_lines,
    save,
    tasks_in_order,
    tick_labels,
)
from fpt_core.selection import draw_selected, selected_over  # noqa: E402
from fpt_core.stats import METHOD, example_counts, reference_label, with_stats  # noqa: E402
from fpt_core.summaries import (  # noqa: E402
    CONVERGED_WITHIN,
    FINAL_WINDOW,
    LEARNED_MARGIN,
    SPREAD,
    Table,
    baseline_note,
    citation,
    completeness_note,
    converge_summary,
    data_note,
    data_sources,
    flags,
    load_reported,
    marked,
    metric_values,
    other_setting,
    steps_summary,
    summarize,
    table_frame,
    task_title,
    write_tables,
)


def draw_bars(a: Ablation) -> None:
    if a.select:
        return draw_selected(a)
    rows, metric, reported = a.rows, a.metric, a.reported
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    reference = reference_label(labels, a.reference)
    values = metric_values(rows, metric)
    summary = other_setting(summarize(rows, metric, reported), a.paper_notes)
    summary = with_stats(summary, rows, values, example_counts(rows), reference)
    marks = flags(summary, a.paper_notes, labels)
    note = completeness_note(rows)
    sources = data_sources(rows)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    fig, axes = facets(len(tasks), width=max(3.2, 0.7 * len(labels) + 1.2))
    for ax, task in zip(axes, tasks):
        data = rows[rows["task"] == task].assign(acc=100 * values)
        here = [label for label in labels if label in set(data["label"])]  # rows run on task
        sns.barplot(data=data, x="label", y="acc", hue="label", order=here, hue_order=here,
                    palette=palette, errorbar=None, legend=False, ax=ax)
        sns.stripplot(data=data, x="label", y="acc", order=here, color="0.25", size=3,
                      jitter=False, label="seed", legend=False, ax=ax)
        ax.set_xlim(-0.5, len(here) - 0.5)  # keep the place of a row whose cells are missing
        sub = summary[summary["task"] == task].set_index("label").reindex(here)
        error_bars(ax, np.arange(len(here)), sub)
        paper_points(ax, np.arange(len(here)), sub["paper"].to_numpy(), "paper",
                      sub["paper_note"].to_numpy())
        reference_lines(ax, task)
        axes_title(ax, task_title(task, sources))
        ax.set_xlabel("")
        ax.set_ylabel("test accuracy (%)" if metric.endswith("test_acc") else metric)
        ax.set_ylim(0, 105)
        tick_labels(ax, here, marked(marks))
    figure_legend(fig, axes)
    figure_title(fig, a.title, note, summary["paper"].notna().any(), reported, a.experiment, marks)
    save(fig, a.png)
    what = (f"Test accuracy (%, `{metric}`): ours as mean ± std over seeds (dots in the figure), "
            f"its 95% interval (error bars) and its difference from the reference row "
            f"`{reference}`; the paper's number for the same experiment, row and task beside it. "
            f"{citation(reported, a.experiment, summary['paper'].notna().any())} {METHOD}"
            + data_note(sources) + baseline_note(tasks) + f" {SPREAD}")
    frame = table_frame(summary, labels, tasks, reference=reference, names=marked(marks))
    write_tables(a.md, a.tex, [Table(a.title, what, frame, note, footnotes(marks))])


def draw_train_test(a: Ablation) -> None:
    rows, metric, reported = a.rows, a.metric, a.reported
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    reference = reference_label(labels, a.reference)
    note = completeness_note(rows)
    test_values, train_values = metric_values(rows, metric), rows["train_acc"].astype(float)
    test = other_setting(summarize(rows, metric, reported, suffix="-test"), a.paper_notes)
    test = with_stats(test, rows, test_values, example_counts(rows), reference)
    train = other_setting(summarize(rows, "train_acc", reported, suffix="-train"), a.paper_notes)
    train = with_stats(train, rows, train_values, None, None)
    marks = flags(pd.concat([test, train]), a.paper_notes, labels)
    sources = data_sources(rows)
    fig, axes = facets(len(tasks), width=max(3.2, 0.9 * len(labels) + 1.2))
    long = pd.concat([rows.assign(acc=100 * test_values, split="test"),
                      rows.assign(acc=100 * train_values, split="train")], ignore_index=True)
    for ax, task in zip(axes, tasks):
        data = long[long["task"] == task]
        here = [label for label in labels if label in set(data["label"])]
        sns.barplot(data=data, x="label", y="acc", hue="split", order=here,
                    hue_order=["train", "test"], errorbar=None, ax=ax)
        ax.set_xlim(-0.5, len(here) - 0.5)
        for offset, part in ((-0.2, train), (0.2, test)):
            sub = part[part["task"] == task].set_index("label").reindex(here)
            error_bars(ax, np.arange(len(here)) + offset, sub)
            paper_points(ax, np.arange(len(here)) + offset, sub["paper"].to_numpy(),
                          "paper" if offset < 0 else None, sub["paper_note"].to_numpy())
        reference_lines(ax, task)
        axes_title(ax, task_title(task, sources))
        ax.set_xlabel("")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        tick_labels(ax, here, marked(marks))
    figure_legend(fig, axes)
    figure_title(fig, a.title, note, pd.concat([test, train])["paper"].notna().any(), reported,
           a.experiment, marks)
    save(fig, a.png)
    parts = [train.assign(label=train["label"] + " (train)"),
             test.assign(label=test["label"] + " (test)")]
    splits = ("train", "test")
    if "train_sample_acc" in rows and rows["train_sample_acc"].notna().any():
        sample = summarize(rows, "train_sample_acc", None, suffix="-train-sample")
        sample = with_stats(sample, rows, rows["train_sample_acc"].astype(float), None, None)
        parts.append(sample.assign(label=sample["label"] + " (train sample)"))
        splits = ("train", "train sample", "test")
    both = pd.concat(parts)
    order = [f"{label} ({split})" for label in labels for split in splits]
    what = ("Train and test accuracy (%), mean ± std over seeds and a 95% interval, beside the "
            "paper's numbers; each test row's difference from the reference row "
            f"`{reference}`. {citation(reported, a.experiment, both['paper'].notna().any())} "
            "Train is the paper's measure: "
            "accuracy on the batches trained on since the last evaluation, in train mode "
            "(dropout on), as its code logs it and the figure shows. Train sample is ours: a "
            "fixed sample of training examples scored like the test split (eval mode). "
            f"{METHOD} Train and train-sample intervals are over seeds only."
            + data_note(sources) + baseline_note(tasks) + f" {SPREAD}")
    frame = table_frame(both, order, tasks, reference=reference, names=marked(marks, splits))
    write_tables(a.md, a.tex, [Table(a.title, what, frame, note, footnotes(marks))])


def draw_curves(a: Ablation) -> None:
    rows, curves, reported, title = a.rows, a.curves, a.reported, a.title
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    note = completeness_note(rows)
    steps = other_setting(steps_summary(rows, reported, curves, a.thresholds), a.paper_notes)
    converge = other_setting(converge_summary(rows, reported, curves), a.paper_notes)
    marks = flags(pd.concat([converge, steps]), a.paper_notes, labels)
    sources = data_sources(rows)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    members = rows[["cell_id", "label", "task"]].drop_duplicates()
    data = curves.merge(members, on="cell_id")
    data = data.assign(acc=100 * data["test_acc"].astype(float))
    fig, axes = facets(len(tasks), width=4.2)
    for ax, task in zip(axes, tasks):
        here = data[data["task"] == task]
        if len(here):
            sns.lineplot(data=here, x="step", y="acc", hue="label", hue_order=labels,
                         palette=palette, errorbar=("pi", 100), ax=ax)
        threshold = steps.loc[steps["task"] == task, "threshold"].dropna()
        if len(threshold):
            ax.axhline(100 * threshold.iloc[0], color="grey", linestyle="--", linewidth=1,
                       label="threshold")
        reference_lines(ax, task)
        axes_title(ax, task_title(task, sources))
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 105)
    figure_legend(fig, axes, marked(marks))
    figure_title(fig, title, note, steps["paper"].notna().any(), reported, a.experiment, marks)
    save(fig, a.png)
    used = ", ".join(f"{t} {100 * v:.0f}%" for t, v in
                     steps.drop_duplicates("task").set_index("task")["threshold"].items()
                     if not math.isnan(v))
    shown = converge["paper"].notna().any()
    what = ("Steps to converge: the first evaluated step within "
            f"{100 * CONVERGED_WITHIN:.0f} point of the run's own final test accuracy (the mean "
            f"of its last {FINAL_WINDOW} evaluations), mean ± std over the seeds that learned, "
            f"beside the paper's. {citation(reported, a.experiment, shown)} "
            f"A run whose final accuracy is within {100 * LEARNED_MARGIN:.0f} points of chance, "
            "or of the task's trivial baseline where it has one, did not learn: it sits on its "
            "plateau from the first evaluation, so it is counted as 'did not learn', not as fast."
            + data_note(sources) + baseline_note(tasks) + f" {SPREAD}")
    threshold_what = ("Steps to threshold: gradient steps until the test accuracy first reached "
                      f"the threshold{f' ({used})' if used else ''}, mean ± std over the seeds "
                      "that reached it (the curves show mean and range over seeds). "
                      f"{citation(reported, a.experiment, steps['paper'].notna().any())} {SPREAD}")
    frames = [table_frame(part, labels, tasks, 0, names=marked(marks))
              for part in (converge, steps)]
    write_tables(a.md, a.tex, [
        Table(title, what, frames[0], note, footnotes(marks)),
        Table("Steps to threshold", threshold_what, frames[1], "", footnotes(marks))])


# Figure kinds by name (an ablation's `figure:`); each draws a PNG and a Markdown table.
FIGURES = {"bars": draw_bars, "curves": draw_curves, "train-test": draw_train_test}


def draw_ablation(table_path: str | Path, curves_path: str | Path, ablation: str, kind: str,
                  title: str, metric: str, reported_path: str | Path | None,
                  png: str | Path, md: str | Path, thresholds: dict[str, float] | None = None,
                  paper_notes: dict[str, str] | None = None, reference: str | None = None,
                  tex: str | Path | None = None, select: dict | None = None) -> None:
    """The figure and table of one ablation, from the aggregate tables, by its kind; `reference`
    names the row the others are tested against (default the first), `tex` where to write the
    table as LaTeX too, `select` the ablation's `select:` ({"over": field, "by": "val"}: per row
    and task, the value of the field chosen on validation accuracy; bars only)."""
    if kind not in FIGURES:
        raise ValueError(f"figure: unknown value {kind!r}; allowed: {', '.join(FIGURES)}")
    over = selected_over(select)
    if over is not None and kind != "bars":
        raise ValueError(f"select: only the bars figure selects over {over}; figure {kind!r} "
                         f"would average over its values")
    sns.set_theme(style="whitegrid", context="paper")
    rows = ablation_rows(pd.read_parquet(table_path), ablation)
    FIGURES[kind](Ablation(rows, pd.read_parquet(curves_path), load_reported(reported_path), title,
                           metric, thresholds or {}, Path(png), Path(md), paper_notes or {},
                           reference, Path(tex) if tex is not None else None, select or None))


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
    save(fig, Path(png))
