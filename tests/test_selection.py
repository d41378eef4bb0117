"""An ablation that sweeps the learning rate and selects per row on validation accuracy
(Rothermel et al. 2021): the chosen value's test accuracy is reported, its interval and test
against the reference row come from the chosen cells, and the whole sweep stays in the tables."""
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

import fpt_core.selection as selection
from fpt_core.figures import draw_ablation
from fpt_core.selection import choose, selected_over, sweep, value_text
from fpt_core.stats import interval

SELECT = {"over": "lr", "by": "val"}
LRS = (1e-4, 1e-3, 1e-2)
# (label, lr) -> per seed (best validation accuracy, test accuracy at it). fpt's best test lr
# (1e-2) is not its best validation lr (1e-3); full's validation ties between 1e-4 and 1e-3.
SWEEP = {
    ("fpt", 1e-4): [(0.60, 0.58), (0.62, 0.60)],
    ("fpt", 1e-3): [(0.80, 0.70), (0.82, 0.74)],
    ("fpt", 1e-2): [(0.70, 0.90), (0.72, 0.92)],
    ("full", 1e-4): [(0.90, 0.85), (0.90, 0.87)],
    ("full", 1e-3): [(0.90, 0.95), (0.90, 0.95)],
    ("full", 1e-2): [(0.50, 0.50), (0.50, 0.50)],
}


def aggregate(sweep=SWEEP, task="bit-xor", missing=()):
    """Aggregate rows of ablation tuned-lr; `missing` (label, lr) pairs have no results, and as
    in a partial aggregate their cell fields (lr) are unknown."""
    labels = list(dict.fromkeys(label for label, _ in sweep))
    rows = []
    for (label, lr), seeds in sweep.items():
        for seed, (val, test) in enumerate(seeds):
            gone = (label, lr) in missing
            rows.append({
                "cell_id": f"{label}-{lr}-{task}-{seed}", "ablation": "tuned-lr",
                "experiment": "tuned-lr", "label": label, "label_order": labels.index(label),
                "task": task, "seed": seed, "lr": None if gone else lr,
                "eval_size": None if gone else 100, "status": "missing" if gone else "finished",
                "best_val_acc": None if gone else val,
                "test_acc_at_best_val": None if gone else test,
                "final_test_acc": None if gone else test - 0.02,
                "best_test_acc": None if gone else test,
            })
    return pd.DataFrame(rows)


def draw(tmp_path, table, **options):
    table_path, curves_path = tmp_path / "aggregate.parquet", tmp_path / "curves.parquet"
    table.to_parquet(table_path)
    pd.DataFrame(columns=["cell_id", "step", "test_acc"]).to_parquet(curves_path)
    options = {"kind": "bars", "select": SELECT, **options}
    draw_ablation(table_path, curves_path, "tuned-lr", title="tuned lr", metric="final_test_acc",
                  reported_path=None, png=tmp_path / "tuned-lr.png", md=tmp_path / "tuned-lr.md",
                  tex=tmp_path / "tuned-lr.tex", **options)
    return (tmp_path / "tuned-lr.md").read_text()


def split(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def numbers(text):
    """Every number of a text, 1e-3 whole, sorted: what two renderings of a table must share."""
    return sorted(re.findall(r"-?\d+\.?\d*(?:e-?\d+)?", text))


def tables(text):
    """Every Markdown table of `text` as a list of {column: cell}, padding stripped."""
    found = []
    for block in re.findall(r"(?:^\|.*\|$\n?)+", text, flags=re.MULTILINE):
        header, _, *body = [split(line) for line in block.strip().splitlines()]
        found.append([dict(zip(header, row)) for row in body])
    return found


def by_row(table):
    return {line["row"]: line for line in table}


def test_the_selected_row_reports_the_test_accuracy_of_the_value_chosen_on_validation(tmp_path):
    selected = by_row(tables(draw(tmp_path, aggregate()))[0])
    fpt, full = selected["fpt"], selected["full"]
    assert fpt["bit-xor lr"] == "1e-3"  # not 1e-2, whose test accuracy (91%) is the best
    assert fpt["bit-xor (ours)"] == "72.0 ± 2.8 (n=2)"
    assert full["bit-xor lr"] == "1e-4 (tied with 1e-3)"  # the smaller value wins a tie
    assert full["bit-xor (ours)"] == "86.0 ± 1.4 (n=2)"


def test_interval_and_test_against_the_reference_are_computed_on_the_chosen_cells(tmp_path):
    selected = by_row(tables(draw(tmp_path, aggregate()))[0])
    low, high = interval(np.array([0.70, 0.74]), np.array([100, 100]))
    assert selected["fpt"]["bit-xor 95% interval"] == f"[{100 * low:.1f}, {100 * high:.1f}]"
    p = scipy_stats.ttest_rel([85, 87], [70, 74]).pvalue  # full at 1e-4 vs fpt at 1e-3, by seed
    assert selected["full"]["bit-xor vs fpt"] == f"+14.0 (p={p:.2g}, paired t)" and p < 0.05
    assert selected["fpt"]["bit-xor vs fpt"] == "reference"
    selected = by_row(tables(draw(tmp_path, aggregate(), reference="full"))[0])
    assert selected["fpt"]["bit-xor vs full"].startswith("-14.0 (")


def test_the_sweep_table_lists_every_value_and_marks_the_chosen_one(tmp_path):
    md = draw(tmp_path, aggregate())
    lines = tables(md)[1]
    assert [(line["row"], line["lr"]) for line in lines] == [
        (label, value_text(lr)) for label in ("fpt", "full") for lr in LRS]
    fpt = {line["lr"]: line for line in lines if line["row"] == "fpt"}
    assert fpt["1e-2"] == {"row": "fpt", "task": "bit-xor", "lr": "1e-2",
                           "validation (best)": "71.0 ± 1.4", "test at best validation": "91.0 ± 1.4",
                           "final test": "89.0 ± 1.4", "seeds": "2", "chosen": ""}
    assert fpt["1e-3"]["chosen"] == "chosen" and fpt["1e-4"]["chosen"] == ""
    assert [line["chosen"] for line in lines if line["row"] == "full"] == ["chosen", "", ""]
    assert "a tie goes to the smaller value" in md and "arXiv 2107.12460" in md


def test_a_partial_sweep_chooses_among_the_values_run_and_says_so(tmp_path):
    md = draw(tmp_path, aggregate(missing={("fpt", 1e-3)}))
    selected, lines = by_row(tables(md)[0]), tables(md)[1]
    assert selected["fpt"]["bit-xor lr"] == "1e-2 (2 of 3 values run)"
    assert selected["fpt"]["bit-xor (ours)"] == "91.0 ± 1.4 (n=2)"
    assert [line["validation (best)"] for line in lines if line["row"] == "fpt"] == \
        ["61.0 ± 1.4", "missing", "71.0 ± 1.4"]
    assert "**partial: 2 of 12 cells missing**" in md


def test_a_row_with_no_cell_yet_is_missing_in_both_tables(tmp_path):
    md = draw(tmp_path, aggregate(missing={("fpt", lr) for lr in LRS}))
    selected, lines = by_row(tables(md)[0]), tables(md)[1]
    assert (selected["fpt"]["bit-xor lr"], selected["fpt"]["bit-xor (ours)"]) == ("–", "missing")
    assert selected["full"]["bit-xor vs fpt"] == ""  # no reference cell to test against
    assert [(line["lr"], line["validation (best)"]) for line in lines if line["row"] == "fpt"] == \
        [("1e-4", "missing"), ("1e-3", "missing"), ("1e-2", "missing")]


def test_a_choice_on_anything_but_validation_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^select.by: 'test' is not allowed; only 'val'"):
        draw(tmp_path, aggregate(), select={"over": "lr", "by": "test"})
    with pytest.raises(ValueError, match="select.by: 'test'"):
        selected_over({"over": "lr", "by": "test"})
    with pytest.raises(ValueError, match="only the bars figure selects over lr"):
        draw(tmp_path, aggregate(), kind="curves")
    assert selected_over({"over": "lr"}) == "lr" and selected_over(None) is None


def test_choose_picks_the_best_mean_validation_and_the_smaller_value_on_a_tie():
    choices = choose(sweep(aggregate(), "lr"))
    assert choices["fpt", "bit-xor"] == {"value": 1e-3, "tied": (), "scored": 3, "swept": 3}
    assert choices["full", "bit-xor"]["value"] == 1e-4
    assert choices["full", "bit-xor"]["tied"] == (1e-3,)


def test_values_are_written_short():
    assert [value_text(v) for v in (1e-4, 2.5e-4, 1e-2, 0.1, 12, 12.0, "gpt2")] == \
        ["1e-4", "2.5e-4", "1e-2", "0.1", "12", "12", "gpt2"]


def test_the_figure_names_each_chosen_value_and_draws_the_sweep_on_a_log_axis(tmp_path,
                                                                              monkeypatch):
    drawn = []
    monkeypatch.setattr(selection, "save", lambda fig, png: drawn.append(fig))
    draw(tmp_path, aggregate())
    bars, sweep_axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    assert [t.get_text() for t in bars.get_xticklabels()] == ["fpt\nlr 1e-3",
                                                               "full\nlr 1e-4"]
    assert [round(b.get_height(), 6) for b in bars.patches] == [72.0, 86.0]
    assert sweep_axes.get_xscale() == "log"
    assert [t.get_text() for t in sweep_axes.get_xticklabels()] == ["1e-4", "1e-3", "1e-2"]


def test_the_latex_tables_hold_the_same_numbers_as_the_markdown(tmp_path):
    md = draw(tmp_path, aggregate())
    latex = (tmp_path / "tuned-lr.tex").read_text()
    bodies = re.findall(r"\\midrule\n(.*?)\\bottomrule", latex, flags=re.DOTALL)
    assert len(bodies) == 2
    for body, table in zip(bodies, tables(md)):
        assert numbers(body) == numbers(" ".join(c for line in table for c in line.values()))


def test_redrawing_the_same_sweep_gives_the_same_bytes(tmp_path):
    outputs = []
    for _ in range(2):
        draw(tmp_path, aggregate())
        outputs.append([(tmp_path / f"tuned-lr.{ext}").read_bytes() for ext in ("md", "tex", "png")])
    assert outputs[0] == outputs[1]
