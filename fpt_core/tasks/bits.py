"""The paper's two synthetic bit tasks, generated on the fly.

Following kzl/universal-computation: bit-memory shows five strings of +-1 bits and then one of
them again with about half its bits zeroed, and asks for the whole string back; bit-xor shows two
strings of 0/1 bits and asks for their elementwise XOR. Strings are cut into patches, one patch
per token, and the last tokens (those holding the query or the second string) are read out.
"""
from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from fpt_core.tasks.base import (
    EVAL,
    FIXED_SEED,
    SUBSET,
    TRAIN_EVAL,
    TRAIN_EVAL_SIZE,
    VALIDATION,
    Sizes,
    Task,
    TaskSpec,
    generator,
)
from fpt_core.tasks.registry import register


class GeneratedTask(Task):
    """Examples drawn on the fly; n_train instead fixes a pool of that many training examples.

    Pool, held-out and validation sets come from different streams, so they are drawn
    independently of one another; an example can still repeat across them by chance (bit-xor
    has only 1024 distinct inputs), as it can between training batches and the held-out set.
    """

    split_sizes = (None, 1000)  # held-out examples when eval_size is unset
    chunk: ClassVar[int] = 100  # held-out examples per seeded draw, so any eval_size is a prefix

    @property
    def fixed_training_split(self) -> bool:
        return self.n_train is not None

    def sizes(self) -> Sizes:
        n = self.n_train or 0
        sample = self.eval_size or TRAIN_EVAL_SIZE
        return Sizes(n, self.eval_size or self.split_sizes[1], self.val_size or 0,
                     min(sample, n) if n else sample)

    def _load(self) -> None:
        if self.n_train is not None:
            self._set_train(*self._draw(self.seed, SUBSET, self.n_train))

    def _held_set(self, split: str) -> tuple[Tensor, Tensor, Tensor | None]:
        if split not in self._held:  # drawn on first use: training alone never needs them
            stream, n = {"test": (EVAL, self.eval_size or self.split_sizes[1]),
                         "val": (VALIDATION, self.val_size)}[split]
            self._held[split] = (*self._draw(FIXED_SEED, stream, n), None)
        return self._held[split]

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


@register
class BitMemory(GeneratedTask):
    name = "bit-memory"
    description = "recall one of 5 strings of 1000 bits from a half-masked copy"
    # Copying the visible half of the query and guessing the rest; the paper's FPT reaches 1.0.
    baseline = 0.75
    n_bits, n_patterns, patch = 1000, 5, 50

    def make_spec(self) -> TaskSpec:
        return TaskSpec(
            name=self.name, input_kind="vector", input_dim=self.patch,
            n_tokens=(self.n_patterns + 1) * self.n_bits // self.patch, n_classes=2,
            n_readout=self.n_bits // self.patch, n_predictions=self.n_bits, chance=0.5,
            threshold=0.99,
        )

    def _sample(self, g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        bits = torch.randint(0, 2, (n, self.n_patterns, self.n_bits), generator=g, dtype=torch.int8) * 2 - 1
        which = torch.randint(0, self.n_patterns, (n,), generator=g)
        query = bits[torch.arange(n), which]
        keep = torch.randint(0, 2, (n, self.n_bits), generator=g, dtype=torch.int8)
        x = torch.cat([bits, (query * keep)[:, None]], dim=1)
        return x, (query > 0).long()

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return raw.float().reshape(len(raw), self.spec.n_tokens, self.patch)


@register
class BitXOR(GeneratedTask):
    name = "bit-xor"
    description = "elementwise XOR of two 5-bit strings"
    n_bits, n_patterns = 5, 2

    def make_spec(self) -> TaskSpec:
        return TaskSpec(
            name=self.name, input_kind="vector", input_dim=1, n_tokens=self.n_patterns * self.n_bits,
            n_classes=2, n_readout=self.n_bits, n_predictions=self.n_bits, chance=0.5, threshold=0.99,
        )

    def _sample(self, g: torch.Generator, n: int) -> tuple[Tensor, Tensor]:
        bits = torch.randint(0, 2, (n, self.n_patterns, self.n_bits), generator=g, dtype=torch.int8)
        return bits, (bits.sum(dim=1) % 2).long()

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return raw.float().reshape(len(raw), self.spec.n_tokens, 1)
