"""The backbone registry, and building a backbone by name with an initialisation and depth.

A backbone name is a registry key, a directory (a transformers model directory or one that
export_backbone wrote), or a Hugging Face model id "org/name". Registry configs are written
out here, so random initialisation needs no network; pretrained weights come from the hub
(where reachable), from a package (minilm-l6, smollm2-135m) or from a directory.

To add a backbone: one BackboneSpec entry in BACKBONES. A transformers model that takes
inputs_embeds needs nothing else when its parameter names follow HF_RULES (fpt_core/backbones/hf.py).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from fpt_core.backbones.base import (
    POSITIONS_FILE,
    Backbone,
    check_depth,
    read_marker,
    redraw_with_statistics,
)
from fpt_core.backbones.hf import (
    HFBackbone,
    ViTBackbone,
    hf_config,
    hf_from_config,
    hf_from_pretrained,
)
from fpt_core.backbones.lstm import LSTMBackbone
from fpt_core.backbones.offline import minilm_dir, smollm2_dir
from fpt_core.catalog import BACKBONES as SUMMARIES
from fpt_core.errors import ConfigError

INITS = ("pretrained", "random", "statistics")
# Random GPT-2 weights: `scaled` as current transformers draw them (the attention and MLP output
# projections, c_proj, at std 0.02 / sqrt(2 x blocks)); `plain` as the transformers 4.1.1 of the
# paper's code did, every weight at std 0.02. Other architectures draw the same either way.
RANDOM_INITS = ("scaled", "plain")
# ViT ran with drop_rate = attn_drop_rate = the cell's dropout in the paper; other backbones
# keep their config's own dropout.
DROPOUT_KEYS = {"vit": ("hidden_dropout_prob", "attention_probs_dropout_prob")}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    kind: str
    summary: str
    config: Callable[[], Any]  # the architecture, offline for registry entries
    weights: Callable[[], str | Path] | None = None  # pretrained weights; None: random only


def _gpt2(n_layer: int, n_embd: int, n_head: int, n_positions: int = 1024, vocab: int = 50257):
    def config():
        from transformers import GPT2Config

        return GPT2Config(
            n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=n_positions,
            vocab_size=vocab, bos_token_id=vocab - 1, eos_token_id=vocab - 1,
        )

    return config


def _vit_base():
    from transformers import ViTConfig

    # google/vit-base-patch16-224-in21k
    return ViTConfig(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
        hidden_act="gelu", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        initializer_range=0.02, layer_norm_eps=1e-12, image_size=224, patch_size=16,
        num_channels=3, qkv_bias=True,
    )


def _bert_base():
    from transformers import BertConfig

    # google-bert/bert-base-uncased
    return BertConfig(
        vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
        intermediate_size=3072, hidden_act="gelu", hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1, max_position_embeddings=512, type_vocab_size=2,
        initializer_range=0.02, layer_norm_eps=1e-12,
    )


def _smollm2_135m():
    from transformers import LlamaConfig

    # SmolLM2-135M-Instruct, as its GGUF file describes it
    return LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, head_dim=64, hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False,
        initializer_range=0.02, bos_token_id=1, eos_token_id=2, pad_token_id=2,
    )


def _minilm_config():
    return hf_config(str(minilm_dir()), "minilm-l6")


def _hub(repo: str) -> Callable[[], str]:
    return lambda: repo


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("gpt2", "hf", SUMMARIES["gpt2"],
                     _gpt2(12, 768, 12), _hub("openai-community/gpt2")),
        BackboneSpec("gpt2-medium", "hf", SUMMARIES["gpt2-medium"],
                     _gpt2(24, 1024, 16), _hub("openai-community/gpt2-medium")),
        BackboneSpec("gpt2-large", "hf", SUMMARIES["gpt2-large"],
                     _gpt2(36, 1280, 20), _hub("openai-community/gpt2-large")),
        BackboneSpec("gpt2-xl", "hf", SUMMARIES["gpt2-xl"],
                     _gpt2(48, 1600, 25), _hub("openai-community/gpt2-xl")),
        BackboneSpec("gpt2-tiny", "hf", SUMMARIES["gpt2-tiny"],
                     _gpt2(2, 64, 2, n_positions=128, vocab=256)),
        BackboneSpec("smollm2-135m", "hf", SUMMARIES["smollm2-135m"],
                     _smollm2_135m, smollm2_dir),
        BackboneSpec("minilm-l6", "hf", SUMMARIES["minilm-l6"],
                     _minilm_config, minilm_dir),
        BackboneSpec("bert-base", "hf", SUMMARIES["bert-base"],
                     _bert_base, _hub("google-bert/bert-base-uncased")),
        BackboneSpec("vit-base", "vit", SUMMARIES["vit-base"],
                     _vit_base, _hub("google/vit-base-patch16-224-in21k")),
        BackboneSpec("lstm", "lstm", SUMMARIES["lstm"],
                     lambda: {"hidden": 768, "n_layer": 3}),
    )
}

HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def backbone_names() -> list[str]:
    return list(BACKBONES)


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def is_known_backbone(name: str) -> bool:
    """A registry name, an existing directory, a hub id, or a path a pipeline stage will write."""
    return (
        name in BACKBONES
        or Path(name).expanduser().is_dir()
        or bool(HF_ID.match(name))
        or looks_like_path(name)
    )


def resolve(name: str) -> BackboneSpec:
    if name in BACKBONES:
        return BACKBONES[name]
    path = Path(name).expanduser()
    if path.is_dir():
        marker = read_marker(path) or {}
        if marker.get("kind") == "lstm":
            shape = {"hidden": marker["hidden"], "n_layer": marker["n_layer"]}
            return BackboneSpec(name, "lstm", f"LSTM from {name}", lambda: shape, lambda: path)
        kind = marker.get("kind", "auto")
        return BackboneSpec(name, kind, f"directory {name}",
                            lambda: hf_config(str(path), name), lambda: str(path))
    if looks_like_path(name) or (HF_ID.match(name) and Path(name.split("/")[0]).is_dir()):
        raise ConfigError(f"backbone: directory {name} does not exist")
    if HF_ID.match(name):
        return BackboneSpec(name, "auto", f"hub model {name}",
                            lambda: hf_config(name, name), _hub(name))
    raise ConfigError(
        f"backbone: unknown value {name!r}; allowed: {', '.join(BACKBONES)}, "
        "a Hugging Face model id (org/name) or a local directory"
    )


def random_init_matters(name: str) -> bool:
    """Whether random_init can change a random backbone's weights: GPT-2 in the registry, and any
    directory or hub model (its architecture is only known once its config is read, and a cell's
    id must not wait for that)."""
    return name.startswith("gpt2") if name in BACKBONES else True


def n_blocks_of(name: str) -> int:
    """Blocks of a backbone, from its config alone."""
    spec = resolve(name)
    config = spec.config()
    return config["n_layer"] if spec.kind == "lstm" else config.num_hidden_layers


def check_init(spec: BackboneSpec, init: str) -> None:
    if init not in INITS:
        raise ConfigError(f"init: unknown value {init!r}; allowed: {', '.join(INITS)}")
    if init != "random" and spec.weights is None:
        raise ConfigError(
            f"init: backbone {spec.name} has no pretrained weights, so {init} is not available; "
            "allowed: random"
        )


def build_backbone(
    name: str, init: str, *, seed: int = 0, depth: int | None = None, dropout: float = 0.1,
    random_init: str = "scaled",
) -> Backbone:
    """A backbone with init (pretrained | random | statistics), its first `depth` blocks kept.

    Everything drawn at random is drawn from `seed`; every parameter comes back frozen.
    """
    spec = resolve(name)
    check_init(spec, init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if spec.kind == "lstm":
            backbone = _build_lstm(spec, init, depth, dropout)
        else:
            backbone = _build_hf(spec, init, depth, dropout, random_init)
    if init == "statistics":
        redraw_with_statistics(backbone.parameters(), seed)
        if backbone.saved_positions is not None:
            redraw_with_statistics([backbone.saved_positions], seed + 1)
    backbone.requires_grad_(False)
    return backbone


def _build_hf(spec: BackboneSpec, init: str, depth: int | None, dropout: float,
              random_init: str) -> Backbone:
    config = copy.deepcopy(spec.config())
    check_depth(depth, config.num_hidden_layers, spec.name)
    kind = spec.kind
    if kind == "auto":
        kind = "vit" if config.model_type == "vit" else "hf"
    overrides = {key: dropout for key in DROPOUT_KEYS.get(kind, ())}
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
    backbone = (ViTBackbone if kind == "vit" else HFBackbone)(model, spec.name)
    if depth is not None and backbone.n_blocks > depth:
        backbone.keep_blocks(depth)
    if init != "random":
        backbone.saved_positions = _saved_positions(spec)
    return backbone


@torch.no_grad()
def unscale_residual_init(model) -> None:
    """Redraw GPT-2's output projections (c_proj) at the config's plain initializer_range, undoing
    the depth scaling that transformers added after 4.1.1."""
    if getattr(model.config, "model_type", None) != "gpt2":
        return
    for name, param in model.named_parameters():
        if name.endswith("c_proj.weight"):
            param.normal_(0.0, model.config.initializer_range)


def _build_lstm(spec: BackboneSpec, init: str, depth: int | None, dropout: float) -> Backbone:
    shape = spec.config()
    check_depth(depth, shape["n_layer"], spec.name)
    backbone = LSTMBackbone(shape["hidden"], shape["n_layer"], dropout, source=spec.name)
    if init != "random":
        backbone.load_weights(Path(spec.weights()))
    if depth is not None:
        backbone.keep_blocks(depth)
    return backbone


def _saved_positions(spec: BackboneSpec):
    """A position table that export_backbone stored beside the weights, if any."""
    path = Path(str(spec.weights())) / POSITIONS_FILE
    if not path.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(path))["positions"]
