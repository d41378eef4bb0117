import pytest

from fpt_core.cell import FPT_GROUPS, Cell, ConfigError, make_cell, parse_overrides


def test_identity_ignores_where_and_how_often():
    a = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "data_dir": "a", "checkpoint_every": 5})
    b = make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "data_dir": "b", "checkpoint_every": 7})
    assert a.id == b.id
    assert make_cell({"task": "bit-xor", "backbone": "gpt2-tiny", "init": "random", "seed": 1}).id != a.id


def test_trainable_is_canonical_so_order_does_not_split_cells():
    a = make_cell({"backbone": "gpt2-tiny", "init": "random", "trainable": "output,input"})
    b = make_cell({"backbone": "gpt2-tiny", "init": "random", "trainable": ["input", "output"]})
    assert a.trainable == ("input", "output") and a.id == b.id


def test_strings_from_the_command_line_are_typed():
    cell = make_cell(parse_overrides(["backbone=gpt2-tiny", "init=random", "lr=3e-4", "steps=10", "depth=null",
                                      "progress=false", "trainable=input+output"]))
    assert cell.lr == 3e-4 and cell.steps == 10 and cell.depth is None and cell.progress is False
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
