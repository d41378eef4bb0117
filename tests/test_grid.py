from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from fpt_core import schema
from fpt_core.cell import FPT_GROUPS, GROUPS, Cell, ConfigError, make_cell
from fpt_core.grid import build, expand
from fpt_core.run import Resources, Run
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]


def config(**ablations):
    return {
        "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 10},
        "axes": {"task": ["bit-xor", "bit-memory"], "seed": [0, 1]},
        "ablations": ablations,
    }


def test_ablation_is_the_product_of_rows_and_axes_in_order():
    points = expand(config(a={"rows": {"fpt": {}, "full": {"trainable": "all"}}}))
    assert len(points) == 2 * 2 * 2  # rows x tasks x seeds
    assert [(p.label, p.values["task"], p.values["seed"]) for p in points[:3]] == [
        ("fpt", "bit-xor", 0), ("fpt", "bit-xor", 1), ("fpt", "bit-memory", 0)]
    assert points[-1].values["trainable"] == "all"
    assert build(config(a={"rows": {"full": {"trainable": "all"}}})).cells.popitem()[1].trainable == GROUPS


def test_ablation_axes_replace_the_shared_ones():
    points = expand(config(a={"axes": {"task": ["bit-xor"], "lr": [1e-3, 1e-4]}}))
    assert len(points) == 1 * 2 * 2  # task x seed x lr
    assert {p.label for p in points} == {"0.001", "0.0001"}  # named by the non-task, non-seed axis
    assert points[0].source["task"] == "ablations.a.axes.task" and points[0].source["seed"] == "axes.seed"


def test_later_layers_win_and_per_task_overrides_apply_to_their_task_only():
    cfg = config(a={
        "set": {"steps": 30, "lr": 0.5},
        "per_task": {"bit-memory": {"lr": 0.25}},
        "rows": {"r": {"batch_size": 3}},
    })
    cfg["defaults"].update(batch_size=1, lr=0.1)
    cfg["per_task"] = {"bit-memory": {"steps": 20, "batch_size": 2, "dropout": 0.0}}
    by_task = {p.values["task"]: p for p in expand(cfg) if p.values["seed"] == 0}
    xor, memory = by_task["bit-xor"].values, by_task["bit-memory"].values
    assert (xor["steps"], xor["lr"], xor["batch_size"], xor.get("dropout")) == (30, 0.5, 3, None)
    assert (memory["steps"], memory["lr"], memory["batch_size"], memory["dropout"]) == (30, 0.25, 3, 0.0)
    assert by_task["bit-memory"].source["lr"] == "ablations.a.per_task.bit-memory.lr"
    assert by_task["bit-memory"].source["dropout"] == "per_task.bit-memory.dropout"
    assert by_task["bit-memory"].source["task"] == "axes.task"


def test_label_template_and_exclusions():
    cfg = config(depth={
        "axes": {"task": ["bit-xor"], "seed": [0], "init": ["pretrained", "random"], "depth": [1, 2]},
        "label": "{init}-{depth}-layers",
        "exclude": [{"label": "random-2-layers"}, {"init": "pretrained", "depth": [2]}],
    })
    assert [p.label for p in expand(cfg)] == ["pretrained-1-layers", "random-1-layers"]


def test_shared_cells_train_once_and_keep_every_membership():
    rows = {"fpt": {}, "random": {"init": "random"}}
    cfg = config(one={"rows": rows}, two={"rows": {"language": {}, "output": {"trainable": ["output"]}}})
    cfg["defaults"]["init"] = "pretrained"
    cfg["defaults"]["backbone"] = "minilm-l6"
    grid = build(cfg)
    assert len(expand(cfg)) == 16
    assert len(grid.cells) == 3 * 4  # fpt (= language), random, output; x 2 tasks x 2 seeds
    shared = {m.cell_id for m in grid.members if m.label == "fpt"}
    assert shared == {m.cell_id for m in grid.members if m.label == "language"}
    assert len(grid.members) == 16
    assert [m.label_order for m in grid.members if m.ablation == "two"][::4] == [0, 1]


def test_cell_errors_name_the_config_key_in_one_line():
    cfg = config(a={"rows": {"lstm": {"backbone": "lstmm"}}})
    with pytest.raises(ConfigError) as e:
        build(cfg)
    message = str(e.value)
    assert message.startswith("ablations.a.rows.lstm.backbone: unknown value 'lstmm'")
    assert "lstm" in message.split("allowed:")[1] and "\n" not in message


def test_backbone_under_backbones_must_be_pretrained_by_the_pipeline():
    cfg = config(a={"rows": {"bits": {"backbone": "backbones/bitmem"}}})
    with pytest.raises(ConfigError, match=r"^ablations.a.rows.bits.backbone: .*add it under pretrain"):
        build(cfg)
    cfg["pretrain"] = {"bitmem": {"task": "bit-memory", "trainable": "all"}}
    grid = build(cfg)
    pretrain = grid.pretrain["bitmem"]
    assert pretrain.trainable == GROUPS and pretrain.steps == 10
    cell = next(iter(grid.cells.values()))
    assert cell.backbone == f"backbones/bitmem-{pretrain.id}"  # a new pretraining, new cells
    assert grid.pretrained_backbone(cell) == "bitmem"
    cfg["pretrain"]["bitmem"]["steps"] = 11
    assert not set(build(cfg).cells) & set(grid.cells)


def test_a_cell_travels_as_its_dict_and_comes_back_the_same():
    cfg = config(a={"rows": {"r": {"trainable": ["output", "layernorm"], "threshold": 0.9, "lr": 3e-4}}})
    for cell in build(cfg).cells.values():
        again = make_cell(cell.to_dict())
        assert again.id == cell.id and again == cell


@pytest.mark.parametrize("bad, key", [
    ({"ablations": {"a": {"rows": {"r": {"init": "xavier"}}}}}, "ablations.a.rows.r.init"),
    ({"ablations": {"a": {"set": {"lrr": 1}}}}, "ablations.a.set.lrr"),
    ({"ablations": {"a": {"axes": {"seed": [0, "one"]}}}}, "ablations.a.axes.seed[1]"),
    ({"ablations": {"a": {"set": {"trainable": "input,bias"}}}}, "ablations.a.set.trainable"),
    ({"ablations": {"a": {"figure": "pie"}}}, "ablations.a.figure"),
    ({"defaults": {"device": "cuda"}, "ablations": {"a": {}}}, "defaults.device"),
    ({"ablations": {"a": {}}, "train": {"device": "tpu"}}, "train.device"),
    ({"ablations": {"Has Spaces": {}}}, "ablations"),
    ({"defaults": {}}, "(top level)"),
])
def test_schema_errors_are_one_line_naming_the_key(bad, key):
    with pytest.raises(ConfigError) as e:
        schema.check(bad)
    message = str(e.value)
    assert message.startswith(f"config {key}:") and "\n" not in message


def test_a_run_setting_in_a_cell_block_says_where_it_belongs():
    with pytest.raises(ConfigError, match=r"defaults\.device: unknown key \(set it in the train: block\)"):
        schema.check({"defaults": {"device": "cuda"}, "ablations": {"a": {}}})


def test_enum_errors_list_the_allowed_values():
    with pytest.raises(ConfigError, match="allowed: pretrained, random, statistics$"):
        schema.check({"ablations": {"a": {"set": {"init": "xavier"}}}})


def test_the_schema_is_made_from_the_fields_the_code_declares():
    loaded = schema.load()
    cell = {f.name for f in fields(Cell)}
    assert set(loaded["$defs"]["cell"]["properties"]) == cell
    assert set(loaded["$defs"]["axes"]["properties"]) == cell
    assert set(loaded["properties"]["train"]["properties"]) == {
        f.name for f in (*fields(Run), *fields(Resources))}
    excludable = loaded["$defs"]["ablation"]["properties"]["exclude"]["items"]["propertyNames"]["enum"]
    assert set(excludable) == cell | {"label"}
    props = loaded["$defs"]["cell"]["properties"]
    assert props["init"]["enum"] == ["pretrained", "random", "statistics"]
    assert props["lr"]["exclusiveMinimum"] == 0 and props["dropout"]["exclusiveMaximum"] == 1
    assert props["depth"]["type"] == ["integer", "null"] and props["depth"]["minimum"] == 1
    assert set(props["padding"]["enum"]) == {"left", "right", None}
    assert all(g in loaded["$defs"]["trainable"]["oneOf"][1]["pattern"] for g in GROUPS)


def test_schema_enumerations_that_are_typed_are_the_pythons():
    from fpt_core.figures import FIGURES

    loaded = schema.load()
    assert tuple(loaded["$defs"]["ablation"]["properties"]["figure"]["enum"]) == tuple(FIGURES)


def test_a_new_field_is_one_line(monkeypatch):
    """A field declared on the Cell is a key of every cell block, axis and exclusion at once."""
    import dataclasses

    from fpt_core import cell as cells

    extra = dataclasses.make_dataclass(
        "Cell", [("warmup", "int", cells.declare(0, "warm-up steps", low=0))], bases=(Cell,))
    monkeypatch.setattr(schema, "Cell", extra)
    loaded = schema.load()
    assert loaded["$defs"]["cell"]["properties"]["warmup"]["minimum"] == 0
    assert "warmup" in loaded["$defs"]["axes"]["properties"]


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name):
    cfg = yaml.safe_load((ROOT / "config" / name).read_text())
    grid = Study.from_config(cfg).grid
    assert len(grid.cells) <= len(expand(cfg))
    assert {m.ablation for m in grid.members} == set(cfg["ablations"])
    assert all(c.trainable for c in grid.cells.values())
    assert Cell.__dataclass_fields__["trainable"].default == FPT_GROUPS


def test_default_grid_has_a_vision_pretrained_row_on_real_mnist():
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    grid = build(cfg)
    vision = grid.pretrain["vision-minilm"]
    assert (vision.task, vision.init, vision.backbone) == ("mnist", "random", "minilm-l6")
    assert set(vision.trainable) == set(GROUPS)
    rows = {m.label: grid.cells[m.cell_id] for m in grid.members
            if m.ablation == "pretraining-modality" and m.seed == 0 and m.task == "mnist"}
    assert list(rows) == ["language", "random", "bit-memory", "vision"]
    assert rows["vision"].backbone == grid.pretrained_dir("vision-minilm")
    assert rows["vision"].init == "pretrained" and rows["vision"].trainable == FPT_GROUPS
    assert cfg["ablations"]["pretraining-modality"]["paper_notes"]["vision"]
    tasks = {c.task for c in grid.cells.values()}
    assert "mnist" in tasks and "digits" not in tasks


def test_a_row_swept_over_an_axis_is_one_row_per_value():
    cfg = {"defaults": {"backbone": "gpt2-tiny", "init": "random"}, "axes": {"task": ["bit-xor"], "seed": [0, 1]},
           "ablations": {"depth": {"rows": {"fpt": {}}, "axes": {"depth": [1, 2]}}}}
    grid = build(cfg)
    assert sorted({m.label for m in grid.members}) == ["fpt-1", "fpt-2"]
    assert len(grid.cells) == 4


def test_a_row_whose_cells_differ_in_more_than_the_seed_is_refused():
    cfg = {"defaults": {"backbone": "gpt2-tiny", "init": "random"}, "axes": {"task": ["bit-xor"], "seed": [0]},
           "ablations": {"depth": {"rows": {"fpt": {}}, "axes": {"depth": [1, 2]}, "label": "{row}"}}}
    with pytest.raises(ConfigError, match=r"row 'fpt' on bit-xor would average cells that differ in depth"):
        build(cfg)


def test_a_backbone_directory_that_does_not_exist_is_refused_before_any_job(tmp_path):
    cfg = {"axes": {"task": ["bit-xor"]}, "ablations": {"a": {"rows": {
        "mine": {"backbone": str(tmp_path / "nowhere"), "init": "pretrained"}}}}}
    with pytest.raises(ConfigError,
                       match=r"ablations.a.rows.mine.backbone: backbone directory .*nowhere does not exist"):
        build(cfg)
