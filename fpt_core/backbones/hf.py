"""Hugging Face transformers as FPT backbones: any model that takes inputs_embeds, and ViT.

Parameters map to groups by the class of the module that holds them (every *Norm is a layer
norm) and then by name, with the first matching rule winning.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from fpt_core.backbones.base import Backbone, write_marker
from fpt_core.errors import ConfigError, DataError

# (name pattern, group); group None: a parameter the FPT never uses.
HF_RULES: tuple[tuple[str, str | None], ...] = (
    (r"(^|\.)(wte|word_embeddings|embed_tokens|shared|pooler|lm_head|mask_token)(\.|$)", None),
    (r"(^|\.)(wpe|position_embeddings|embed_positions|token_type_embeddings)(\.|$)", "positions"),
    (r"attn|attention", "attention"),
    (r"mlp|intermediate|ffn|feed_forward|(^|\.)output\.dense", "feedforward"),
)
# ViT's patch embedding, class token and position table are bypassed: the FPT feeds
# embeddings straight to the blocks and adds a zero-initialised table of its own.
VIT_RULES = ((r"^embeddings\.", None),) + HF_RULES


class HFBackbone(Backbone):
    """A transformers model called with inputs_embeds; its own position table stays in use."""

    kind = "hf"
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
        accepted = inspect.signature(model.forward).parameters
        self._call_kwargs = {"use_cache": False} if "use_cache" in accepted else {}

    def forward(self, h: Tensor) -> Tensor:
        return self.model(inputs_embeds=h, **self._call_kwargs).last_hidden_state

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        with eager_attention(self.model):
            out = self.model(inputs_embeds=h, output_attentions=True, **self._call_kwargs)
        return list(out.attentions)

    def _blocks_site(self) -> tuple[nn.Module, str]:
        return find_blocks(self.model)

    @property
    def n_blocks(self) -> int:
        parent, attr = self._blocks_site()
        return len(getattr(parent, attr))

    def keep_blocks(self, k: int) -> None:
        parent, attr = self._blocks_site()
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

    def save(self, out_dir: Path) -> None:
        with quiet_transformers():
            self.model.save_pretrained(out_dir)
        write_marker(out_dir, kind=self.kind, source=self.source)


class ViTBackbone(HFBackbone):
    """ViT blocks run directly on embeddings, as the paper ran timm's ViT."""

    kind = "vit"
    rules = VIT_RULES

    def __init__(self, model: nn.Module, source: str):
        super().__init__(model, source)
        self.needs_position_table = True
        self.max_positions = None
        # the paper's pos_drop after adding positions
        self.drop = nn.Dropout(model.config.hidden_dropout_prob)

    def forward(self, h: Tensor) -> Tensor:
        h = self.drop(h)
        parent, attr = self._blocks_site()
        for block in getattr(parent, attr):
            h = block(h)
            h = h[0] if isinstance(h, tuple) else h
        return self.model.layernorm(h)

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        parent, attr = self._blocks_site()
        maps: list[Tensor] = []
        hooks = [
            block.attention.register_forward_hook(lambda m, args, out: maps.append(out[1]))
            for block in getattr(parent, attr)
        ]
        try:
            with eager_attention(self.model):
                self.forward(h)
        finally:
            for hook in hooks:
                hook.remove()
        return maps


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


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """Eager attention (which returns its weights) for the duration of one call."""
    before = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


@contextlib.contextmanager
def quiet_transformers():
    """Silence load reports and progress bars; errors still raise."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _with_sdpa(make, *args, **kwargs):
    """Fused attention where the architecture supports it, its default otherwise."""
    try:
        return make(*args, attn_implementation="sdpa", **kwargs)
    except (ValueError, ImportError):
        return make(*args, **kwargs)  # a real error raises again here


def fuse_activations(model: nn.Module) -> nn.Module:
    """GPT-2's gelu_new runs as eight Python elementwise ops (and their backward); GELUTanh is
    the same function in one kernel."""
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(module, name, GELUTanh())
    return model


def hf_from_config(config) -> nn.Module:
    from transformers import AutoModel

    with quiet_transformers():
        model = _with_sdpa(AutoModel.from_config, config, dtype=torch.float32)
    return fuse_activations(model.float())


# The last pretrained model loaded, as loaded: a pack trains many cells of one backbone in one
# process, and each gets a copy instead of reading the weights again.
_LOADED: dict[tuple, nn.Module] = {}


def hf_from_pretrained(source: str, backbone: str, **config_overrides) -> nn.Module:
    key = (source, tuple(sorted(config_overrides.items())))
    if key not in _LOADED:
        before = torch.random.get_rng_state()
        model = _load_pretrained(source, backbone, **config_overrides)
        if not torch.equal(before, torch.random.get_rng_state()):
            return model  # drew weights at random (e.g. a head absent from the checkpoint): a
            # copy would carry the first cell's draw, so each cell loads its own
        _LOADED.clear()
        _LOADED[key] = model
    return copy.deepcopy(_LOADED[key])


def _load_pretrained(source: str, backbone: str, **config_overrides) -> nn.Module:
    from transformers import AutoModel

    try:
        with quiet_transformers():
            model = _with_sdpa(
                AutoModel.from_pretrained, source, dtype=torch.float32, **config_overrides
            )
    except OSError as err:
        raise hub_error(backbone, source, err) from None
    return fuse_activations(model.float())


def hf_config(source: str, backbone: str):
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(source)
    except OSError as err:
        raise hub_error(backbone, source, err) from None


def hub_error(backbone: str, source: str, err: Exception) -> Exception:
    if Path(source).is_dir():
        return ConfigError(
            f"backbone: {source} is not a loadable model directory (no config.json or weights: "
            f"{type(err).__name__})"
        )
    return DataError(
        f"backbone {backbone}: cannot load {source}: not in the local Hugging Face cache and the "
        f"hub is unreachable (or HF_HUB_OFFLINE=1, or no such model); on a machine with internet run "
        f"`hf download {source} --local-dir DIR`, copy DIR here and pass backbone=DIR"
    )
