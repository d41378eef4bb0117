import dataclasses
import hashlib
import json

import pytest

from fpt_core.cell import FPT_GROUPS, PROTOCOL, Cell, ConfigError, make_cell, parse_overrides
from fpt_core.run import RUN_FIELDS, Run, split


def test_a_cell_holds_what_is_computed_and_a_run_where_and_how():
    values = {"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random"}
    with pytest.raises(ConfigError, match="^data_dir: unknown key"):
        make_cell({**values, "data_dir": "a"})
    cell, run = split({**values, "data_dir": "b", "checkpoint_every": 7, "device": "cpu"})
    assert make_cell(cell).id == make_cell(values).id
    assert Run(**run) == Run(data_dir="b", checkpoint_every=7, device="cpu")
    assert make_cell({**values, "seed": 1}).id != make_cell(values).id
    assert {f.name for f in dataclasses.fields(Cell)}.isdisjoint(RUN_FIELDS)


def test_trainable_is_canonical_so_order_does_not_split_cells():
    a = make_cell({"backbone": "gpt2-tiny", "init": "random", "trainable": "output,input"})
    b = make_cell({"backbone": "gpt2-tiny", "init": "random", "trainable": ["input", "output"]})
    assert a.trainable == ("input", "output") and a.id == b.id


def test_strings_from_the_command_line_are_typed():
    values, run = split(parse_overrides(["backbone=gpt2-tiny", "init=random", "lr=3e-4", "steps=10",
                                         "depth=null", "progress=false", "trainable=input+output"]))
    cell = make_cell(values)
    assert cell.lr == 3e-4 and cell.steps == 10 and cell.depth is None and Run(**run).progress is False
    assert cell.trainable == ("input", "output")
    assert Cell(backbone="gpt2-tiny", init="random").trainable == FPT_GROUPS


def test_cell_file_then_overrides(tmp_path):
    path = tmp_path / "cell.yaml"
    path.write_text("task: bit-memory\nbackbone: gpt2-tiny\ninit: random\nsteps: 50\n")
    cell = make_cell(parse_overrides([str(path), "steps=7"]))
    assert (cell.task, cell.steps) == ("bit-memory", 7)


@pytest.mark.parametrize("values, key", [
    ({"lrr": 1}, "lrr"),
    ({"task": "imagenet"}, "task"),
    ({"backbone": "gpt5"}, "backbone"),
    ({"init": "xavier"}, "init"),
    ({"trainable": "input,bias"}, "trainable"),
    ({"lr": 0}, "lr"),
    ({"lr": "fast"}, "lr"),
    ({"steps": -1}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"precision": "fp8"}, "precision"),
    ({"dropout": 1.0}, "dropout"),
    ({"depth": 0}, "depth"),
    ({"trainable": "input,input"}, "trainable"),
])
def test_bad_values_name_the_key(values, key):
    with pytest.raises(ConfigError) as e:
        make_cell({"backbone": "gpt2-tiny", "init": "random", **values})
    message = str(e.value)
    assert message.startswith(f"{key}:") and "\n" not in message


# ------------------------------------------------------------------ the paper's switches (issue 10)

@pytest.mark.parametrize("key, value", [("padding", "middle"), ("homology_long", "keep"),
                                        ("random_init", "xavier")])
def test_the_papers_switches_refuse_other_values_in_one_line(key, value):
    with pytest.raises(ConfigError) as e:
        make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random", key: value})
    message = str(e.value)
    assert message.startswith(f"{key}:") and "allowed:" in message and "\n" not in message


def test_the_id_is_a_hash_of_the_fields_that_apply_and_the_protocol():
    cell = make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random"})
    # patience (stop: budget) and random_init at its default are left out: they change nothing
    applied = {k: v for k, v in cell.to_dict().items()
               if v is not None and k not in ("patience", "random_init")}
    assert applied["padding"] == "left" and applied["homology_long"] == "truncate"  # the task's
    assert "tokenizer" not in applied and "mnist_data" not in applied  # options homology lacks
    blob = json.dumps({**applied, "protocol": PROTOCOL}, sort_keys=True, separators=(",", ":"))
    assert cell.id == hashlib.sha1(blob.encode()).hexdigest()[:12]
    for key, value in (("padding", "right"), ("homology_long", "drop"), ("random_init", "plain")):
        other = make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random", key: value})
        assert other.id != cell.id, key


def test_a_field_that_does_not_apply_is_reset_so_it_cannot_split_a_cell():
    base = {"task": "bit-xor", "backbone": "gpt2", "init": "pretrained"}
    plain = make_cell(base)
    switched = make_cell({**base, "padding": "right", "homology_long": "drop", "random_init": "plain",
                          "patience": 3})
    assert (switched.padding, switched.homology_long, switched.random_init) == (None, None, "scaled")
    assert switched.patience == plain.patience and switched.id == plain.id
    listops = make_cell({**base, "task": "listops", "padding": "right", "homology_long": "drop"})
    assert (listops.padding, listops.homology_long, listops.tokenizer) == ("right", None, "paper")
    stopping = make_cell({**base, "stop": "converged", "patience": 3})
    assert stopping.id != make_cell({**base, "stop": "converged"}).id != plain.id


def test_random_init_splits_only_backbones_whose_random_weights_it_changes():
    lstm = {"task": "bit-xor", "backbone": "lstm", "init": "random"}
    assert make_cell({**lstm, "random_init": "plain"}).id == make_cell(lstm).id
    gpt2 = {**lstm, "backbone": "gpt2"}
    assert make_cell({**gpt2, "random_init": "plain"}).id != make_cell(gpt2).id
