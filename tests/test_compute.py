"""The study's compute table: every trained cell's wall time, shared cells counted once overall."""
import re

import pandas as pd
import pytest

from fpt_core.compute import TOTAL, compute_table, compute_title, draw_compute


def member(cell, ablation, task, status="finished", minutes=0.0, device="cpu"):
    return {"cell_id": cell, "ablation": ablation, "task": task, "status": status,
            "wall_time_s": minutes * 60 if status != "missing" else float("nan"),
            "device": device if status != "missing" else None}


AGGREGATE = pd.DataFrame([
    member("a", "headline", "bit-xor", minutes=30),
    member("a", "headline", "bit-xor", minutes=30),  # the same cell under a second row label
    member("b", "headline", "bit-xor", minutes=90, device="cuda (NVIDIA A100)"),
    member("c", "headline", "mnist", minutes=60),
    member("a", "output-only", "bit-xor", minutes=30),  # shared with headline
    member("d", "output-only", "mnist", status="diverged", minutes=6),
    member("e", "output-only", "mnist", status="missing"),
])


def line(compute, ablation, task):
    return compute[(compute["ablation"] == ablation) & (compute["task"] == task)].iloc[0]


def test_hours_per_ablation_and_task_count_each_cell_once_there():
    compute = compute_table(AGGREGATE)
    xor = line(compute, "headline", "bit-xor")
    assert (xor["cells"], xor["missing"]) == (2, 0)
    assert xor["hours"] == pytest.approx(2.0)
    assert (xor["median_min"], xor["longest_min"]) == (60, 90)
    assert xor["devices"] == "cpu, cuda (NVIDIA A100)"
    assert line(compute, "headline", "all")["hours"] == pytest.approx(3.0)


def test_a_diverged_cell_counts_and_a_missing_one_is_named_not_timed():
    mnist = line(compute_table(AGGREGATE), "output-only", "mnist")
    assert (mnist["cells"], mnist["missing"]) == (1, 1)
    assert mnist["hours"] == pytest.approx(0.1)


def test_the_study_total_counts_a_shared_cell_once():
    total = line(compute_table(AGGREGATE), TOTAL, "all")
    assert (total["cells"], total["missing"]) == (4, 1)  # a, b, c, d trained; e missing
    assert total["hours"] == pytest.approx((30 + 90 + 60 + 6) / 60)
    per_ablation = compute_table(AGGREGATE).query("task == 'all' and ablation != @TOTAL")
    assert per_ablation["hours"].sum() == pytest.approx(total["hours"] + 0.5)  # a twice


def test_the_table_and_figure_are_written(tmp_path):
    AGGREGATE.to_parquet(tmp_path / "aggregate.parquet")
    draw_compute(tmp_path / "aggregate.parquet", tmp_path / "c.png", tmp_path / "c.md", "t")
    md = (tmp_path / "c.md").read_text()
    assert md.startswith("# t\n") and "| whole study" in md and "3.10" in md
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_the_title_is_the_study_name_in_the_pipelines_words(tmp_path):
    AGGREGATE.to_parquet(tmp_path / "aggregate.parquet")
    draw_compute(tmp_path / "aggregate.parquet", tmp_path / "c.png", tmp_path / "c.md",
                 study="default")
    assert (tmp_path / "c.md").read_text().startswith("# compute of the default study\n")
    assert compute_title("paper") == "compute of the paper study"
    with pytest.raises(TypeError, match="give the study's name"):
        draw_compute(tmp_path / "aggregate.parquet", tmp_path / "c.png", tmp_path / "c.md")


def test_a_redraw_from_the_same_aggregate_gives_the_same_bytes(tmp_path):
    AGGREGATE.to_parquet(tmp_path / "aggregate.parquet")
    drawn = []
    for attempt in range(2):
        draw_compute(tmp_path / "aggregate.parquet", tmp_path / "c.png", tmp_path / "c.md",
                     study="default", tex=tmp_path / "c.tex")
        drawn.append([(tmp_path / f"c.{ext}").read_bytes() for ext in ("md", "png", "tex")])
    assert drawn[0] == drawn[1]


def test_the_latex_table_holds_the_markdowns_numbers(tmp_path):
    AGGREGATE.to_parquet(tmp_path / "aggregate.parquet")
    draw_compute(tmp_path / "aggregate.parquet", tmp_path / "c.png", tmp_path / "c.md",
                 study="my_study", tex=tmp_path / "c.tex")
    latex, md = (tmp_path / "c.tex").read_text(), (tmp_path / "c.md").read_text()
    assert r"\toprule" in latex and r"compute of the my\_study study" in latex
    body = latex.split(r"\midrule")[1]
    numbers = lambda text: sorted(re.findall(r"\d+\.\d+", text))
    assert numbers(body) == numbers(md.split("\n\n")[-1]) and "3.10" in body
