"""Selection over a swept field, as Rothermel et al. 2021 (arXiv 2107.12460) tune the learning
rate: every run early-stopped on its validation split, per row and task the value of the field
whose runs have the best mean validation accuracy over seeds, and that value's test accuracy at
the best validation evaluation reported, its interval and its test against the reference row
computed on the selected cells only. The whole sweep stays in the tables and in the figure.

A choice made on the test split would report an optimistic test accuracy, so anything but
validation is refused here as in the config's schema.
"""
from __future__ import annotations

import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from fpt_core.drawing import (  # noqa: E402
    Ablation,
    axes_title,
    error_bars,
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
from fpt_core.stats import METHOD, example_counts, reference_label, with_stats  # noqa: E402
from fpt_core.summaries import (  # noqa: E402
    SPREAD,
    Table,
    baseline_note,
    cell_text,
    citation,
    completeness_note,
    data_note,
    data_sources,
    flags,
    marked,
    metric_values,
    other_setting,
    paper_entry,
    paper_text,
    task_title,
    write_tables,
)

BY = "val"
CHOSEN_ON = "best_val_acc"  # per cell: its best validation accuracy over its evaluations
REPORTED = "test_acc_at_best_val"  # per cell: the test accuracy at that evaluation
FINAL = "final_test_acc"
# Means closer than this (percentage points) are a tie: the same accuracies summed in another
# order differ in the last bits.
TIE = 1e-9
ROTHERMEL = "Rothermel et al. 2021 (arXiv 2107.12460)"


def selected_over(select: dict | None) -> str | None:
    """The field an ablation's `select:` chooses a value of, or None without one."""
    if not select:
        return None
    if select.get("by", BY) != BY:
        raise ValueError(f"select.by: {select['by']!r} is not allowed; only 'val' (a choice on the "
                         f"test split would report an optimistic test accuracy)")
    if not select.get("over"):
        raise ValueError("select: names no field to choose a value of (select.over)")
    return select["over"]


def value_text(value: Any) -> str:
    """A swept value as the tables and figure write it: 1e-3 for a learning rate, 0.1, 12."""
    if isinstance(value, (float, np.floating)) and value != 0 and not 0.1 <= abs(value) < 1e4:
        mantissa, exponent = f"{value:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return f"{value:g}" if isinstance(value, (float, np.floating)) else str(value)


def _spread(values: pd.Series) -> tuple[float, float, int]:
    values = 100 * values.astype(float).dropna()
    return (values.mean() if len(values) else math.nan,
            values.std(ddof=1) if len(values) > 1 else math.nan, len(values))


def sweep(rows: pd.DataFrame, over: str) -> pd.DataFrame:
    """Per (label, task, value of `over`): validation accuracy (best over evaluations), test
    accuracy at it and final test accuracy (a diverged run's best before diverging), each mean,
    std and count over seeds in percent; `seeds` the seeds the row ran on the task. Ordered by
    row, task, value. A missing cell has no value of `over` in the aggregate: it counts only in
    `seeds`."""
    missing = [c for c in (over, CHOSEN_ON, REPORTED) if c not in rows]
    if missing:
        raise ValueError(f"select: the aggregate has no {', '.join(missing)} column; its cells "
                         f"predate validation or {over!r} is not a cell field")
    seeds = rows.groupby(["label", "task"], sort=False)["seed"].nunique()
    final = metric_values(rows, FINAL)
    out = []
    for (label, task, value), group in rows.dropna(subset=[over]).groupby(
            ["label", "task", over], sort=False):
        entry = {"label": label, "task": task, "value": value,
                 "label_order": group["label_order"].iloc[0], "seeds": int(seeds[label, task]),
                 "diverged": int((group["status"] == "diverged").sum())}
        for name, values in (("val", group[CHOSEN_ON]), ("test", group[REPORTED]),
                             ("final", final[group.index])):
            entry[f"{name}_mean"], entry[f"{name}_std"], entry[f"{name}_n"] = _spread(values)
        out.append(entry)
    columns = ["label", "task", "value", "label_order", "seeds", "diverged"] + [
        f"{name}_{stat}" for name in ("val", "test", "final") for stat in ("mean", "std", "n")]
    table = pd.DataFrame(out, columns=columns)
    order = {task: i for i, task in enumerate(tasks_in_order(rows))}
    return table.sort_values(["label_order", "task", "value"], key=lambda c: c.map(order)
                             if c.name == "task" else c, kind="stable", ignore_index=True)


def choose(table: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(label, task) -> its choice: `value` (None: no value has a validation accuracy), the
    values `tied` with it (the smaller value wins a tie), and how many values had a validation
    accuracy (`scored`) of those the ablation swept on the task (`swept`)."""
    out = {}
    for (label, task), group in table.groupby(["label", "task"], sort=False):
        swept = table.loc[table["task"] == task, "value"].nunique()
        scored = group.dropna(subset=["val_mean"]).sort_values("value", kind="stable")
        if scored.empty:
            out[label, task] = {"value": None, "tied": (), "scored": 0, "swept": swept}
            continue
        best = scored["val_mean"].to_numpy()
        top = scored[best >= best.max() - TIE]["value"].tolist()
        out[label, task] = {"value": top[0], "tied": tuple(top[1:]), "scored": len(scored),
                            "swept": swept}
    return out


def selected_cells(rows: pd.DataFrame, over: str, choices: dict) -> pd.DataFrame:
    """The aggregate's rows at each (label, task)'s chosen value."""
    chosen = [(label, task) in choices and choices[label, task]["value"] == value
              for label, task, value in zip(rows["label"], rows["task"], rows[over])]
    return rows[np.array(chosen, dtype=bool)]


def selected_summary(rows: pd.DataFrame, over: str, choices: dict, reported,
                     reference: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(summary, selected cells): per (label, task) the chosen value and the test accuracy at
    best validation of its cells, mean ± std over seeds in percent, with stats.with_stats'
    interval and test against the reference row, both over the selected cells only."""
    picked = selected_cells(rows, over, choices)
    out = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        here = picked[(picked["label"] == label) & (picked["task"] == task)]
        choice = choices.get((label, task), {"value": None, "tied": (), "scored": 0, "swept": 0})
        mean, std, n = _spread(here[REPORTED])
        value, note = paper_entry(reported, group["experiment"].iloc[0], label, task)
        out.append({"label": label, "task": task, "label_order": group["label_order"].iloc[0],
                    **choice, "mean": mean, "std": std, "n": n,
                    "expected": group["seed"].nunique(),
                    "finished": int((group["status"] != "missing").sum()),
                    "diverged": int((here["status"] == "diverged").sum()),
                    "paper": value, "paper_note": note})
    summary = pd.DataFrame(out)
    values = picked[REPORTED].astype(float)
    return with_stats(summary, picked, values, example_counts(picked), reference), picked


def _chose(r: pd.Series) -> bool:
    """Whether a summary line has a chosen value (a column of values holds None as NaN)."""
    return not pd.isna(r["value"])


def choice_text(r: pd.Series) -> str:
    """The chosen value, with what qualifies it: a tie, a sweep with values not yet run."""
    if not _chose(r):
        return "–"
    notes = [f"tied with {', '.join(value_text(v) for v in r['tied'])}"] if r["tied"] else []
    if r["scored"] < r["swept"]:
        notes.append(f"{r['scored']} of {r['swept']} values run")
    return value_text(r["value"]) + (f" ({'; '.join(notes)})" if notes else "")


def selected_frame(summary: pd.DataFrame, labels: list[str], tasks: list[str], over: str,
                   reference: str, names: dict[str, str]) -> pd.DataFrame:
    """Rows are labels; per task the chosen value, its test accuracy (mean ± std), 95% interval,
    test against the reference, and the paper's number where the paper has any here."""
    paper = bool(summary["paper"].notna().any())
    header = ["row"]
    for task in tasks:
        header += [f"{task} {over}", f"{task} (ours)", f"{task} 95% interval",
                   f"{task} vs {reference}", *([f"{task} (paper)"] if paper else [])]
    body = []
    for label in labels:
        cells = [names.get(label, label)]
        for task in tasks:
            hit = summary[(summary["label"] == label) & (summary["task"] == task)]
            if hit.empty:
                cells += [""] * (4 + paper)
                continue
            r = hit.iloc[0]
            ours = ("no validation accuracy" if not _chose(r) and r["finished"]
                    else cell_text(r))
            cells += [choice_text(r), ours, r["interval"],
                      r["versus"] if isinstance(r.get("versus"), str) else "",
                      *([paper_text(r["paper"], r["paper_note"])] if paper else [])]
        body.append(cells)
    return pd.DataFrame(body, columns=header)


def _mean_text(r: pd.Series, name: str) -> str:
    if not r[f"{name}_n"]:
        return "–"
    spread = f" ± {r[f'{name}_std']:.1f}" if r[f"{name}_n"] > 1 else ""
    return f"{r[f'{name}_mean']:.1f}{spread}"


def sweep_frame(table: pd.DataFrame, summary: pd.DataFrame, labels: list[str],
                tasks: list[str], over: str, names: dict[str, str]) -> pd.DataFrame:
    """One line per (row, task, value) swept on the task, a value the row has no cell of as
    missing; `chosen` marks the value the selected table (`summary`) reports."""
    header = ["row", "task", over, "validation (best)", "test at best validation", "final test",
              "seeds", "chosen"]
    chosen = {(r["label"], r["task"]): r["value"] for _, r in summary.iterrows() if _chose(r)}
    ran = set(zip(summary["label"], summary["task"]))
    body = []
    for label, task in ((label, task) for label in labels for task in tasks):
        if (label, task) not in ran:
            continue
        here = table[(table["label"] == label) & (table["task"] == task)].set_index("value")
        for value in sorted(table.loc[table["task"] == task, "value"].unique()):
            if value not in here.index:
                body.append([names.get(label, label), task, value_text(value), "missing",
                             "", "", "", ""])
                continue
            r = here.loc[value]
            seeds = f"{r['test_n']}" + (f" of {r['seeds']}" if r["test_n"] < r["seeds"] else "")
            seeds += f" ({r['diverged']} diverged)" if r["diverged"] else ""
            body.append([names.get(label, label), task, value_text(value),
                         _mean_text(r, "val"), _mean_text(r, "test"), _mean_text(r, "final"),
                         seeds, "chosen" if chosen.get((label, task)) == value else ""])
    return pd.DataFrame(body, columns=header)


def _panels(n: int, width: float, height: float = 3.2):
    """Per task a bar facet in the upper rows and its sweep facet in the same place below."""
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, grid = plt.subplots(2 * rows, cols, figsize=(width * cols, 2 * height * rows + 1.2),
                             squeeze=False, layout="constrained")
    bars, sweeps = list(grid[:rows].flat), list(grid[rows:].flat)
    for ax in bars[n:] + sweeps[n:]:
        ax.set_visible(False)
    return fig, bars[:n], sweeps[:n]


def _selected_bars(ax, task: str, summary: pd.DataFrame, picked: pd.DataFrame,
                   labels: list[str], palette: dict, over: str, names: dict[str, str]) -> None:
    """One bar per row: the chosen value's test accuracy, its seeds as dots, the value beneath."""
    sub = summary[summary["task"] == task].set_index("label")
    here = [label for label in labels if label in sub.index]
    sub = sub.reindex(here)
    x = np.arange(len(here))
    ax.bar(x, sub["mean"].fillna(0).to_numpy(float), width=0.8,
           color=[palette[label] for label in here])
    for i, label in enumerate(here):
        seeds = 100 * picked.loc[(picked["label"] == label) & (picked["task"] == task),
                                 REPORTED].astype(float).dropna()
        ax.scatter(np.full(len(seeds), i), seeds, color="0.25", s=9, zorder=3,
                   label="seed" if len(seeds) else None)
    error_bars(ax, x, sub)
    paper_points(ax, x, sub["paper"].to_numpy(float), "paper", sub["paper_note"].to_numpy())
    ax.set_xlim(-0.5, len(here) - 0.5)  # keep the place of a row whose cells are missing
    chosen = {label: (f"{names.get(label, label)}\n{over} {value_text(r['value'])}"
                      if _chose(r) else f"{names.get(label, label)}\nno choice")
              for label, r in sub.iterrows()}
    tick_labels(ax, here, chosen)
    ax.set_xlabel("")
    ax.set_ylabel("test acc. at best val. (%)")
    ax.set_ylim(0, 105)


def _sweep_lines(ax, task: str, table: pd.DataFrame, choices: dict, labels: list[str],
                 palette: dict, over: str) -> None:
    """Validation (dashed) and test at best validation (solid) against the swept value per row,
    the chosen value circled: where the choice fell and what the test split would have chosen."""
    sub = table[table["task"] == task]
    values = sorted(sub["value"].unique())
    numeric = all(isinstance(v, (int, float, np.number)) for v in values)
    place = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    for label in labels:
        mine = sub[sub["label"] == label]
        if mine.empty:
            continue
        x = mine["value"].map(place).to_numpy(float)
        ax.plot(x, mine["val_mean"], color=palette[label], linestyle="--", marker="o",
                markersize=3, linewidth=1)
        ax.plot(x, mine["test_mean"], color=palette[label], linestyle="-", marker="s",
                markersize=3, linewidth=1.2, label=label)
        choice = choices.get((label, task), {}).get("value")
        if choice is not None:
            y = mine.loc[mine["value"] == choice, "test_mean"].iloc[0]
            ax.scatter([place[choice]], [y], s=90, facecolors="none", edgecolors=palette[label],
                       linewidths=1.5, zorder=4)
    ax.plot([], [], color="0.35", linestyle="--", marker="o", markersize=3,
            label="validation (best)")
    ax.plot([], [], color="0.35", linestyle="-", marker="s", markersize=3,
            label="test at best validation")
    ax.scatter([], [], s=90, facecolors="none", edgecolors="0.35",
               label=f"{over} chosen on validation")
    positive = numeric and values and min(values) > 0
    if positive and max(values) / min(values) >= 10:  # a decade or more apart: a log sweep
        ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks([place[v] for v in values], [value_text(v) for v in values])
    ax.set_xlabel(over)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    reference_lines(ax, task)
    axes_title(ax, f"{task}: sweep over {over}")


def draw_selected(a: Ablation) -> None:
    """The bars figure of an ablation with `select:`: per row and task the chosen value's test
    accuracy, the sweep beneath, and the selected table followed by the whole sweep's."""
    over, rows, reported = selected_over(a.select), a.rows, a.reported
    labels, tasks = labels_in_order(rows), tasks_in_order(rows)
    reference = reference_label(labels, a.reference)
    table = sweep(rows, over)
    choices = choose(table)
    summary, picked = selected_summary(rows, over, choices, reported, reference)
    summary = other_setting(summary, a.paper_notes)
    marks = flags(summary, a.paper_notes, labels)
    names, note, sources = marked(marks), completeness_note(rows), data_sources(rows)
    palette = dict(zip(labels, sns.color_palette("colorblind", len(labels))))
    fig, bars, sweeps = _panels(len(tasks), width=max(3.6, 0.7 * len(labels) + 1.2))
    for ax, task in zip(bars, tasks):
        _selected_bars(ax, task, summary, picked, labels, palette, over, names)
        reference_lines(ax, task)
        axes_title(ax, task_title(task, sources))
    for ax, task in zip(sweeps, tasks):
        _sweep_lines(ax, task, table, choices, labels, palette, over)
    figure_legend(fig, bars + sweeps, names)
    shown = bool(summary["paper"].notna().any())
    figure_title(fig, a.title, note, shown, reported, a.experiment, marks)
    save(fig, a.png)
    what = (f"Per row and task, the {over} chosen on validation, as {ROTHERMEL} tune the "
            f"learning rate: each run is early-stopped on its validation split (its best "
            f"validation accuracy over its evaluations), and the value of {over} whose runs have "
            f"the best mean validation accuracy over seeds is chosen; a tie goes to the smaller "
            f"value and is marked. Test accuracy (%) is each run's at its best validation "
            f"evaluation, for the chosen value: mean ± std over seeds, its 95% interval and its "
            f"difference from the reference row `{reference}` at that row's own chosen value. "
            f"Interval and test are over the chosen value's cells, given the choice (the choice "
            f"itself is not resampled). The next table lists the whole sweep. "
            f"{citation(reported, a.experiment, shown)} {METHOD}"
            + data_note(sources) + baseline_note(tasks) + f" {SPREAD}")
    sweep_what = (f"Every value of {over} swept, per row and task: the validation accuracy (each "
                  f"run's best over its evaluations), the test accuracy at that evaluation, and "
                  f"the final test accuracy (a diverged run's best before diverging), mean ± std "
                  f"over seeds (%). `chosen` marks the value the table above reports; a value "
                  f"with no finished cell of the row is missing.")
    write_tables(a.md, a.tex, [
        Table(a.title, what, selected_frame(summary, labels, tasks, over, reference, names),
              note, footnotes(marks)),
        Table(f"{a.title}: the sweep over {over}", sweep_what,
              sweep_frame(table, summary, labels, tasks, over, names), note)])
