"""The token tasks: LRA ListOps (reader, tokenizations, generator) and TAPE remote homology
(reader, TAPE's batching), with the paper's padding and long-sequence handling."""
import json
import re
import statistics
from pathlib import Path

import _taskdata as D
import pytest
import torch
from _taskdata import every_batch as all_eval

from fpt_core.errors import ConfigError
from fpt_core.tasks import TASKS, DataError, homology, prepare_data
from fpt_core.tasks import listops as L
from fpt_core.tasks.base import EVAL_BATCH


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepare_data("listops", root, n_train=200, n_val=30, n_test=30, max_depth=4, max_length=64, seed=3)
    return root


def task(name, data_dir, **kw):
    return TASKS[name](data_dir=data_dir, **kw).load()


# ---------------------------------------------------------------- listops

def reference_value(source: str) -> int:
    """Evaluate an LRA ListOps expression with a stack, independently of the generator."""
    stack, result = [], None
    for token in source.split():
        if token in "()":
            continue
        if token.startswith("["):
            stack.append((token[1:], []))
        elif token == "]":
            op, args = stack.pop()
            value = {"MIN": min, "MAX": max, "SM": lambda a: sum(a) % 10,
                     "MED": lambda a: int(statistics.median(a))}[op](args)
            (stack[-1][1].append(value) if stack else None)
            result = value
        else:
            stack[-1][1].append(int(token)) if stack else None
            result = int(token) if not stack else result
    assert not stack
    return result


def read_rows(path):
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "Source\tTarget"
    return [(s, int(t)) for s, t in (line.split("\t") for line in lines[1:])]


def test_generator_writes_lra_tsvs_whose_labels_evaluate_correctly(data_dir):
    folder = data_dir / "listops"
    rows = {split: read_rows(folder / f"basic_{split}.tsv") for split in ("train", "val", "test")}
    assert [len(r) for r in rows.values()] == [200, 30, 30]
    sources = [s for r in rows.values() for s, _ in r]
    assert len(set(sources)) == len(sources)  # distinct, as LRA's set
    for source, target in (x for r in rows.values() for x in r):
        assert target == reference_value(source)
        tokens = source.split()
        length = sum(t.isdigit() for t in tokens) + 2 * tokens.count("]")  # LRA's length
        assert 64 // 4 < length < 64
        assert source.startswith("( ") and source.endswith(" ] )")
    assert len({t for r in rows.values() for _, t in r}) > 5


def test_generator_is_deterministic_given_seed(tmp_path):
    opts = dict(n_train=40, n_val=5, n_test=5, max_depth=4, max_length=64)
    for seed, sub in ((1, "a"), (1, "b"), (2, "c")):
        prepare_data("listops", tmp_path / sub, seed=seed, **opts)
    read = lambda sub: (tmp_path / sub / "listops" / "basic_train.tsv").read_bytes()
    assert read("a") == read("b") != read("c")


def test_generator_medians_and_sums_match_lra_semantics():
    assert L.apply("[MED", [1, 2, 4, 9]) == 3  # int(np.median) floors the mean of the middle two
    assert L.apply("[MED", [7, 1, 3]) == 3
    assert L.apply("[SM", [9, 8, 5]) == 2
    assert L.apply("[MIN", [4, 2, 8]) == 2 and L.apply("[MAX", [4, 2, 8]) == 8


def test_paper_tokenization_is_the_fixed_one_without_brackets(data_dir):
    paper = task("listops", data_dir, tokenizer="paper", max_len=2000)
    fixed = task("listops", data_dir, tokenizer="fixed", max_len=2000)
    assert paper.spec.input_dim == 15 and fixed.spec.input_dim == 18
    (xp, yp), (xf, yf) = all_eval(paper), all_eval(fixed)
    assert torch.equal(yp, yf)
    for p, f in zip(xp, xf):
        p, f = p[p > 0], f[f > 0]
        assert len(f) > len(p) and torch.equal(f[f < 15], p)
        assert set(f[f >= 15].tolist()) == {15, 16, 17}


def test_listops_reader_tokenizes_pads_left_and_keeps_the_first_tokens(tmp_path):
    rows = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 4 ) 5 ) ( ( [MIN 3 ) 1 ) ] ) ) ] )", 0)]
    for split in ("train", "val"):
        D.write_listops_tsv(tmp_path / "listops" / f"basic_{split}.tsv", rows)
    v = {s: i for i, s in enumerate(L.SYMBOLS, start=1)}
    paper = task("listops", tmp_path, max_len=5)
    x, y = all_eval(paper)
    order = y.squeeze(1).argsort(descending=True)  # eval order is shuffled; row 0 has label 9
    assert x[order[0]].tolist() == [0, 0, v["MAX"], v["2"], v["9"]]
    assert x[order[1]].tolist() == [v["SM"], v["4"], v["5"], v["MIN"], v["3"]]  # the first 5 of 6 kept
    fixed = task("listops", tmp_path, tokenizer="fixed", max_len=12)
    x, _ = all_eval(fixed)
    assert x[order[0]].tolist() == [0, 0] + [v[t] for t in "( ( ( MAX 2 ) 9 ) ] )".split()]


@pytest.mark.parametrize("source, target, message", [
    ("( ( [FIRST 2 ) ] )", 2, "unknown ListOps token '[FIRST'"),
    ("( ( [MAX 12 ) ] )", 2, "unknown ListOps token '12'"),
    ("( ( [MAX 2 ) ] )", 10, "Target '10' is not 0..9"),
    ("( ( [MAX 2 ) ] )", "x", "Target 'x' is not 0..9"),
    ("( ( [MAX 2 ) ] ) x", 2, "unknown ListOps token 'x'"),
])
def test_listops_reader_rejects_unknown_tokens_and_labels(tmp_path, source, target, message):
    for split in ("train", "val"):
        D.write_listops_tsv(tmp_path / "listops" / f"basic_{split}.tsv", [(source, target)])
    with pytest.raises(DataError, match=re.escape(f"basic_train.tsv:2: {message}")):
        task("listops", tmp_path)


def test_generator_rejects_impossible_lengths(tmp_path):
    with pytest.raises(ConfigError, match="min_length"):
        prepare_data("listops", tmp_path, max_depth=2, max_args=3, max_length=100)
    with pytest.raises(ConfigError, match="n_trian"):
        prepare_data("listops", tmp_path, n_trian=5)
    with pytest.raises(ConfigError, match="task"):
        prepare_data("imagenet", tmp_path)


# ---------------------------------------------------------------- remote homology

def test_homology_wraps_sequences_in_cls_sep_with_tape_ids(tmp_path):
    records = D.write_tape_json(tmp_path, n_train=5, n_valid=3, splits=("train", "valid"))
    t = task("remote-homology", tmp_path, max_len=64)
    x, y = all_eval(t)
    by_label = {r["fold_label"]: r["primary"] for r in records["valid"]}
    for row, label in zip(x, y.squeeze(1).tolist()):
        primary = by_label[label][:62]
        ids = row[row > 0].tolist()
        assert ids[0] == 2 and len(ids) == min(len(by_label[label]) + 2, 64)
        assert ids[1:1 + len(primary)] == [5 + "ABCDEFGHIKLMNOPQRSTUVWXYZ".index(a) for a in primary]
        if len(by_label[label]) + 2 <= 64:
            assert ids[-1] == 3


@pytest.mark.parametrize("record, message", [
    ({"primary": "ACDJ", "fold_label": 3}, "unknown amino acid 'J'"),
    ({"primary": "ACD", "fold_label": 1195}, "fold_label 1195"),
    ({"primary": "ACD"}, "lacks the fields primary and fold_label"),
])
def test_homology_rejects_bad_records(tmp_path, record, message):
    D.write_tape_json(tmp_path, n_train=3, n_valid=2, splits=("train", "valid"))
    path = tmp_path / "remote-homology" / "remote_homology_valid.json"
    path.write_text(json.dumps(json.loads(path.read_text()) + [record]))
    with pytest.raises(DataError, match=re.escape(message)):
        task("remote-homology", tmp_path)


def test_homology_lmdb_without_the_package_says_to_install_it_or_use_json(tmp_path, monkeypatch):
    monkeypatch.setattr(homology, "lmdb", None)  # as where it is not installed
    for split in ("train", "valid"):
        (tmp_path / "remote-homology" / "remote_homology" / f"remote_homology_{split}.lmdb").mkdir(parents=True)
    with pytest.raises(DataError, match="needs the `lmdb` package"):
        task("remote-homology", tmp_path)


# ---------------------------------------------------------------- the paper's padding and long sequences

def test_listops_right_padding_is_the_papers_and_reads_a_pad_for_short_expressions(tmp_path):
    rows = [("( ( ( [MAX 2 ) 9 ) ] )", 9), ("( ( ( ( [SM 4 ) 5 ) ( ( [MIN 3 ) 1 ) ] ) ) ] )", 0)]
    for split in ("train", "val"):
        D.write_listops_tsv(tmp_path / "listops" / f"basic_{split}.tsv", rows)
    v = {s: i for i, s in enumerate(L.SYMBOLS, start=1)}
    right = task("listops", tmp_path, max_len=5, padding="right")
    x, y = all_eval(right)
    order = y.squeeze(1).argsort(descending=True)
    assert x[order[0]].tolist() == [v["MAX"], v["2"], v["9"], 0, 0]  # the read position is a pad
    assert x[order[1]].tolist() == [v["SM"], v["4"], v["5"], v["MIN"], v["3"]]
    x, _ = right.train_batch(0, 2)
    assert x.shape == (2, 5) and sorted(x[:, -1].tolist()) == [0, v["3"]]


def _homology(tmp_path, lengths, **kw):
    """The homology task on sequences of the given numbers of residues, label = index."""
    D.write_tape_lengths(tmp_path, lengths)
    return TASKS["remote-homology"](data_dir=tmp_path, **kw).load()


def test_homology_right_padding_pads_each_batch_to_its_longest_and_reads_its_last_position(tmp_path):
    lengths = [3, 30, 5, 28, 4, 29, 6, 27]
    t = _homology(tmp_path, lengths, max_len=64, padding="right")
    batches = list(t.eval_batches(4))
    # Batch-mates have similar lengths, as TAPE's length-sorted buckets give them.
    assert [b[0].shape[1] for b in batches] == [6 + 2, 30 + 2]
    for x, y in batches:
        for row, label in zip(x, y.squeeze(1).tolist()):
            n = lengths[label] + 2
            assert row[0] == 2 and row[n - 1] == 3 and (row[n:] == 0).all()
        assert (x[:, -1] == 3).sum() >= 1  # <sep> of the longest; a pad for the others
    steps = len(lengths) // 2
    seen = torch.cat([t.train_batch(s, 2)[1].squeeze(1) for s in range(steps)])
    assert sorted(seen.tolist()) == list(range(len(lengths)))  # every example once an epoch
    for s in range(steps):  # each training batch is trimmed to its own longest sequence
        x, y = t.train_batch(s, 2)
        assert x.shape[1] == max(lengths[i] for i in y.squeeze(1).tolist()) + 2
    left = _homology(tmp_path, lengths, max_len=64)
    assert all(x.shape[1] == 64 and (x[:, -1] == 3).all() for x, _ in left.eval_batches(4))


def test_homology_drop_leaves_long_sequences_out_and_counts_them_in_the_scored_fraction(tmp_path):
    lengths = [10, 70, 20, 80, 30, 5, 90, 40]  # +2 for <cls> and <sep>; three exceed 64 tokens
    kept = {i for i, n in enumerate(lengths) if n + 2 <= 64}
    truncate = _homology(tmp_path, lengths, max_len=64)
    assert truncate.scored_fraction() == 1.0 and len(truncate.training_split()[1]) == 8
    drop = _homology(tmp_path, lengths, max_len=64, homology_long="drop")
    assert set(drop.training_split()[1].squeeze(1).tolist()) == kept
    _, y = all_eval(drop)
    assert set(y.squeeze(1).tolist()) == kept
    assert drop.scored_fraction() == len(kept) / len(lengths)
    prefix = _homology(tmp_path, lengths, max_len=64, homology_long="drop", eval_size=4)
    first = set(all_eval(truncate)[1].squeeze(1).tolist()[:4])  # the same shuffled prefix
    assert set(all_eval(prefix)[1].squeeze(1).tolist()) == first & kept
    assert prefix.scored_fraction() == len(first & kept) / 4


def test_homology_training_batches_are_tapes_length_sorted_buckets(tmp_path):
    lengths = [40, 3, 30, 5, 28, 4, 29, 6, 27, 50, 7]  # 11 examples: batches of 2, 2, ..., 1
    t = _homology(tmp_path, lengths, max_len=64, padding="right")
    for epoch in range(2):
        batches = [t.train_batch(6 * epoch + s, 2)[1].squeeze(1).tolist() for s in range(6)]
        assert sorted(sum(batches, [])) == list(range(len(lengths)))  # each example once an epoch
        assert [len(b) for b in batches] == [2, 2, 2, 2, 2, 1]
        pairs = sorted(sorted(lengths[i] for i in b) for b in batches[:5])
        assert pairs == [[3, 4], [5, 6], [7, 27], [28, 29], [30, 40]]  # one bucket, cut when sorted


def test_right_padded_homology_evaluates_in_batches_of_four_training_batches(tmp_path):
    D.write_tape_lengths(tmp_path, [3, 30, 5, 28, 4, 29, 6, 27])
    right = TASKS["remote-homology"](data_dir=tmp_path, padding="right", max_len=64)
    left = TASKS["remote-homology"](data_dir=tmp_path, max_len=64)
    assert right.batch_dependent and right.eval_batch_size(8) == 32  # the paper's 4 x batch
    assert not left.batch_dependent and left.eval_batch_size(8) == EVAL_BATCH
    assert TASKS["listops"](padding="right").eval_batch_size(100) == 100
    # why it matters: right padding reads a position that depends on the batch-mates
    batches = lambda size: torch.cat([x[:, -1] for x, _ in right.load().eval_batches(size)])
    assert not torch.equal(batches(2), batches(8))
