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


# ------------------------------------------------------------------ the paper's switches (issue 10)

@pytest.mark.parametrize("key, value", [("padding", "middle"), ("homology_long", "keep"),
                                        ("random_init", "xavier")])
def test_the_papers_switches_refuse_other_values_in_one_line(key, value):
    with pytest.raises(ConfigError) as e:
        make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random", key: value})
    message = str(e.value)
    assert message.startswith(f"{key}:") and "allowed:" in message and "\n" not in message


def test_a_switch_at_its_default_keeps_the_id_a_cell_had_before_it_existed():
    import hashlib
    import json

    from fpt_core.cell import NON_IDENTITY, PROTOCOL, SWITCHES

    cell = make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random"})
    before = {k: v for k, v in cell.to_dict().items() if k not in NON_IDENTITY and k not in SWITCHES}
    blob = json.dumps({**before, "protocol": PROTOCOL}, sort_keys=True, separators=(",", ":"))
    assert cell.id == hashlib.sha1(blob.encode()).hexdigest()[:12]
    for key, value in (("padding", "right"), ("homology_long", "drop"), ("random_init", "plain")):
        other = make_cell({"task": "remote-homology", "backbone": "gpt2-tiny", "init": "random", key: value})
        assert other.id != cell.id, key


def test_a_switch_that_does_not_apply_is_reset_so_it_cannot_split_a_cell():
    base = {"task": "bit-xor", "backbone": "gpt2", "init": "pretrained"}
    plain = make_cell(base)
    switched = make_cell({**base, "padding": "right", "homology_long": "drop", "random_init": "plain"})
    assert (switched.padding, switched.homology_long, switched.random_init) == ("left", "truncate", "scaled")
    assert switched.id == plain.id
    listops = make_cell({**base, "task": "listops", "padding": "right", "homology_long": "drop"})
    assert (listops.padding, listops.homology_long) == ("right", "truncate")


def test_random_init_splits_only_backbones_whose_random_weights_it_changes():
    lstm = {"task": "bit-xor", "backbone": "lstm", "init": "random"}
    assert make_cell({**lstm, "random_init": "plain"}).id == make_cell(lstm).id
    gpt2 = {**lstm, "backbone": "gpt2"}
    assert make_cell({**gpt2, "random_init": "plain"}).id != make_cell(gpt2).id
