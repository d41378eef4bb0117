"""Hugging Face transformers as FPT backbones: any model that takes inputs_embeds.

Parameters map to groups by the class of the module that holds them (every *Norm is a layer
norm) and then by name, with the first matching rule winning. A subclass claims the model
types it runs differently (ViT, fpt_core/backbones/vit.py).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from fpt_core.backbones.base import (
    POSITIONS_FILE,
    TINY,
    Backbone,
    BackboneSpec,
    check_depth,
    write_marker,
)
from fpt_core.backbones.hub import (
    eager_attention,
    hf_config,
    hf_from_config,
    hf_from_pretrained,
    quiet_transformers,
    use_counter_attention,
)

# (name pattern, group); group None: a parameter the FPT never uses.
HF_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(^|\.)(wte|word_embeddings|embed_tokens|shared|pooler|lm_head|mask_token)(\.|$)", None),
    (r"(^|\.)(wpe|position_embeddings|embed_positions|token_type_embeddings)(\.|$)", "positions"),
    (r"attn|attention", "attention"),
    (r"mlp|intermediate|ffn|feed_forward|(^|\.)output\.dense", "feedforward"),
)
# Config keys of every dropout: GPT-2's *_pdrop, BERT's and ViT's *_dropout_prob, LLaMA's
# attention_dropout. Heads' dropouts (GPT-2's summary_first_dropout) match too, unused here.
DROPOUT_KEY = re.compile(r"dropout|pdrop")
# Architectures whose random init scales the residual output projections by depth in current
# transformers but not in 4.1.1, the paper's (random_init: plain undoes it).
RESIDUAL_SCALED = ("gpt2",)


class HFBackbone(Backbone):
    """A transformers model called with inputs_embeds; its own position table stays in use."""

    kind = "hf"
    model_types: tuple[str, ...] = ()  # what a subclass claims; this class runs the rest
    rules = HF_RULES

    def __init__(self, model: nn.Module, source: str):
        super().__init__()
        self.model = model
        self.source = source
        config = model.config
        self.hidden = config.hidden_size
        groups = self.param_groups()
        self.needs_position_table = "positions" not in groups.values()
        self.max_positions = None if self.needs_position_table else _max_positions(config)
        # use_cache stays the model's own: without a cache (use_cache=False) transformers checks
        # the position ids for packed sequences, which reads a value back from the GPU at every
        # forward (masking_utils.find_packed_sequence_indices); a cache is a few references.
        self._call_kwargs = {}

    # ------------------------------------------------------------ the kind's facts

    @classmethod
    def for_config(cls, config: Any) -> type[HFBackbone]:
        """The class that runs a transformers config: a subclass that claims its model type."""
        for sub in cls.__subclasses__():
            if config.model_type in sub.model_types:
                return sub.for_config(config)
        return cls

    @classmethod
    def config_overrides(cls, config: Any, dropout: float) -> dict[str, Any]:
        """Config values the FPT sets: every dropout at the cell's."""
        return {key: dropout for key, value in config.to_dict().items()
                if DROPOUT_KEY.search(key) and isinstance(value, float)}

    @classmethod
    def build(cls, spec: BackboneSpec, init: str, *, depth: int | None, dropout: float,
              random_init: str) -> HFBackbone:
        config = copy.deepcopy(spec.config())
        kind = cls.for_config(config)
        check_depth(depth, kind.blocks_in(config), spec.name)
        overrides = kind.config_overrides(config, dropout)
        if init == "random":
            # The whole model is drawn, then cut to its first `depth` blocks, as for pretrained
            # weights: a config truncated first would scale its output projections' init by the
            # smaller depth (GPT-2: std 0.02/sqrt(2 * depth)), a different model than the paper's.
            for key, value in overrides.items():
                setattr(config, key, value)
            model = hf_from_config(config)
            if random_init == "plain":
                unscale_residual_init(model)
        else:
            model = hf_from_pretrained(str(spec.weights()), spec.name, **overrides)
        backbone = kind(model, spec.name)
        if depth is not None and backbone.n_blocks > depth:
            backbone.keep_blocks(depth)
        if init != "random":
            backbone.saved_positions = saved_positions(spec.weights())
        return backbone

    @classmethod
    def blocks_in(cls, config: Any) -> int:
        return config.num_hidden_layers

    @classmethod
    def tiny_config(cls, config: Any, **shape) -> Any:
        """Hidden width, heads and feed-forward width shrunk; blocks, position tables and
        grouped-query attention kept."""
        shape = {**TINY, **shape}
        config = copy.deepcopy(config)
        heads, hidden = shape["heads"], shape["hidden"]
        grouped = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) \
            < config.num_attention_heads
        config.hidden_size = hidden
        config.num_attention_heads = heads
        if getattr(config, "num_key_value_heads", None) is not None:
            config.num_key_value_heads = 1 if grouped else heads
        if getattr(config, "head_dim", None) is not None:
            config.head_dim = hidden // heads
        for key in ("intermediate_size", "n_inner"):
            if hasattr(config, key):
                setattr(config, key, shape["intermediate"])
        config.vocab_size = shape["vocab"]
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value >= shape["vocab"]:
                setattr(config, key, shape["vocab"] - 1)
        return config

    @classmethod
    def directory_config(cls, directory: Path, marker: dict) -> Any:
        return hf_config(str(directory), str(directory))

    @classmethod
    def random_init_matters(cls, config: Any) -> bool:
        return config.model_type in RESIDUAL_SCALED

    # ------------------------------------------------------------ a built backbone

    def forward(self, h: Tensor) -> Tensor:
        return self.model(inputs_embeds=h, **self._call_kwargs).last_hidden_state

    def use_counter_attention(self) -> None:
        use_counter_attention(self.model)

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        with eager_attention(self.model):
            out = self.model(inputs_embeds=h, output_attentions=True, **self._call_kwargs)
        return list(out.attentions)

    def blocks(self) -> list[nn.Module]:
        parent, attr = find_blocks(self.model)
        return list(getattr(parent, attr))

    def keep_blocks(self, k: int) -> None:
        parent, attr = find_blocks(self.model)
        setattr(parent, attr, nn.ModuleList(list(getattr(parent, attr))[:k]))
        truncate_config(self.model.config, k)

    def param_groups(self) -> dict[str, str | None]:
        groups = {}
        for module_name, module in self.model.named_modules():
            is_norm = "norm" in type(module).__name__.lower()
            for pname, _ in module.named_parameters(recurse=False):
                name = f"{module_name}.{pname}" if module_name else pname
                groups[f"model.{name}"] = "layernorm" if is_norm else self._group_by_name(name)
        return groups

    def _group_by_name(self, name: str) -> str | None:
        for pattern, group in self.rules:
            if re.search(pattern, name):
                return group
        raise RuntimeError(
            f"backbone {self.source}: parameter {name} matches no group rule; "
            "add one to HF_RULES in fpt_core/backbones/hf.py"
        )

    def used_numel(self, name: str, param: Tensor, group: str, n_tokens: int) -> int:
        if group != "positions" or param.dim() != 2:
            return param.numel()
        # only the rows a sequence of n_tokens indexes: tokens 0..T-1, token type 0
        rows = 1 if "token_type" in name else min(n_tokens, param.shape[0])
        return rows * param.shape[1]

    def attention_shape(self) -> tuple[int, int]:
        config = self.model.config
        heads = config.num_attention_heads
        head_size = getattr(config, "head_dim", None) or config.hidden_size // heads
        return self.n_blocks, heads * head_size

    def save(self, out_dir: Path) -> None:
        with quiet_transformers():
            self.model.save_pretrained(out_dir)
        write_marker(out_dir, kind=self.kind, source=self.source)


def find_blocks(model: nn.Module) -> tuple[nn.Module, str]:
    """The ModuleList that holds the model's num_hidden_layers blocks: its parent and name."""
    n = model.config.num_hidden_layers
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) == n
    ]
    if not found:
        raise RuntimeError(f"{type(model).__name__}: found no list of {n} blocks")
    name = min(found, key=lambda item: item[0].count("."))[0]
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr


def truncate_config(config, k: int) -> None:
    config.num_hidden_layers = k
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = config.layer_types[:k]


def _max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(config, key, None), int):
            return getattr(config, key)
    return None


@torch.no_grad()
def unscale_residual_init(model) -> None:
    """Redraw GPT-2's output projections (c_proj) at the config's plain initializer_range, undoing
    the depth scaling that transformers added after 4.1.1."""
    if getattr(model.config, "model_type", None) not in RESIDUAL_SCALED:
        return
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            param.normal_(0.0, model.config.initializer_range)


def saved_positions(weights: str | Path) -> Tensor | None:
    """A position table that export_backbone stored beside the weights, if any."""
    path = Path(str(weights)) / POSITIONS_FILE
    return load_file(str(path))["positions"] if path.is_file() else None
