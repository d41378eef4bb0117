"""TAPE remote homology: fold classification of protein domains (1195 folds).

Sequences are tokenized with TAPE's IUPAC vocabulary (30 ids, <pad> = 0) and wrapped in <cls> and
<sep> as TAPE's tokenizer does; the paper's model took these 30 ids as its input vocabulary.
TAPE ships each split as LMDB (pickled records) or, in its raw release, as JSON (a list of
records); records hold `primary` (the amino-acid string) and `fold_label`.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchvision.datasets.utils import download_and_extract_archive

from fpt_core.tasks.base import (
    BUCKETS,
    LONG_SEQUENCES,
    PADDING,
    DataError,
    EpochSampler,
    ReleaseValidation,
    TaskSpec,
    generator,
    missing,
    one_line,
)
from fpt_core.tasks.registry import Option, register

try:  # only TAPE's LMDB release needs it; the JSON release does not
    import lmdb
except ImportError:
    lmdb = None

IUPAC = ["<pad>", "<mask>", "<cls>", "<sep>", "<unk>"] + list("ABCDEFGHIKLMNOPQRSTUVWXYZ")
CLS, SEP = IUPAC.index("<cls>"), IUPAC.index("<sep>")
N_FOLDS = 1195
DEFAULT_LEN = 1024  # the paper's max_seq_len
BUCKET_BATCHES = 100  # TAPE's loader sorts buckets of 100 batches by length
AMINO = "ACDEFGHIKLMNPQRSTVWY"  # the 20 standard amino acids, for fixtures
_LUT = np.full(256, 255, dtype=np.uint8)
for _id, _token in enumerate(IUPAC[5:], start=5):
    _LUT[ord(_token)] = _id

JSON_URL = "http://s3.amazonaws.com/proteindata/data_raw/remote_homology.tar.gz"
LMDB_URL = "http://s3.amazonaws.com/proteindata/data_pytorch/remote_homology.tar.gz"
HOW = ("on a machine with internet run `fpt data remote-homology dir=DATA_DIR`, or unpack TAPE's "
       f"JSON release {JSON_URL} in {{folder}} (the LMDB release {LMDB_URL} needs the `lmdb` package)")


def encode(primary: str, where: str) -> np.ndarray:
    ids = _LUT[np.frombuffer(primary.encode("ascii", errors="replace"), dtype=np.uint8)]
    if (ids == 255).any():
        bad = primary[int(np.argmax(ids == 255))]
        raise DataError(f"{where}: unknown amino acid {bad!r} in primary; expected one of "
                        f"{''.join(IUPAC[5:])}")
    return np.concatenate([[CLS], ids, [SEP]]).astype(np.uint8)


def read_records(path: Path) -> list[dict]:
    if path.suffix == ".json":
        with open(path) as f:
            try:
                records = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(records, list):
            raise DataError(f"{path}: expected a JSON list of records, found {type(records).__name__}")
        return records
    if lmdb is None:
        raise DataError(f"{path}: reading TAPE's LMDB files needs the `lmdb` package (pip install "
                        "lmdb); or provide the JSON release instead")
    env = lmdb.open(str(path), max_readers=1, readonly=True, lock=False, readahead=False, meminit=False)
    with env.begin(write=False) as txn:
        n = pickle.loads(txn.get(b"num_examples"))
        return [pickle.loads(txn.get(str(i).encode())) for i in range(n)]


def to_tensors(records: list[dict], n_tokens: int, where: Path,
               right: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Ids (N, n_tokens) uint8, left-padded (or right-padded), fold labels (N, 1), and which
    sequences are longer than n_tokens (those keep their start)."""
    ids = np.zeros((len(records), n_tokens), dtype=np.uint8)
    labels = np.empty(len(records), dtype=np.int64)
    too_long = np.zeros(len(records), dtype=bool)
    for i, record in enumerate(records):
        if not isinstance(record, dict) or "primary" not in record or "fold_label" not in record:
            raise DataError(f"{where}: record {i} lacks the fields primary and fold_label")
        tokens = encode(str(record["primary"]), f"{where}: record {i}")
        too_long[i] = len(tokens) > n_tokens
        tokens = tokens[:n_tokens]
        if right:
            ids[i, :len(tokens)] = tokens
        else:
            ids[i, n_tokens - len(tokens):] = tokens
        label = record["fold_label"]
        if isinstance(label, (list, np.ndarray)) and np.size(label) == 1:
            label = np.asarray(label).item()
        if not isinstance(label, (int, np.integer)) or not 0 <= label < N_FOLDS:
            raise DataError(f"{where}: record {i} has fold_label {label!r}; expected an int in 0..{N_FOLDS - 1}")
        labels[i] = label
    return torch.from_numpy(ids), torch.from_numpy(labels)[:, None], torch.from_numpy(too_long)


def lengths_of(ids: Tensor) -> Tensor:
    return (ids != 0).sum(1)  # every token id is > 0, the pad is 0


def bucket_order(order: Tensor, lengths: Tensor, batch_size: int,
                 g: torch.Generator | None = None) -> Tensor:
    """TAPE's batching of `order`: buckets of BUCKET_BATCHES batches, each sorted by length and cut
    into batches that come in random order from g (a last, partial batch stays last); without g
    in sorted order."""
    out = []
    span = batch_size * BUCKET_BATCHES
    for start in range(0, len(order), span):
        bucket = order[start:start + span]
        bucket = bucket[torch.argsort(lengths[bucket], stable=True)]
        full = len(bucket) // batch_size * batch_size
        batches = list(bucket[:full].split(batch_size))
        if g is not None:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        out += batches
        out.append(bucket[full:])
    return torch.cat(out)


class BucketSampler(EpochSampler):
    """Training batches as TAPE's loader draws them: each epoch's permutation in bucket_order, so
    batch-mates have similar lengths and right padding to the longest adds few pads. An epoch is
    whole batches of it, its last one smaller where batch_size does not divide the split."""

    def __init__(self, lengths: Tensor, seed: int):
        super().__init__(len(lengths), seed)
        self.lengths = lengths
        self.batch_size = 1

    def indices(self, step: int, batch_size: int) -> Tensor:
        if batch_size != self.batch_size:
            self.batch_size, self._perms = batch_size, {}
        epoch, k = divmod(step, -(-self.n // batch_size))
        return self.perm(epoch)[k * batch_size:(k + 1) * batch_size]

    def _order(self, epoch: int) -> Tensor:
        return bucket_order(super()._order(epoch), self.lengths, self.batch_size,
                            generator(self.seed, BUCKETS, epoch))


@register
class RemoteHomology(ReleaseValidation):
    name = "remote-homology"
    description = "TAPE fold classification of protein sequences"
    # The paper's code scored TAPE's 'valid' split, not the fold holdout.
    split_sizes = (12_312, 736)
    val_split, test_split, test_size = "valid", "test_fold_holdout", 718
    options = {
        "padding": PADDING,
        "homology_long": Option(LONG_SEQUENCES, "truncate", "sequences over max_len: keep their "
                                "start, or drop them and count them as wrong, as the paper's code"),
    }
    root = "remote-homology"

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="tokens", input_dim=len(IUPAC),
                        n_tokens=self.max_len or DEFAULT_LEN, n_classes=N_FOLDS, n_readout=1,
                        n_predictions=1, chance=1 / N_FOLDS, threshold=0.12)

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / cls.root

    def data_files(self) -> list[Path]:
        return [self._find(self.data_dir, split) or self.folder(self.data_dir) / self._json(split)
                for split in self.splits_read()]

    @staticmethod
    def _json(split: str) -> str:
        return f"remote_homology_{split}.json"

    @classmethod
    def _find(cls, data_dir, split: str) -> Path | None:
        """The split's file: JSON first, then LMDB, flat or in the tarball's remote_homology/."""
        for sub in (cls.folder(data_dir), cls.folder(data_dir) / "remote_homology"):
            for suffix in (".json", ".lmdb"):
                path = sub / f"remote_homology_{split}{suffix}"
                if path.exists():
                    return path
        return None

    @classmethod
    def prepare(cls, data_dir, **options) -> None:
        super().prepare(data_dir, **options)
        folder = cls.folder(data_dir)
        try:
            download_and_extract_archive(JSON_URL, download_root=str(folder))
        except Exception as e:  # no network here: say what to do instead
            raise DataError(f"{cls.name}: download of {JSON_URL} into {folder} failed "
                            f"({one_line(e)}); fetch it on a machine with internet and "
                            f"unpack it there") from None

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0, n_train: int = 32, n_valid: int = 16,
                      splits: tuple[str, ...] | None = None) -> dict:
        """TAPE's raw JSON release: remote_homology_<split>.json of random sequences, 5 to 59
        residues, every split but training n_valid records long."""
        rng = np.random.default_rng(seed)
        Path(folder).mkdir(parents=True, exist_ok=True)
        out = {}
        for split in splits or cls.release_splits():
            n = n_train if split == "train" else n_valid
            records = []
            for i in range(n):
                primary = "".join(rng.choice(list(AMINO), rng.integers(5, 60)))
                records.append({"id": f"d{split}{i}", "primary": primary,
                                "protein_length": len(primary),
                                "fold_label": int(rng.integers(0, N_FOLDS)), "superfamily_label": 0,
                                "family_label": 0, "class_label": 0})
            (Path(folder) / cls._json(split)).write_text(json.dumps(records))
            out[split] = records
        return out

    @property
    def batch_dependent(self) -> bool:
        return self.padding == "right"

    def eval_batch_size(self, batch_size: int) -> int:
        """Under right padding a batch's length is its longest sequence's, so evaluation's batch
        changes the numbers: the paper's code evaluated with batches of 4 x the training batch
        (kzl/universal-computation, universal_computation/experiment.py:
        `RemoteHomologyDataset(train_batch_size=batch_size, test_batch_size=4*batch_size, ...)`)."""
        return 4 * batch_size if self.batch_dependent else super().eval_batch_size(batch_size)

    def _read(self, split: str) -> tuple[Tensor, Tensor, Tensor]:
        path = self._find(self.data_dir, split)
        if path is None:
            folder = self.folder(self.data_dir)
            raise missing(self.name, folder, [self._json(s) for s in self.splits_read()],
                          HOW.format(folder=folder))
        return to_tensors(read_records(path), self.spec.n_tokens, path, self.padding == "right")

    def _load(self) -> None:
        drop = self.homology_long == "drop"
        train, held_out, *val = self.splits_read()
        x, y, too_long = self._read(train)
        if drop:  # the paper's code skipped them in training too
            x, y = x[~too_long], y[~too_long]
            if not len(y):
                raise DataError(f"{self.name}: every training sequence is longer than "
                                f"{self.spec.n_tokens} tokens; raise max_len or use homology_long: truncate")
        self._set_train(x, y)
        if self.batch_dependent:
            self._sampler = BucketSampler(lengths_of(self._train[0]), self.seed)
        x, y, too_long = self._read(held_out)
        self._set_held_out(x, y, ~too_long if drop else None)
        if val:
            x, y, too_long = self._read(val[0])
            self._set_validation(x, y, ~too_long if drop else None)

    def _batches(self, raw: Tensor, y: Tensor, batch_size: int):
        if self.batch_dependent:  # batch-mates of similar length, as TAPE's loader gives them
            order = bucket_order(torch.arange(len(y)), lengths_of(raw), batch_size)
            raw, y = raw[order], y[order]
        yield from super()._batches(raw, y, batch_size)

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        if self.batch_dependent:
            # The paper's code padded each batch to its longest sequence and read the last
            # position: that sequence's <sep>, a pad for its batch-mates.
            return raw[:, :max(int(lengths_of(raw).max()), 1)].long()
        return raw.long()
