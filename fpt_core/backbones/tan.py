"""The language model removed or replaced, the baselines of Tan et al. 2024 ("Are Language Models
Actually Useful for Time Series Forecasting?", NeurIPS 2024, arXiv 2406.16964), over any named
transformer, the base:

- none@<base> ("w/o LLM"): the base without its blocks, so the input layer feeds the output
  layer through what the base runs outside its blocks: its position table and its norms there
  (GPT-2's and LLaMA's final norm, ViT's final layernorm, BERT's embedding LayerNorm);
- attention@<base> ("LLM2Attn"): one block of the base with its feed-forward sublayer removed,
  so one multi-head self-attention layer with its residual and layer norm;
- block@<base> ("LLM2Trsf"): one block of the base.

Each keeps the base's width: hidden size, heads, feed-forward width, position table (or the
FPT's own for a rotary base), causal or not, norm placement. Registry entries are random only
(transformers' init of the base architecture with one block) and are trained whole
(`trainable: all`). Tan et al.'s own code for OneFitsAll differs in detail: its LLM2Attn is an
8-head, bias-free, post-norm attention layer, and w/o LLM keeps no positions or norm.
"""
from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fpt_core.backbones.base import Backbone, BackboneSpec, check_depth, write_marker
from fpt_core.backbones.hf import HFBackbone, truncate_config
from fpt_core.backbones.hub import hf_config
from fpt_core.errors import ConfigError


class ZeroSublayer(nn.Module):
    """A pre-norm block's feed-forward sublayer that adds nothing to the residual stream."""

    def forward(self, h: Tensor) -> Tensor:
        return torch.zeros_like(h)


class ResidualOnly(nn.Module):
    """BERT's output sublayer, norm(dense(x) + residual), without its feed-forward part: the
    residual, which the attention sublayer before it has already normalised."""

    def forward(self, h: Tensor, residual: Tensor) -> Tensor:
        return residual


# A block's feed-forward sublayer by the names transformers gives its parts, and what replaces
# each. Pre-norm blocks (GPT-2, LLaMA, ViT) add mlp(norm(h)) to h, so a zero mlp and no norm leave
# h + attention(norm(h)); BERT's post-norm block ends in output(intermediate(a), a) with a the
# attention sublayer's norm(h + attention(h)), so passing a on leaves the attention sublayer.
FEEDFORWARD_PARTS: dict[str, type[nn.Module]] = {
    "mlp": ZeroSublayer, "ln_2": nn.Identity, "post_attention_layernorm": nn.Identity,
    "layernorm_after": nn.Identity, "intermediate": nn.Identity, "output": ResidualOnly,
}


class Replaced(Backbone):
    """The base transformer (`body`, an HFBackbone) cut to `n_blocks_kept` fresh blocks."""

    n_blocks_kept: ClassVar[int] = 0

    def __init__(self, body: HFBackbone, source: str):
        super().__init__()
        self.body = body
        self.source = source
        self.hidden = body.hidden
        self.max_positions = body.max_positions
        self.needs_position_table = body.needs_position_table
        self.saved_positions = body.saved_positions

    # ------------------------------------------------------------ the kind's facts
    # Its config: the base's transformers config (or, exported, the cut one).

    @classmethod
    def build(cls, spec: BackboneSpec, init: str, *, depth: int | None, dropout: float,
              random_init: str) -> Replaced:
        check_depth(depth, cls.n_blocks_kept, spec.name)
        blocks = cls.n_blocks_kept
        cut = dataclasses.replace(spec, config=lambda: with_blocks(spec.config(), blocks))
        body = HFBackbone.build(cut, init, depth=None, dropout=dropout, random_init=random_init)
        cls.reshape(body, spec.name)
        return cls(body, spec.name)

    @classmethod
    def reshape(cls, body: HFBackbone, name: str) -> None:
        """What the kind changes in the base's blocks."""

    @classmethod
    def blocks_in(cls, config: Any) -> int:
        return cls.n_blocks_kept

    @classmethod
    def tiny_config(cls, config: Any, **shape) -> Any:
        return HFBackbone.for_config(config).tiny_config(config, **shape)

    @classmethod
    def directory_config(cls, directory: Path, marker: dict) -> Any:
        return hf_config(str(directory), str(directory))

    @classmethod
    def random_init_matters(cls, config: Any) -> bool:
        return cls.n_blocks_kept > 0 and HFBackbone.for_config(config).random_init_matters(config)

    # ------------------------------------------------------------ a built backbone

    def forward(self, h: Tensor) -> Tensor:
        return self.body(h)

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        return self.body.attention_maps(h)

    def use_counter_attention(self) -> None:
        self.body.use_counter_attention()

    def blocks(self) -> list[nn.Module]:
        return self.body.blocks()

    def keep_blocks(self, k: int) -> None:
        self.body.keep_blocks(k)

    def param_groups(self) -> dict[str, str | None]:
        return {f"body.{name}": group for name, group in self.body.param_groups().items()}

    def used_numel(self, name: str, param: Tensor, group: str, n_tokens: int) -> int:
        return self.body.used_numel(name.removeprefix("body."), param, group, n_tokens)

    def attention_shape(self) -> tuple[int, int]:
        return self.body.attention_shape()

    def save(self, out_dir: Path) -> None:
        self.body.save(out_dir)
        write_marker(out_dir, kind=self.kind, source=self.source)


class NoLLM(Replaced):
    kind = "none"
    n_blocks_kept = 0


class LLM2Attn(Replaced):
    kind = "attention"
    n_blocks_kept = 1

    @classmethod
    def reshape(cls, body: HFBackbone, name: str) -> None:
        for block in body.blocks():
            for part, replacement in FEEDFORWARD_PARTS.items():
                if isinstance(getattr(block, part, None), nn.Module):
                    setattr(block, part, replacement())
        left = set(body.param_groups().values())
        if "feedforward" in left or "attention" not in left:
            raise ConfigError(
                f"backbone {name}: cannot reduce a {type(body.blocks()[0]).__name__} to its "
                f"attention sublayer (known feed-forward parts: {', '.join(FEEDFORWARD_PARTS)})"
            )


class LLM2Trsf(Replaced):
    kind = "block"
    n_blocks_kept = 1


REPLACEMENTS: dict[str, type[Replaced]] = {cls.kind: cls for cls in (NoLLM, LLM2Attn, LLM2Trsf)}


def with_blocks(config: Any, k: int) -> Any:
    """A copy of a transformers config with k blocks."""
    config = copy.deepcopy(config)
    truncate_config(config, k)
    return config
