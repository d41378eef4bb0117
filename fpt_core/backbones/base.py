"""What every backbone provides to the FPT, and the helpers they share.

A backbone is the frozen body between the FPT's input and output layers: it takes input
embeddings (B, T, H) and returns final hidden states (B, T, H), its final norm included.
Every parameter it holds maps to one of the parameter groups, or to None when the FPT never
uses it (the backbone's own token embedding, a pooler, patch embeddings).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor, nn

from fpt_core.errors import ConfigError

MARKER = "fpt_backbone.json"  # names the kind and source of an exported backbone directory
POSITIONS_FILE = "fpt_positions.safetensors"  # a position table the FPT added, exported with it
# The parameter groups every backbone maps its parameters to; the paper's FPT trains four.
GROUPS = ("input", "positions", "layernorm", "attention", "feedforward", "output")
FPT_GROUPS = ("input", "positions", "layernorm", "output")


class Backbone(nn.Module):
    source: str = ""  # registry name, hub id or directory it came from
    kind: str = ""  # "hf", "vit" or "lstm": how it is run and exported
    hidden: int = 0
    max_positions: int | None = None  # rows of its own position table; None: no limit
    needs_position_table: bool = False  # the FPT adds a learned table at the input
    saved_positions: Tensor | None = None  # a table exported with it, for the FPT's own table

    def forward(self, h: Tensor) -> Tensor:
        raise NotImplementedError

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        raise RuntimeError(f"attention_maps: backbone {self.source} has no attention")

    @property
    def n_blocks(self) -> int:
        raise NotImplementedError

    def keep_blocks(self, k: int) -> None:
        raise NotImplementedError

    def param_groups(self) -> dict[str, str | None]:
        """Parameter name -> group, None for parameters the FPT never uses."""
        raise NotImplementedError

    def used_numel(self, name: str, param: Tensor, group: str, n_tokens: int) -> int:
        """Entries of a parameter that a sequence of n_tokens touches."""
        return param.numel()

    def save(self, out_dir: Path) -> None:
        raise NotImplementedError


def check_depth(depth: int | None, n_blocks: int, source: str) -> None:
    if depth is not None and not 1 <= depth <= n_blocks:
        raise ConfigError(
            f"depth: {depth} is out of range for backbone {source} with {n_blocks} blocks; "
            f"allowed: 1..{n_blocks} or null"
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
