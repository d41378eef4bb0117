"""The backbone registry, and building a backbone by name with an initialisation and depth.

A backbone name is a registry key, kind@base for one of Tan et al.'s baselines over a registry
transformer (fpt_core/backbones/tan.py), a directory (a transformers model directory or one that
export_backbone wrote), or a Hugging Face model id "org/name". Registry configs are written out
here, so random initialisation needs no network; pretrained weights come from the hub (where
reachable), from a package (minilm-l6, smollm2-135m) or from a directory.

To add a backbone: one BackboneSpec entry in BACKBONES. A transformers model that takes
inputs_embeds needs nothing else when its parameter names follow HF_RULES (fpt_core/backbones/hf.py).
A new kind of backbone: a Backbone subclass (fpt_core/backbones/base.py) listed in KINDS.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import torch

from fpt_core.atomic import atomic_dir
from fpt_core.backbones.base import (
    Backbone,
    BackboneSpec,
    read_marker,
    redraw_with_statistics,
)
from fpt_core.backbones.hf import HFBackbone
from fpt_core.backbones.hub import hf_config
from fpt_core.backbones.lstm import LSTMBackbone
from fpt_core.backbones.offline import minilm_dir, smollm2_dir
from fpt_core.backbones.tan import REPLACEMENTS, LLM2Attn, LLM2Trsf, NoLLM
from fpt_core.backbones.vit import ViTBackbone
from fpt_core.catalog import BACKBONES as SUMMARIES
from fpt_core.errors import ConfigError

INITS = ("pretrained", "random", "statistics")
# Random GPT-2 weights: `scaled` as current transformers draw them (the attention and MLP output
# projections, c_proj, at std 0.02 / sqrt(2 x blocks)); `plain` as the transformers 4.1.1 of the
# paper's code did, every weight at std 0.02. Other architectures draw the same either way.
RANDOM_INITS = ("scaled", "plain")
# Every kind of backbone, by the name its specs and export markers give it.
KINDS: dict[str, type[Backbone]] = {
    cls.kind: cls for cls in (HFBackbone, ViTBackbone, LSTMBackbone, NoLLM, LLM2Attn, LLM2Trsf)
}


def kind_of(spec: BackboneSpec) -> type[Backbone]:
    return KINDS[spec.kind]


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

    # google/vit-base-patch16-224-in21k and google/vit-base-patch16-224 (a classifier on top,
    # which the FPT does not load) share it; ViTBackbone sets timm's layer norm eps.
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


class Registry(MutableMapping):
    """The named backbones, and kind@base for each of Tan et al.'s baselines over a named
    transformer. `in` and [] accept both; iterating gives the named entries alone, as `fpt
    backbones` lists them beside the kind@<base> syntax (fpt_core/catalog.py)."""

    def __init__(self, specs: Iterable[BackboneSpec]):
        self._named = {spec.name: spec for spec in specs}

    def __getitem__(self, name: str) -> BackboneSpec:
        if name in self._named:
            return self._named[name]
        kind, _, base = name.partition("@")
        base_spec = self._named.get(base)
        if kind in REPLACEMENTS and base_spec and issubclass(kind_of(base_spec), HFBackbone):
            summary = SUMMARIES[f"{kind}@<base>"].replace("<base>", base)
            return BackboneSpec(name, kind, summary, base_spec.config)
        raise KeyError(name)

    def __setitem__(self, name: str, spec: BackboneSpec) -> None:
        self._named[name] = spec

    def __delitem__(self, name: str) -> None:
        del self._named[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._named)

    def __len__(self) -> int:
        return len(self._named)


BACKBONES = Registry(
    BackboneSpec(name, kind, SUMMARIES[name], config, weights)
    for name, kind, config, weights in (
        ("gpt2", "hf", _gpt2(12, 768, 12), _hub("openai-community/gpt2")),
        ("gpt2-medium", "hf", _gpt2(24, 1024, 16), _hub("openai-community/gpt2-medium")),
        ("gpt2-large", "hf", _gpt2(36, 1280, 20), _hub("openai-community/gpt2-large")),
        ("gpt2-xl", "hf", _gpt2(48, 1600, 25), _hub("openai-community/gpt2-xl")),
        ("gpt2-tiny", "hf", _gpt2(2, 64, 2, n_positions=128, vocab=256), None),
        ("smollm2-135m", "hf", _smollm2_135m, smollm2_dir),
        ("minilm-l6", "hf", _minilm_config, minilm_dir),
        ("bert-base", "hf", _bert_base, _hub("google-bert/bert-base-uncased")),
        ("vit-base", "vit", _vit_base, _hub("google/vit-base-patch16-224-in21k")),
        ("vit-base-in21k-ft-in1k", "vit", _vit_base, _hub("google/vit-base-patch16-224")),
        ("lstm", "lstm", lambda: {"hidden": 768, "n_layer": 3}, None),
    )
)

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
        kind = KINDS.get(marker.get("kind"), HFBackbone)  # a plain transformers directory
        return BackboneSpec(name, kind.kind, f"directory {name}",
                            lambda: kind.directory_config(path, marker), lambda: path)
    if looks_like_path(name) or (HF_ID.match(name) and Path(name.split("/")[0]).is_dir()):
        raise ConfigError(f"backbone: directory {name} does not exist")
    if HF_ID.match(name):
        return BackboneSpec(name, HFBackbone.kind, f"hub model {name}",
                            lambda: hf_config(name, name), _hub(name))
    if name.partition("@")[0] in REPLACEMENTS:
        raise ConfigError(f"backbone: {name}: the base after @ must be a registry transformer; "
                          f"allowed: {', '.join(transformer_names())}")
    raise ConfigError(
        f"backbone: unknown value {name!r}; allowed: {', '.join(BACKBONES)}, "
        f"{', '.join(f'{kind}@<base>' for kind in REPLACEMENTS)}, "
        "a Hugging Face model id (org/name) or a local directory"
    )


def transformer_names() -> list[str]:
    """The registry names that kind@base accepts as its base."""
    return [name for name in BACKBONES if issubclass(kind_of(BACKBONES[name]), HFBackbone)]


def random_init_matters(name: str) -> bool:
    """Whether random_init can change a random backbone's weights: GPT-2 in the registry (and a
    block of it), and any directory or hub model (its architecture is only known once its config
    is read, and a cell's id must not wait for that)."""
    if name not in BACKBONES:
        return True
    spec = BACKBONES[name]
    return kind_of(spec).random_init_matters(spec.config())


def n_blocks_of(name: str) -> int:
    """Blocks of a backbone, from its config alone."""
    spec = resolve(name)
    return kind_of(spec).blocks_in(spec.config())


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
    """A backbone with init (pretrained | random | statistics), its first `depth` blocks kept, and
    every dropout it has (embedding, attention, residual, MLP, recurrent) at `dropout`.

    Everything drawn at random is drawn from `seed`; every parameter comes back frozen.
    """
    spec = resolve(name)
    check_init(spec, init)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = kind_of(spec).build(spec, init, depth=depth, dropout=dropout,
                                       random_init=random_init)
    if init == "statistics":
        redraw_with_statistics(backbone.parameters(), seed)
        if backbone.saved_positions is not None:
            redraw_with_statistics([backbone.saved_positions], seed + 1)
    backbone.requires_grad_(False)
    return backbone


def write_tiny_backbones(out_dir: str | Path, names: Iterable[str], seed: int = 0,
                         **shape: Any) -> dict[str, Path]:
    """For each registry name, a random stand-in of its kind, as many blocks and TINY wide
    (base.TINY; `shape` overrides it, hidden=16 say), in out_dir/<name>/: a smoke run's backbone.

    Written as export_backbone writes a backbone (weights, config, marker), so `backbone=<dir>`
    loads it with any init through the registry's directory path. Each is drawn from `seed`
    alone, so the set of names asked does not change any one of them.
    """
    out = {}
    for name in names:
        if name not in BACKBONES:
            raise ConfigError(f"backbone: no tiny stand-in for {name!r}; allowed: "
                              f"{', '.join(BACKBONES)} or kind@base")
        spec = BACKBONES[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = kind_of(spec).tiny(spec, **shape)
        out[name] = atomic_dir(Path(out_dir) / name, backbone.save)
    return out
