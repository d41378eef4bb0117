"""How sure a table is: a 95% interval per row and task, and a test of each row against its
ablation's reference row.

The aggregate keeps each cell's accuracy and how many test examples it was scored on, not the
predictions themselves, so the interval is a two-level bootstrap whose inner level is
parametric: seeds are resampled with replacement, then each drawn seed's accuracy is redrawn as
Binomial(n_test, acc) / n_test, which is exactly the spread of a resample of its test examples
when each example is right or wrong. Differences between rows are t-tests over seeds.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
ALPHA = 0.05
RESAMPLES = 10_000
SEED = 0  # every row draws the same stream: a redraw of the same aggregate gives the same table
SIZE_COLUMNS = ("test_examples", "eval_size")  # first known wins: examples scored, then asked for
ONE_SEED = "no test possible (1 seed)"
NO_SPREAD = "no test possible (no spread)"
PAIRED, WELCH, REFERENCE = "paired t", "Welch t", "reference"

METHOD = (
    f"{LEVEL:.0%} interval: a two-level bootstrap ({RESAMPLES} resamples, fixed RNG seed {SEED}) "
    "that resamples the row's seeds with replacement, then redraws each drawn seed's accuracy as "
    "Binomial(n_test, acc) / n_test over its n_test test examples (an example with several "
    "predictions, as on the bit tasks, counts once, which can only widen the interval); "
    "'seeds only' marks a row whose number of test examples is unknown. "
    f"vs: the difference in mean accuracy (points) from the reference row, with a paired t-test "
    "over seeds (scipy.stats.ttest_rel) where both rows ran the same seeds, else Welch's t-test "
    f"(scipy.stats.ttest_ind, equal_var=False); n.s.: not distinguishable at {ALPHA:.0%}."
)


def example_counts(rows: pd.DataFrame) -> pd.Series:
    """Per aggregate row, the number of test examples its accuracy was scored on: the
    `test_examples` column where the aggregate has it, else the cell's `eval_size` (NaN: neither
    is known, e.g. an eval_size of None, the whole split)."""
    sizes = pd.Series(np.nan, index=rows.index)
    for column in reversed(SIZE_COLUMNS):
        if column in rows:
            known = pd.to_numeric(rows[column], errors="coerce").astype(float)
            sizes = known.where(known > 0, sizes)
    return sizes


def interval(acc: np.ndarray, n_test: np.ndarray | None) -> tuple[float, float]:
    """The LEVEL interval of the mean accuracy (fractions) over seeds; `n_test` per seed, or None
    for a bootstrap over seeds only. NaN where there is nothing to resample (no value, or one
    seed of unknown test size)."""
    acc = np.asarray(acc, dtype=float)
    if len(acc) == 0 or (n_test is None and len(acc) == 1):
        return math.nan, math.nan
    rng = np.random.default_rng(SEED)
    picks = rng.integers(len(acc), size=(RESAMPLES, len(acc)))
    drawn = acc[picks]
    if n_test is not None:
        n = np.asarray(n_test, dtype=np.int64)[picks]
        drawn = rng.binomial(n, drawn) / n
    low, high = np.quantile(drawn.mean(axis=1), [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(low), float(high)


def intervals(rows: pd.DataFrame, values: pd.Series, sizes: pd.Series | None) -> pd.DataFrame:
    """Per (label, task): the interval in percent and whether it covers seeds only.

    `values` are the rows' accuracies (fractions, NaN for none); `sizes` their test examples
    (example_counts) or None where no size applies (train accuracy). A row bootstraps over test
    examples only when every seed's size is known."""
    sizes = sizes if sizes is not None else pd.Series(np.nan, index=rows.index)
    data = rows[["label", "task"]].assign(value=values, size=sizes).dropna(subset=["value"])
    out = []
    for (label, task), group in data.groupby(["label", "task"], sort=False):
        exact = bool(np.isfinite(group["size"]).all())
        low, high = interval(group["value"].to_numpy(), group["size"].to_numpy() if exact else None)
        out.append({"label": label, "task": task, "ci_low": 100 * low, "ci_high": 100 * high,
                    "seeds_only": not exact})
    return pd.DataFrame(out, columns=["label", "task", "ci_low", "ci_high", "seeds_only"])


def compare(row: pd.Series, reference: pd.Series) -> tuple[float, float, str]:
    """(mean of row - mean of reference, p-value, test) for two rows' values indexed by seed; the
    p-value is NaN, and the test says why, where no test is possible."""
    row, reference = row.dropna(), reference.dropna()
    diff = row.mean() - reference.mean()
    if min(len(row), len(reference)) < 2:
        return diff, math.nan, ONE_SEED
    same_seeds = (row.index.is_unique and reference.index.is_unique
                  and set(row.index) == set(reference.index))
    if same_seeds:
        reference = reference.reindex(row.index)
        if np.ptp(row.to_numpy() - reference.to_numpy()) == 0:
            return diff, math.nan, NO_SPREAD
        return diff, float(stats.ttest_rel(row, reference).pvalue), PAIRED
    if np.ptp(row.to_numpy()) == 0 and np.ptp(reference.to_numpy()) == 0:
        return diff, math.nan, NO_SPREAD
    return diff, float(stats.ttest_ind(row, reference, equal_var=False).pvalue), WELCH


def comparisons(rows: pd.DataFrame, values: pd.Series, reference: str) -> pd.DataFrame:
    """Per (label, task) that the reference row also ran: compare() against the reference, in
    percentage points (the reference's own line says so)."""
    seeds = rows["seed"] if "seed" in rows else pd.Series(rows.index, index=rows.index)
    data = rows[["label", "task"]].assign(seed=seeds, value=100 * values).dropna(subset=["value"])
    out = []
    for task, of_task in data.groupby("task", sort=False):
        ref = of_task[of_task["label"] == reference]
        if ref.empty:
            continue
        for label, group in of_task.groupby("label", sort=False):
            if label == reference:
                diff, p, test = 0.0, math.nan, REFERENCE
            else:
                diff, p, test = compare(group.set_index("seed")["value"],
                                        ref.set_index("seed")["value"])
            out.append({"label": label, "task": task, "diff": diff, "p": p, "test": test})
    return pd.DataFrame(out, columns=["label", "task", "diff", "p", "test"])


def reference_label(labels: list[str], reference: str | None) -> str:
    """The row every other row is tested against: `reference`, or the ablation's first row."""
    if reference is None:
        return labels[0]
    if reference not in labels:
        raise ValueError(f"reference: {reference!r} is not a row of this ablation; "
                         f"rows: {', '.join(labels)}")
    return reference


def p_text(p: float) -> str:
    return "p<0.001" if p < 0.001 else f"p={p:.2g}"


def interval_text(r: pd.Series, digits: int = 1) -> str:
    if pd.isna(r.get("ci_low")) or pd.isna(r.get("ci_high")):
        return "–"
    text = f"[{r['ci_low']:.{digits}f}, {r['ci_high']:.{digits}f}]"
    return text + (" seeds only" if r["seeds_only"] else "")


def versus_text(r: pd.Series, digits: int = 1) -> str:
    test = r.get("test")
    if not isinstance(test, str):
        return ""
    if test == REFERENCE:
        return REFERENCE
    diff = f"{r['diff']:+.{digits}f}"
    if pd.isna(r["p"]):
        return f"{diff}, {test}"
    return f"{diff} ({p_text(r['p'])}, {test}{', n.s.' if r['p'] >= ALPHA else ''})"


def with_stats(summary: pd.DataFrame, rows: pd.DataFrame, values: pd.Series,
               sizes: pd.Series | None, reference: str | None, digits: int = 1) -> pd.DataFrame:
    """The summary with an `interval` column and, against `reference` (None: none), a `versus`
    column, both as the table prints them; `ci_low`/`ci_high` stay numbers for the figure."""
    found = summary.merge(intervals(rows, values, sizes), on=["label", "task"], how="left")
    found["interval"] = [interval_text(r, digits) for _, r in found.iterrows()]
    if reference is not None:
        found = found.merge(comparisons(rows, values, reference), on=["label", "task"], how="left")
        found["versus"] = [versus_text(r, digits) for _, r in found.iterrows()]
    return found
