"""What every figure of an ablation is drawn with: its rows and tasks in order, facets, the
paper's numbers as diamonds, 95% intervals as error bars, chance and trivial-baseline lines, one
shared legend, a title wrapped to the figure's width, and a PNG that depends only on what it
shows."""
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

from fpt_core.atomic import atomic_path  # noqa: E402
from fpt_core.summaries import PAPER_SHORT, baseline, chance, comparable, paper_tables  # noqa: E402

PAPER_COLOR = "black"
# PNG metadata names the matplotlib version; without it a figure depends only on what it shows.
PNG_METADATA = {"Software": None}


def ablation_rows(table: pd.DataFrame, ablation: str) -> pd.DataFrame:
    rows = table[table["ablation"] == ablation]
    if rows.empty:
        raise ValueError(f"ablation {ablation!r} is not in the aggregate; "
                         f"present: {', '.join(sorted(table['ablation'].unique()))}")
    return rows


def labels_in_order(rows: pd.DataFrame) -> list[str]:
    return list(rows.sort_values("label_order", kind="stable")["label"].drop_duplicates())


def tasks_in_order(rows: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(rows["task"].dropna())) or ["?"]


def paper_points(ax, x: np.ndarray, values: np.ndarray, label: str | None,
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


def error_bars(ax, x: np.ndarray, sub: pd.DataFrame) -> None:
    """Each row's 95% interval (stats.with_stats) as an error bar on its mean."""
    known = sub["ci_low"].notna().to_numpy()
    if not known.any():
        return
    mean, low, high = (sub[c].to_numpy(float)[known] for c in ("mean", "ci_low", "ci_high"))
    ax.errorbar(x[known], mean, yerr=[np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)],
                fmt="none", ecolor="black", elinewidth=1.2, capsize=4, zorder=4,
                label="95% interval")


def reference_lines(ax, task: str) -> None:
    """Chance, and where a trivial strategy does better (bit-memory), that strategy's score."""
    level = chance(task)
    if level is not None:
        ax.axhline(level, color="grey", linestyle=":", linewidth=1, label="chance", zorder=1)
    trivial = baseline(task)
    if trivial is not None:
        ax.axhline(trivial[0], color="firebrick", linestyle="--", linewidth=1, zorder=1,
                   label=f"{trivial[1]} ({trivial[0]:.0f}%)")


def figure_legend(fig, axes, names: dict[str, str] | None = None) -> None:
    """One legend below the facets for what every facet shares (hues, the paper's diamonds, the
    reference lines), each entry once, row names with their footnote markers."""
    seen = {}
    for ax in axes:
        legend = ax.get_legend()
        if legend is not None:  # seaborn's hue legend: its handles are not the axes' artists
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                seen.setdefault(text.get_text(), handle)
            legend.remove()
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), [(names or {}).get(label, label) for label in seen],
                   loc="outside lower center", ncol=min(len(seen), 4), fontsize="small")


def facets(n: int, width: float = 3.6, height: float = 3.2):
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.9), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _wrap(text: str, chars: int) -> str:
    return "\n".join(textwrap.fill(line, max(chars, 8)) for line in text.split("\n"))


def _fit(fig, artist, text: str) -> None:
    """Wrap a figure-wide text to the figure's width, measured as drawn, so it never clips."""
    limit = 0.96 * fig.bbox.width
    chars = int(limit / (0.5 * artist.get_fontsize() * fig.dpi / 72))
    renderer = fig.canvas.get_renderer()
    while True:
        artist.set_text(_wrap(text, chars))
        if chars <= 8 or artist.get_window_extent(renderer).width <= limit:
            return
        chars -= 2


def figure_title(fig, title: str, note: str, has_paper: bool, reported, experiment: str = "",
                 marks: dict[str, tuple[str, str]] | None = None) -> None:
    """The title, where the paper's numbers come from, and each flagged row's footnote."""
    lines = [title + (f"  [{note}]" if note else "")]
    if reported is None:
        lines.append("(paper numbers unavailable: reported.csv not found)")
    elif not has_paper:
        tables = paper_tables(reported, experiment)
        lines.append(f"(none of the paper's {tables} numbers match these rows)" if tables
                     else "(the paper reports no numbers for this experiment)")
    else:
        lines.append(f"◆ {PAPER_SHORT}, {paper_tables(reported, experiment)}")
    lines += footnotes(marks or {})
    _fit(fig, fig.suptitle("", color="firebrick" if note else "black"), "\n".join(lines))


def footnotes(marks: dict[str, tuple[str, str]]) -> tuple[str, ...]:
    """The footnotes of the rows summaries.flags marked, in the order of the rows."""
    return tuple(text for _, text in marks.values())


def axes_title(ax, text: str) -> None:
    chars = int(ax.get_window_extent().width / 6)  # ~6 px per character at the facet font size
    ax.set_title(textwrap.fill(text, max(chars, 12)))


def tick_labels(ax, here: list[str], names: dict[str, str]) -> None:
    ax.set_xticks(np.arange(len(here)), [names.get(label, label) for label in here],
                  rotation=35, ha="right")


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
    reference: str | None = None  # the row the others are tested against; None: the first
    tex: Path | None = None  # the same tables as LaTeX
    select: dict | None = None  # {"over": field, "by": "val"}: one value per row, chosen on val

    @property
    def experiment(self) -> str:
        return self.rows["experiment"].iloc[0]


def save(fig, png: Path) -> None:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    with atomic_path(Path(png)) as tmp:
        fig.savefig(tmp, dpi=110, format="png", metadata=PNG_METADATA)
    plt.close(fig)
