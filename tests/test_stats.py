"""The tables' 95% intervals and tests, on hand-made aggregates of known accuracies and sizes."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from fpt_core.stats import (
    NO_SPREAD,
    ONE_SEED,
    PAIRED,
    WELCH,
    compare,
    comparisons,
    example_counts,
    interval,
    intervals,
    reference_label,
    versus_text,
    with_stats,
)


def aggregate(cells):
    """cells = [(label, task, seed, accuracy, eval_size)]."""
    return pd.DataFrame([{"label": label, "task": task, "seed": seed, "final_test_acc": acc,
                          "eval_size": size} for label, task, seed, acc, size in cells])


def only(frame, label, task="t"):
    return frame[(frame["label"] == label) & (frame["task"] == task)].iloc[0]


def width(rows):
    row = intervals(rows, rows["final_test_acc"], example_counts(rows)).iloc[0]
    assert row["ci_low"] <= 100 * rows["final_test_acc"].mean() <= row["ci_high"]
    return row["ci_high"] - row["ci_low"]


def test_the_interval_contains_the_mean_and_shrinks_with_more_test_examples_and_seeds():
    accs = [0.6, 0.7]
    small = width(aggregate([("a", "t", s, acc, 100) for s, acc in enumerate(accs)]))
    more_examples = width(aggregate([("a", "t", s, acc, 10_000) for s, acc in enumerate(accs)]))
    more_seeds = width(aggregate([("a", "t", s, accs[s % 2], 100) for s in range(8)]))
    assert more_examples < small and more_seeds < small


def test_one_seed_of_known_size_gets_the_binomial_interval_of_its_test_examples():
    low, high = interval(np.array([0.5]), np.array([100]))
    assert (low, high) == (scipy_stats.binom.ppf(0.025, 100, 0.5) / 100,
                           scipy_stats.binom.ppf(0.975, 100, 0.5) / 100)
    assert interval(np.array([0.5, 0.7]), np.array([100, 100])) == \
        interval(np.array([0.5, 0.7]), np.array([100, 100]))  # a fixed seed: the same table again


def test_test_examples_win_over_eval_size_and_an_unknown_size_bootstraps_over_seeds_only():
    rows = aggregate([("a", "t", 0, 0.5, 100), ("a", "t", 1, 0.6, None), ("a", "t", 2, 0.7, None)])
    counts = example_counts(rows).tolist()
    assert counts[0] == 100 and math.isnan(counts[1])
    rows["test_examples"] = [50, 80, None]
    counts = example_counts(rows).tolist()
    assert counts[:2] == [50, 80] and math.isnan(counts[2])
    found = with_stats(pd.DataFrame({"label": ["a"], "task": ["t"]}), rows,
                       rows["final_test_acc"], example_counts(rows), None)
    assert found["interval"].iloc[0].endswith("seeds only") and bool(found["seeds_only"].iloc[0])
    one = aggregate([("a", "t", 0, 0.5, None)])
    assert intervals(one, one["final_test_acc"], example_counts(one))["ci_low"].isna().all()


def test_same_seeds_are_paired_and_different_seeds_get_welch_with_scipys_p_values():
    a, b = pd.Series([60.0, 72.0, 65.0]), pd.Series([50.0, 55.0, 58.0])
    diff, p, test = compare(a, b)
    assert test == PAIRED and p == scipy_stats.ttest_rel(a, b).pvalue
    assert diff == pytest.approx(a.mean() - b.mean())
    shifted = pd.Series(b.to_numpy(), index=[3, 4, 5])
    diff, p, test = compare(a, shifted)
    assert test == WELCH and p == scipy_stats.ttest_ind(a, b, equal_var=False).pvalue
    reordered = pd.Series([55.0, 58.0, 50.0], index=[1, 2, 0])  # the same seeds, another order
    assert compare(a, reordered)[1] == scipy_stats.ttest_rel(a, b).pvalue


def test_one_seed_or_no_spread_allows_no_test():
    diff, p, test = compare(pd.Series([60.0]), pd.Series([50.0, 52.0]))
    assert math.isnan(p) and test == ONE_SEED and diff == 9.0
    assert compare(pd.Series([60.0, 70.0]), pd.Series([50.0, 60.0]))[2] == NO_SPREAD  # +10, +10
    rows = aggregate([("ref", "t", 0, 0.9, 100), ("ref", "t", 1, 0.8, 100),
                      ("one", "t", 0, 0.5, 100)])
    found = comparisons(rows, rows["final_test_acc"], "ref")
    assert versus_text(only(found, "one")) == f"-35.0, {ONE_SEED}"


def test_each_row_is_tested_against_the_reference_on_the_tasks_the_reference_ran():
    rows = aggregate([("ref", "t", 0, 0.50, 100), ("ref", "t", 1, 0.52, 100),
                      ("ref", "t", 2, 0.51, 100), ("b", "t", 0, 0.80, 100),
                      ("b", "t", 1, 0.90, 100), ("b", "t", 2, 0.83, 100),
                      ("b", "u", 0, 0.9, 100), ("b", "u", 1, 0.9, 100)])
    summary = pd.DataFrame({"label": ["ref", "b", "b"], "task": ["t", "t", "u"]})
    found = with_stats(summary, rows, rows["final_test_acc"], example_counts(rows), "ref")
    p = scipy_stats.ttest_rel([80, 90, 83], [50, 52, 51]).pvalue
    assert only(found, "b")["versus"] == f"+33.3 (p={p:.2g}, paired t)" and 0.001 < p < 0.05
    assert only(found, "ref")["versus"] == "reference"
    assert only(found, "b", "u")["versus"] == ""  # the reference did not run task u


def test_a_difference_not_distinguishable_at_5_percent_says_so():
    row = pd.Series({"diff": 2.04, "p": 0.41, "test": WELCH})
    assert versus_text(row) == "+2.0 (p=0.41, Welch t, n.s.)"
    assert versus_text(row.replace({0.41: 0.0004})) == "+2.0 (p<0.001, Welch t)"


def test_the_reference_defaults_to_the_first_row_and_must_be_a_row():
    assert reference_label(["a", "b"], None) == "a"
    assert reference_label(["a", "b"], "b") == "b"
    with pytest.raises(ValueError, match="'c' is not a row of this ablation; rows: a, b"):
        reference_label(["a", "b"], "c")
