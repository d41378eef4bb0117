"""The CKA stage: which models a config's `cka:` block builds, their table, and its figure."""
import copy
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from fpt_core.cell import make_cell
from fpt_core.cka import draw_cka_study, last_block_matrix, noise_floor, same_block
from fpt_core.cka_stage import AFTER, BEFORE, COLUMNS, built_models, cka_models, task_table
from fpt_core.errors import ConfigError
from fpt_core.grid import build
from fpt_core.schema import check
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def default():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    return cfg, Study.from_config(cfg)


def tiny_config(**cka):
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 2, "eval_every": 2,
                     "batch_size": 4, "eval_size": 8},
        "axes": {"task": ["bit-xor"], "seed": [0]},
        "pretrain": {"xor-tiny": {"task": "bit-xor", "trainable": "all", "steps": 2}},
        "ablations": {"headline": {"rows": {"fpt": {}}}},
        "cka": {"tasks": ["bit-xor"], "backbones": {"a": {}, "b": {"seed": 1}}, **cka},
    }


# ---------------------------------------------------------------- resolving the models


def test_default_config_compares_every_modality_on_mnist(default):
    cfg, study = default
    grid = study.grid
    models = study.cka_models()["mnist"]
    assert list(models) == ["language", "vision", "bit-memory", "random", "statistics"]
    assert models["language"].backbone == "minilm-l6" and models["language"].init == "pretrained"
    assert models["vision"].backbone == grid.pretrained_dir("vision-minilm")
    assert models["bit-memory"].backbone == grid.pretrained_dir("bitmem-minilm")
    assert models["random"].init == "random" and models["statistics"].init == "statistics"
    assert {m.task for m in models.values()} == {"mnist"}
    assert {m.seed for m in models.values()} == {0}
    assert {m.eval_size for m in models.values()} == {cfg["per_task"]["mnist"]["eval_size"]}


def test_default_config_picks_the_headline_fpt_as_the_trained_model(default):
    cfg, study = default
    for task in cfg["cka"]["tasks"]:
        cell = study.grid.cells[study.cka_trained(task)]
        assert (cell.task, cell.seed, cell.init, cell.backbone) == (task, 0, "pretrained", "minilm-l6")
    assert study.cka_trained("no-such-task") is None
    untrained = Study.from_config({**cfg, "cka": {"tasks": ["mnist"], "backbones": {"a": {}}}})
    assert untrained.cka_trained("mnist") is None


def test_a_cka_table_is_named_by_what_it_compares(default, tmp_path):
    cfg, study = default
    again = Study.from_config({**cfg, "study": "another"})
    assert again.cka_table("mnist") == study.cka_table("mnist")  # studies share it
    more = copy.deepcopy(cfg)
    more["cka"]["examples"] = 500
    assert Study.from_config(more).cka_table("mnist") != study.cka_table("mnist")


def test_an_unknown_pipeline_backbone_names_its_key():
    cfg = tiny_config(backbones={"mine": "backbones/nothing"})
    with pytest.raises(ConfigError, match=r"cka.backbones.mine: 'backbones/nothing' is not a "
                                          r"pipeline-pretrained backbone; allowed: backbones/xor-tiny"):
        cka_models(cfg, build(cfg), "bit-xor")


def test_a_bad_cell_setting_names_its_key():
    cfg = tiny_config(backbones={"mine": {"init": "sideways"}})
    with pytest.raises(ConfigError, match=r"^cka.backbones.mine: init"):
        cka_models(cfg, build(cfg), "bit-xor")


@pytest.mark.parametrize("change, key", [
    ({"pool": "max"}, "pool"), ({"examples": 1}, "examples"), ({"trained": {"label": "fpt"}}, "trained"),
    ({"backbones": {}}, "backbones"), ({"extra": 1}, "extra"),
])
def test_schema_refuses_bad_cka_blocks(change, key):
    cfg = copy.deepcopy(tiny_config())
    cfg["cka"].update(change)
    with pytest.raises(ConfigError, match=key):
        check(cfg)


# ---------------------------------------------------------------- computing


def test_models_share_the_first_ones_input_layer_and_keep_their_blocks():
    cells = {n: make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "seed": s})
             for n, s in (("a", 0), ("b", 1))}
    models = built_models(cells)
    a, b = models["a"], models["b"]
    for p, q in zip(a.input_layer.parameters(), b.input_layer.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(a.backbone.model.h[0].attn.c_attn.weight, b.backbone.model.h[0].attn.c_attn.weight)


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    from fpt_core.train import train_cell

    out = tmp_path_factory.mktemp("cell")
    cell = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "steps": 30,
                      "lr": 1e-2, "eval_every": 30, "batch_size": 16, "eval_size": 32})
    train_cell(cell, out)
    return out / "model.pt"


def test_task_table_holds_both_comparisons(trained_model):
    cells = {n: make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "seed": s})
             for n, s in (("a", 0), ("b", 1))}
    table = task_table(cells, examples=120, trained_model=trained_model)
    assert list(table.columns) == COLUMNS
    assert set(table["task"]) == {"bit-xor"} and set(table["examples"]) == {120}
    assert set(table["width"]) == {64}
    modality = table[table["comparison"] == "modality"]
    assert set(zip(modality["model_a"], modality["model_b"])) == {("a", "a"), ("a", "b"), ("b", "b")}
    training = table[table["comparison"] == "training"]
    assert set(zip(training["model_a"], training["model_b"])) == {
        (BEFORE, BEFORE), (BEFORE, AFTER), (AFTER, AFTER)}
    self_ = table[(table["model_a"] == table["model_b"]) & (table["block_a"] == table["block_b"])]
    np.testing.assert_allclose(self_["cka"], 1.0, atol=1e-9)
    # training moved the input layer: the representations are no longer identical
    moved = training[(training["model_a"] == BEFORE) & (training["model_b"] == AFTER)
                     & (training["block_a"] == training["block_b"])]
    assert (moved["cka"] < 1 - 1e-6).any()


def test_before_is_the_trained_cells_own_initialisation(trained_model):
    from fpt_core.cka_stage import before_and_after
    from fpt_core.model import build_model
    from fpt_core.tasks import make_spec

    cell, pair = before_and_after(trained_model)
    again = build_model(cell, make_spec(cell))
    for (name, p), (_, q) in zip(pair[BEFORE].named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
    after = dict(pair[AFTER].named_parameters())
    assert not torch.equal(after["input_layer.0.weight"], dict(again.named_parameters())["input_layer.0.weight"])


def test_no_models_and_no_trained_cell_is_an_empty_table():
    assert list(task_table({}, 10).columns) == COLUMNS


# ---------------------------------------------------------------- the figure


def synthetic_table(tasks=("bit-xor", "mnist"), depth=3):
    """A cka stage table with known values: CKA falls with depth, faster for 'random'."""
    rows = []
    models = ["language", "vision", "random"]
    for task in tasks:
        for i, a in enumerate(models):
            for b in models[i:]:
                for ba in range(depth + 1):
                    for bb in range(depth + 1):
                        value = 1.0 if (a == b and ba == bb) else 0.9 - 0.1 * abs(ba - bb) - \
                            (0.05 * ba if "random" in (a, b) else 0.0)
                        rows.append((task, "modality", a, b, ba, bb, value, 400, 32))
        for a, b in ((BEFORE, BEFORE), (BEFORE, AFTER), (AFTER, AFTER)):
            for ba in range(depth + 1):
                for bb in range(depth + 1):
                    value = 1.0 if (a == b and ba == bb) else 0.8
                    rows.append((task, "training", a, b, ba, bb, value, 400, 32))
    return pd.DataFrame(rows, columns=COLUMNS)


def test_study_figure_and_table_from_a_parquet(tmp_path):
    path = tmp_path / "cka.parquet"
    synthetic_table().to_parquet(path)
    png, md = tmp_path / "fig" / "cka.png", tmp_path / "fig" / "cka.md"
    draw_cka_study(pd.read_parquet(path), png, md, "Representations")
    assert png.stat().st_size > 20_000 and png.read_bytes()[:4] == b"\x89PNG"
    text = md.read_text()
    assert text.startswith("# Representations")
    assert "## bit-xor" in text and "## mnist" in text
    assert f"(400 examples, width 32) score about {noise_floor(400, 32):.2f}" in text
    section = text.split("## mnist")[1]
    header = next(line for line in section.splitlines() if line.startswith("| pair"))
    assert re.findall(r"block \d", header) == ["block 0", "block 1", "block 2", "block 3"]
    row = next(line for line in section.splitlines() if line.startswith("| language vs random"))
    assert [c.strip() for c in row.split("|")[2:-1]] == ["0.900", "0.850", "0.800", "0.750"]
    assert f"| {BEFORE} vs {AFTER}" in section
    assert "language vs language" not in text  # a model with itself says nothing


def test_last_block_matrix_is_symmetric_with_ones_on_the_diagonal():
    table = synthetic_table(tasks=("bit-xor",))
    grid = last_block_matrix(table[table["comparison"] == "modality"])
    assert list(grid.index) == ["language", "vision", "random"]
    np.testing.assert_allclose(np.diag(grid), 1.0)
    np.testing.assert_allclose(grid.to_numpy(), grid.to_numpy().T)
    assert grid.loc["vision", "random"] == pytest.approx(0.9 - 0.15)


def test_a_task_with_only_the_trained_pair_draws(tmp_path):
    table = synthetic_table(tasks=("bit-xor",))
    table = table[table["comparison"] == "training"]
    draw_cka_study(table, tmp_path / "a.png", tmp_path / "a.md", "only training")
    assert f"{BEFORE} vs {AFTER}" in (tmp_path / "a.md").read_text()
    assert list(same_block(table).index) == [f"{BEFORE} vs {AFTER}"]


def test_noise_floor_falls_as_examples_grow_past_the_width():
    assert noise_floor(2000, 32) < 0.05 < noise_floor(100, 32) < noise_floor(40, 32)
