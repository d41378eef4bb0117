"""The paper's two synthetic bit tasks, generated on the fly.

Following kzl/universal-computation: bit-memory shows five strings of +-1 bits and then one of
them again with about half its bits zeroed, and asks for the whole string back; bit-xor shows two
strings of 0/1 bits and asks for their elementwise XOR. Strings are cut into patches, one patch
per token, and the last tokens (those holding the query or the second string) are read out.
"""
from __future__ import annotations

import torch
from torch import Tensor

from fpt_core.tasks.base import GeneratedTask, TaskSpec


class BitMemory(GeneratedTask):
    name = "bit-memory"
    n_bits, n_patterns, patch = 1000, 5, 50

    def make_spec(self) -> TaskSpec:
        return TaskSpec(
            name=self.name, input_kind="vector", input_dim=self.patch,
            n_tokens=(self.n_patterns + 1) * self.n_bits // self.patch, n_classes=2,
            n_readout=self.n_bits // self.patch, n_predictions=self.n_bits, chance=0.5,
            # Copying the visible half and guessing the rest scores 0.75; the paper's FPT reaches 1.0.
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


class BitXOR(GeneratedTask):
    name = "bit-xor"
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
