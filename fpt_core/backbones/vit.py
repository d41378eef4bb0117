"""ViT as the paper ran it: timm's vit_base_patch16_224 blocks called directly on embeddings.

The paper's code (fpt.py) built timm's model with drop_rate = attn_drop_rate = its dropout,
skipped the patch embedding and class token, added a zero-initialised position table of its own,
then ran pos_drop, the blocks and the final norm. The blocks here are transformers' ViTLayer,
made to compute timm's Block where the two differ:
- LayerNorm eps 1e-6, as the original JAX ViT and timm; the hub configs say 1e-12;
- dropout after the MLP's activation (timm's Mlp: fc1, act, drop, fc2, drop); ViTLayer has none.
Every dropout (position, attention probabilities, attention output, MLP) is the cell's dropout,
as the paper's drop_rate and attn_drop_rate were.

What remains different: the query, key and value projections are three matrices rather than
timm's one fused qkv matrix, and attention runs in torch's fused kernel rather than timm's
explicit softmax (where attention probabilities drop out, an explicit softmax, fpt_core/dropout.py),
which changes float rounding, and every dropout mask is counter-based rather than drawn from
torch's generator (the same distribution), but not the function. The weights of
google/vit-base-patch16-224 are timm's, split into those three matrices: its model card says
they were converted from timm, which had converted them from Google's JAX release.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from fpt_core.backbones.hf import HF_RULES, HFBackbone
from fpt_core.backbones.hub import eager_attention

# ViT's patch embedding, class token and position table are bypassed: the FPT feeds
# embeddings straight to the blocks and adds a zero-initialised table of its own.
VIT_RULES = ((r"^embeddings\.", None),) + HF_RULES
TIMM_LAYER_NORM_EPS = 1e-6
# A tiny stand-in's image: the patch embedding is bypassed, so it only has to be valid and small.
TINY_IMAGE = {"image_size": 16, "patch_size": 4, "encoder_stride": 4}


class ViTBackbone(HFBackbone):
    kind = "vit"
    model_types = ("vit",)
    rules = VIT_RULES

    def __init__(self, model: nn.Module, source: str):
        super().__init__(model, source)
        self.needs_position_table = True
        self.max_positions = None
        dropout = model.config.hidden_dropout_prob
        self.drop = nn.Dropout(dropout)  # timm's pos_drop, after the positions are added
        for block in self.blocks():
            block.mlp.activation_fn = nn.Sequential(block.mlp.activation_fn, nn.Dropout(dropout))

    @classmethod
    def config_overrides(cls, config: Any, dropout: float) -> dict[str, Any]:
        return {**super().config_overrides(config, dropout), "layer_norm_eps": TIMM_LAYER_NORM_EPS}

    @classmethod
    def tiny_config(cls, config: Any, **shape) -> Any:
        config = super().tiny_config(config, **shape)
        for key, value in TINY_IMAGE.items():
            setattr(config, key, value)
        return config

    def forward(self, h: Tensor) -> Tensor:
        h = self.drop(h)
        for block in self.blocks():
            h = block(h)
            h = h[0] if isinstance(h, tuple) else h
        return self.model.layernorm(h)

    def attention_maps(self, h: Tensor) -> list[Tensor]:
        maps: list[Tensor] = []
        hooks = [
            block.attention.register_forward_hook(lambda m, args, out: maps.append(out[1]))
            for block in self.blocks()
        ]
        try:
            with eager_attention(self.model):
                self.forward(h)
        finally:
            for hook in hooks:
                hook.remove()
        return maps
