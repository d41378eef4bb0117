"""Model helpers shared by tests."""
from pathlib import Path
from types import SimpleNamespace

from torch import nn
from transformers import BertConfig, GPT2Config, GPT2Model, LlamaConfig, ViTConfig

from fpt_core.backbones import registry
from fpt_core.backbones.base import FPT_GROUPS, BackboneSpec

BIT_XOR = dict(name="bit-xor", input_kind="vector", input_dim=1, n_tokens=10, n_classes=2,
               n_readout=5, n_predictions=5, chance=0.5, threshold=1.0)


def make_spec(**overrides):
    return SimpleNamespace(**{**BIT_XOR, **overrides})


def make_cell(**overrides):
    values = dict(backbone="gpt2-tiny", init="random", trainable=FPT_GROUPS, depth=None, seed=0,
                  dropout=0.1, random_init="scaled")
    return SimpleNamespace(**{**values, **overrides})


def tiny_configs() -> dict:
    """Two-block random stand-ins of the registry's architectures, with their own configs'
    dropouts (BERT 0.1, LLaMA 0.0, ViT 0.0), so that a test sees what the cell changes."""
    shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return {
        "tiny-bert": ("hf", BertConfig(vocab_size=64, max_position_embeddings=64, **shape)),
        "tiny-llama": ("hf", LlamaConfig(vocab_size=64, num_key_value_heads=1, head_dim=16,
                                         max_position_embeddings=64, **shape)),
        "tiny-vit": ("vit", ViTConfig(image_size=16, patch_size=4, **shape)),
        "tiny-lstm": ("lstm", {"hidden": 16, "n_layer": 2}),
    }


def register_tiny(monkeypatch) -> list[str]:
    """The tiny_configs backbones in the registry for one test; their names."""
    for name, (kind, config) in tiny_configs().items():
        monkeypatch.setitem(registry.BACKBONES, name,
                            BackboneSpec(name, kind, "test", lambda config=config: config))
    return list(tiny_configs())


def dropout_rates(module: nn.Module) -> set[float]:
    """Every dropout probability a module applies in train mode: its nn.Dropout layers, and the
    rates attention modules pass to torch's fused attention (LLaMA's, ViT's attention_dropout)."""
    rates = {m.p for m in module.modules() if isinstance(m, nn.Dropout)}
    return rates | {m.attention_dropout for m in module.modules()
                    if isinstance(getattr(m, "attention_dropout", None), float)}


def dropout_free_gpt2(directory: Path) -> str:
    """A tiny random GPT-2 saved with every dropout at 0; backbone=<it> with init=pretrained and a
    cell dropout of 0 then trains without any dropout, through the real loading path."""
    path = Path(directory) / "gpt2-no-dropout"
    if not (path / "config.json").exists():
        config = GPT2Config(n_layer=2, n_embd=64, n_head=2, n_positions=128, vocab_size=256,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        GPT2Model(config).save_pretrained(path)
    return str(path)
