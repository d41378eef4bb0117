"""What every backbone provides to the FPT, and the helpers they share.

A backbone is the frozen body between the FPT's input and output layers: it takes input
embeddings (B, T, H) and returns final hidden states (B, T, H), its final norm included.
Every parameter it holds maps to one of the parameter groups, or to None when the FPT never
uses it (the backbone's own token embedding, a pooler, patch embeddings).

Each kind of backbone is a subclass that owns its facts: how it is built from a registry entry
(a BackboneSpec: config and weights) with an init and a depth, its block count from its config
alone, its tiny random stand-in for smoke runs, and the shape the FLOP model reads.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fpt_core.errors import ConfigError

MARKER = "fpt_backbone.json"  # names the kind and source of an exported backbone directory
POSITIONS_FILE = "fpt_positions.safetensors"  # a position table the FPT added, exported with it
# The parameter groups every backbone maps its parameters to; the paper's FPT trains four.
GROUPS = ("input", "positions", "layernorm", "attention", "feedforward", "output")
FPT_GROUPS = ("input", "positions", "layernorm", "output")
# A smoke run's stand-ins: this wide, with every block of the real backbone. The vocabulary
# shrinks too: the FPT never uses a backbone's token embedding, and GPT-2's alone is 50257 rows.
TINY = {"hidden": 32, "heads": 2, "intermediate": 64, "vocab": 64}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    name: str
    kind: str  # the Backbone subclass that builds it, by its `kind` (as export markers record it)
    summary: str
    config: Callable[[], Any]  # the architecture, offline for registry entries
    weights: Callable[[], str | Path] | None = None  # pretrained weights; None: random only


def is_matrix(module: nn.Module) -> bool:
    """A weight matrix every token passes through: nn.Linear, or GPT-2's transposed Conv1D."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


class Backbone(nn.Module):
    kind: ClassVar[str] = ""  # how export markers name the class
    # Kernel-launch units of one block per step (or evaluation batch), and per block and token
    # where a block loops over tokens in Python; the FLOP model (fpt_core/plan.py) counts these.
    launch_units_per_block: ClassVar[float] = 1.0
    launch_units_per_token: ClassVar[float] = 0.0

    source: str = ""  # registry name, hub id or directory it came from
    hidden: int = 0
    max_positions: int | None = None  # rows of its own position table; None: no limit
    needs_position_table: bool = False  # the FPT adds a learned table at the input
    saved_positions: Tensor | None = None  # a table exported with it, for the FPT's own table

    # ------------------------------------------------------------ the kind's facts

    @classmethod
    def build(cls, spec: BackboneSpec, init: str, *, depth: int | None, dropout: float,
              random_init: str) -> Backbone:
        """The backbone of `spec` with init pretrained (its weights), random or statistics (its
        weights, to be redrawn by the caller), its first `depth` blocks kept, and every dropout
        at `dropout`. Random draws come from torch's global generator."""
        raise NotImplementedError

    @classmethod
    def blocks_in(cls, config: Any) -> int:
        """Blocks of a backbone of this kind, from its config alone."""
        raise NotImplementedError

    @classmethod
    def tiny_config(cls, config: Any, **shape) -> Any:
        """A copy of `config`, as narrow as TINY (or `shape`), with the same blocks."""
        raise NotImplementedError

    @classmethod
    def tiny(cls, spec: BackboneSpec, **shape) -> Backbone:
        """A random stand-in of the same kind and blocks, TINY wide: a smoke run's backbone."""
        narrow = dataclasses.replace(spec, config=lambda: cls.tiny_config(spec.config(), **shape),
                                     weights=None)
        return cls.build(narrow, "random", depth=None, dropout=0.0, random_init="scaled")

    @classmethod
    def directory_config(cls, directory: Path, marker: dict) -> Any:
        """The config of a directory this kind's `save` wrote."""
        raise NotImplementedError

    @classmethod
    def random_init_matters(cls, config: Any) -> bool:
        """Whether random_init (scaled | plain) can change this backbone's random weights."""
        return False

    # ------------------------------------------------------------ a built backbone

    def forward(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        raise RuntimeError(f"attention_maps: backbone {self.source} has no attention")

    def use_counter_attention(self) -> None:
        """Drop attention probabilities by fpt_core.dropout's hash, not a generator (the FPT
        asks this when it is built); a backbone without attention dropout has nothing to do."""

    def blocks(self) -> list[nn.Module]:
        """The kept blocks, in order."""
        raise NotImplementedError

    @property
    def n_blocks(self) -> int:
        return len(self.blocks())

    def keep_blocks(self, k: int) -> None:
        raise NotImplementedError

    def param_groups(self) -> dict[str, str | None]:
        """Parameter name -> group, None for parameters the FPT never uses."""
        raise NotImplementedError

    def used_numel(self, name: str, param: Tensor, group: str, n_tokens: int) -> int:
        """Entries of a parameter that a sequence of n_tokens touches."""
        return param.numel()

    def attention_shape(self) -> tuple[int, int]:
        """(layers that attend over all tokens, heads x head size of each)."""
        raise NotImplementedError

    def matrices(self) -> tuple[tuple[int, str], ...]:
        """(entries, group) of every attention or feed-forward matrix each token passes, in
        block order; matrices the FPT never uses (a pooler, patch embeddings) are left out."""
        groups = self.param_groups()
        return tuple(
            (module.weight.numel(), groups[f"{name}.weight"])
            for name, module in self.named_modules()
            if is_matrix(module) and groups.get(f"{name}.weight") in ("attention", "feedforward")
        )

    def save(self, out_dir: Path) -> None:
        raise NotImplementedError


def check_depth(depth: int | None, n_blocks: int, source: str) -> None:
    if depth is None or 1 <= depth <= n_blocks:
        return
    allowed = f"1..{n_blocks} or null" if n_blocks else "null (it has no blocks)"
    raise ConfigError(
        f"depth: {depth} is out of range for backbone {source} with {n_blocks} blocks; "
        f"allowed: {allowed}"
    )


@torch.no_grad()
def redraw_with_statistics(tensors: Iterable[Tensor], seed: int) -> None:
    """Replace every tensor by draws from a normal with that tensor's own mean and std."""
    gen = torch.Generator().manual_seed(seed)
    for t in tensors:
        mean = t.mean()
        std = t.std() if t.numel() > 1 else torch.zeros((), dtype=t.dtype)
        draw = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        t.copy_(draw * std + mean)


def write_marker(out_dir: Path, **fields) -> None:
    (Path(out_dir) / MARKER).write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")


def read_marker(directory: Path) -> dict | None:
    path = Path(directory) / MARKER
    return json.loads(path.read_text()) if path.is_file() else None


def cache_root() -> Path:
    return Path(os.environ.get("FPT_CACHE", "~/.cache/fpt-ablations")).expanduser()
