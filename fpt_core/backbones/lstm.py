"""The paper's LSTM baseline: 3 layers of a layer-norm LSTM, hidden size 768.

Follows LayerNormLSTM in the paper's code (models/lstm.py, after exe1023/LSTM_LN): layer norms
on the input and the recurrent pre-activations and on the cell state, which is carried on
normalised; dropout on each layer's output, which is also its recurrent state; the paper's
uniform initialisation, layer-norm gains included. Two changes: the initial state is zero
rather than a fresh random draw on every call, so a forward pass is a function of its input;
and the layer norms are torch's (biased variance), not the paper's hand-written ones
(unbiased), a difference of 1/n in the variance.

Groups: the input-to-hidden maps transform each token on its own (feedforward); the
hidden-to-hidden maps carry information between tokens, the part attention plays in a
transformer (attention); the norms are the layernorm group. Like the paper's LSTM it has
no position table: recurrence gives it order.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from fpt_core.backbones.base import (
    TINY,
    Backbone,
    BackboneSpec,
    check_depth,
    write_marker,
)
from fpt_core.dropout import CounterDropout, apply_keep

WEIGHTS = "model.safetensors"


class LNLSTMLayer(nn.Module):
    def __init__(self, d_in: int, hidden: int, dropout: float):
        super().__init__()
        self.hidden = hidden
        self.i2h = nn.Linear(d_in, 4 * hidden)
        self.h2h = nn.Linear(hidden, 4 * hidden)
        self.ln_i2h = nn.LayerNorm(4 * hidden, eps=1e-6)
        self.ln_h2h = nn.LayerNorm(4 * hidden, eps=1e-6)
        self.ln_cell = nn.LayerNorm(hidden, eps=1e-6)
        # counter-based from the start: one mask for every time step, drawn once per forward
        self.drop = CounterDropout(dropout)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for linear in (self.i2h, self.h2h):
            for p in linear.parameters():
                p.uniform_(-1 / math.sqrt(self.hidden), 1 / math.sqrt(self.hidden))
        for norm in (self.ln_i2h, self.ln_h2h, self.ln_cell):
            bound = 1 / math.sqrt(norm.normalized_shape[0])
            for p in norm.parameters():
                p.uniform_(-bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        H = self.hidden
        # the input pre-activations do not depend on the state: all time steps at once
        from_input = self.ln_i2h(self.i2h(x))
        h = x.new_zeros(B, H)
        c = x.new_zeros(B, H)
        keep = self.drop.keep((T, B, H), x.device)
        outputs = []
        for t in range(T):
            pre = from_input[:, t] + self.ln_h2h(self.h2h(h))
            i, f, o = pre[:, : 3 * H].sigmoid().chunk(3, dim=-1)
            g = pre[:, 3 * H :].tanh()
            c = self.ln_cell(f * c + i * g)
            h = o * c.tanh()
            if keep is not None:
                h = apply_keep(h, keep[t], self.drop.p)
            outputs.append(h)
        return torch.stack(outputs, dim=1)


class LSTMBackbone(Backbone):
    kind = "lstm"
    # Each layer loops over the tokens in Python: about half a transformer block's kernel
    # launches per layer and token, and nothing per layer beyond that.
    launch_units_per_block = 0.0
    launch_units_per_token = 0.5

    def __init__(self, hidden: int = 768, n_layer: int = 3, dropout: float = 0.1, source="lstm"):
        super().__init__()
        self.source = source
        self.hidden = hidden
        self.layers = nn.ModuleList(LNLSTMLayer(hidden, hidden, dropout) for _ in range(n_layer))

    # ------------------------------------------------------------ the kind's facts
    # Its config: {"hidden": width, "n_layer": layers}.

    @classmethod
    def build(cls, spec: BackboneSpec, init: str, *, depth: int | None, dropout: float,
              random_init: str) -> LSTMBackbone:
        shape = spec.config()
        check_depth(depth, cls.blocks_in(shape), spec.name)
        backbone = cls(shape["hidden"], shape["n_layer"], dropout, source=spec.name)
        if init != "random":
            backbone.load_weights(Path(spec.weights()))
        if depth is not None:
            backbone.keep_blocks(depth)
        return backbone

    @classmethod
    def blocks_in(cls, config: dict) -> int:
        return config["n_layer"]

    @classmethod
    def tiny_config(cls, config: dict, **shape) -> dict:
        return {**config, "hidden": {**TINY, **shape}["hidden"]}

    @classmethod
    def directory_config(cls, directory: Path, marker: dict) -> dict:
        return {"hidden": marker["hidden"], "n_layer": marker["n_layer"]}

    # ------------------------------------------------------------ a built backbone

    def forward(self, h: Tensor) -> Tensor:
        for layer in self.layers:
            h = layer(h)
        return h

    def blocks(self) -> list[nn.Module]:
        return list(self.layers)

    def keep_blocks(self, k: int) -> None:
        self.layers = nn.ModuleList(list(self.layers)[:k])

    def param_groups(self) -> dict[str, str | None]:
        groups = {}
        for name, _ in self.named_parameters():
            part = name.split(".")[2]
            groups[name] = {"i2h": "feedforward", "h2h": "attention"}.get(part, "layernorm")
        return groups

    def attention_shape(self) -> tuple[int, int]:
        return 0, 0  # recurrence, not attention, carries information between tokens

    def save(self, out_dir: Path) -> None:
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(out_dir) / WEIGHTS), metadata={"format": "pt"})
        write_marker(out_dir, kind=self.kind, source=self.source, hidden=self.hidden,
                     n_layer=self.n_blocks)

    def load_weights(self, directory: Path) -> None:
        self.load_state_dict(load_file(str(Path(directory) / WEIGHTS)))
