"""The Frozen Pretrained Transformer (Lu et al. 2021), after the paper's universal_computation/fpt.py.

FPT = input layer -> (+ positions) -> backbone blocks -> final norm -> output layer.

- Vector inputs: Linear (orthogonal init, gain 1.41, zero bias) then dropout; token inputs:
  an Embedding (torch's default N(0, 1) init, as in the paper). The backbone's own token
  embedding is never used: inputs enter the backbone as embeddings.
- Positions: the backbone's own learned table where it has one (GPT-2 wpe, BERT position
  embeddings); otherwise (rotary LLaMA-style models, ViT whose patch embedding is bypassed)
  a table of n_tokens rows added at the input, zero-initialised as the paper did for ViT, so
  the pretrained computation is unchanged at initialisation. The LSTM gets none, as in the paper.
- Dropout: the cell's dropout after the vector input layer and, through build_backbone, at
  every dropout inside the backbone, so a cell with dropout 0 trains a model whose train mode
  computes what its eval mode does (and output-only cells may cache its features). Every mask
  is counter-based (fpt_core/dropout.py): a hash of the (seed, step) in the model's
  dropout_key buffer, which the trainer sets each step, the dropout site and the element.
- Readout: the hidden states of the last n_readout tokens, each through one Linear to
  (n_predictions / n_readout) * n_classes logits, reshaped to (B, n_predictions, n_classes):
  token r predicts items r*k .. r*k+k-1 (k = n_predictions / n_readout), as the paper's code
  reshaped its patches.

Parameter counts (param_counts) count what the forward pass of this task uses: of a
position table only its first n_tokens rows (of BERT's token-type table only row 0); the
backbone's token embedding, a pooler and ViT's patch embedding not at all. So total is the
sum of the six groups, and trainable the sum of the trainable ones.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from fpt_core.atomic import atomic_dir
from fpt_core.backbones import Backbone, build_backbone
from fpt_core.backbones.base import GROUPS, POSITIONS_FILE, is_matrix
from fpt_core.dropout import KEY_BUFFER, keyed, make_counter_based
from fpt_core.errors import ConfigError

ORTH_GAIN = 1.41


def autocast(precision: str, device: str | torch.device):
    """bf16 autocast for a bf16 cell; fp32 runs as it is."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def vector_input(input_dim: int, hidden: int, dropout: float) -> nn.Module:
    linear = nn.Linear(input_dim, hidden)
    nn.init.orthogonal_(linear.weight, gain=ORTH_GAIN)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(linear, nn.Dropout(dropout))


class FPT(nn.Module):
    def __init__(self, spec, backbone: Backbone, dropout: float = 0.1, seed: int = 0):
        super().__init__()
        if spec.n_predictions % spec.n_readout:
            raise ValueError(
                f"task {spec.name}: n_predictions {spec.n_predictions} is not a multiple of "
                f"n_readout {spec.n_readout}"
            )
        hidden = backbone.hidden
        self.spec = spec
        if spec.input_kind == "tokens":
            self.input_layer = nn.Embedding(spec.input_dim, hidden)
        else:
            self.input_layer = vector_input(spec.input_dim, hidden, dropout)
        self.pos_table = None
        if backbone.needs_position_table:
            self.pos_table = nn.Parameter(initial_positions(backbone, spec.n_tokens))
        self.backbone = backbone
        per_token = spec.n_predictions // spec.n_readout
        self.output_layer = nn.Linear(hidden, per_token * spec.n_classes)
        # (seed, step) of the dropout masks; not saved: the trainer sets it before each step
        self.register_buffer(KEY_BUFFER, dropout_key(seed, 0), persistent=False)
        self._groups = self._assign_groups()

    def _assign_groups(self) -> dict[str, str | None]:
        inner = self.backbone.param_groups()
        groups = {}
        for name, _ in self.named_parameters():
            if name.startswith("input_layer."):
                groups[name] = "input"
            elif name == "pos_table":
                groups[name] = "positions"
            elif name.startswith("output_layer."):
                groups[name] = "output"
            else:
                groups[name] = inner[name.removeprefix("backbone.")]
        return groups

    def group_of(self, name: str) -> str | None:
        """The group of a parameter, None for a backbone parameter this model never uses."""
        return self._groups[name]

    def named_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {g: [] for g in GROUPS}
        for name, p in self.named_parameters():
            if self._groups[name] is not None:
                groups[self._groups[name]].append((name, p))
        return groups

    def set_trainable(self, trainable) -> None:
        """requires_grad on exactly the parameters of the trainable groups."""
        unknown = [g for g in trainable if g not in GROUPS]
        if unknown:
            raise ConfigError(f"trainable: unknown group {unknown[0]!r}; allowed: {', '.join(GROUPS)}")
        for name, p in self.named_parameters():
            p.requires_grad_(self._groups[name] in trainable)

    def embed(self, x: Tensor) -> Tensor:
        if x.shape[1] > self.spec.n_tokens:
            raise ValueError(f"input has {x.shape[1]} tokens, the model was built for {self.spec.n_tokens}")
        h = self.input_layer(x)
        if self.pos_table is not None:
            h = h + self.pos_table[: x.shape[1]]
        return h

    def set_dropout_step(self, seed: int, step: int) -> None:
        """The dropout masks of step `step` of a cell seeded `seed`."""
        key = dropout_key(seed, step)
        if self.dropout_key.device.type == "cuda":  # from pinned memory: the host need not wait
            key = key.pin_memory()
        self.dropout_key.copy_(key, non_blocking=True)

    def forward(self, x: Tensor) -> Tensor:
        with keyed(self.dropout_key):
            h = self.backbone(self.embed(x))
        logits = self.output_layer(h[:, -self.spec.n_readout :])
        return logits.reshape(x.shape[0], self.spec.n_predictions, self.spec.n_classes)

    @torch.no_grad()
    def attention_maps(self, x: Tensor) -> list[Tensor]:
        """Attention weights per kept block, (B, heads, T, T), computed in eval mode."""
        was_training = self.training
        self.eval()
        low = any(p.dtype == torch.bfloat16 for p in self.backbone.parameters())
        try:
            with autocast("bf16" if low else "fp32", x.device):
                return [m.detach().float() for m in self.backbone.attention_maps(self.embed(x))]
        finally:
            self.train(was_training)


def dropout_key(seed: int, step: int) -> Tensor:
    """The value of FPT's dropout_key buffer for a cell's seed and step."""
    return torch.tensor([seed, step], dtype=torch.int64)


def initial_positions(backbone: Backbone, n_tokens: int) -> Tensor:
    """Zeros, or the rows of a table exported with the backbone (zeros past its end)."""
    table = torch.zeros(n_tokens, backbone.hidden)
    if backbone.saved_positions is not None:
        rows = min(n_tokens, backbone.saved_positions.shape[0])
        table[:rows] = backbone.saved_positions[:rows]
    return table


def build_model(cell, spec, device: str | torch.device | None = None) -> FPT:
    """The FPT of a cell: backbone, init and depth from the cell, all weights drawn from cell.seed.

    device="meta" builds the architecture alone, without weights (init is ignored), which is
    enough for param_counts; any other device receives the built model.
    """
    meta = device is not None and torch.device(device).type == "meta"
    with torch.random.fork_rng(devices=[]), (torch.device("meta") if meta else nullcontext()):
        torch.manual_seed(cell.seed)
        backbone = build_backbone(
            cell.backbone, "random" if meta else cell.init, seed=cell.seed, depth=cell.depth,
            dropout=cell.dropout, random_init=cell.random_init,
        )
        if backbone.max_positions is not None and spec.n_tokens > backbone.max_positions:
            raise ConfigError(
                f"backbone: {cell.backbone} holds {backbone.max_positions} positions but task "
                f"{spec.name} feeds {spec.n_tokens} tokens; lower max_len or pick another backbone"
            )
        model = FPT(spec, backbone, dropout=cell.dropout, seed=cell.seed)
    make_counter_based(model)
    backbone.use_counter_attention()
    model.set_trainable(cell.trainable)
    if getattr(cell, "precision", "fp32") == "bf16" and not meta:
        store_frozen_matrices_in_bf16(model)
    return model if meta or device is None else model.to(device)


def store_frozen_matrices_in_bf16(model: FPT) -> None:
    """Autocast casts every frozen weight matrix to bf16 at every step; cast them once instead.

    Bitwise the same products under autocast; outside autocast (attention_maps, export) the
    caller needs autocast or a float copy.
    """
    for module in model.backbone.modules():
        own = list(module.parameters(recurse=False))
        if is_matrix(module) and own and not any(p.requires_grad for p in own):
            module.to(torch.bfloat16)


def param_counts(model: FPT) -> dict[str, int]:
    """Parameters per group, trainable and total, counting only entries the task's forward uses."""
    counts = {g: 0 for g in GROUPS}
    trainable = 0
    for name, p in model.named_parameters():
        group = model.group_of(name)
        if group is None:
            continue
        if name.startswith("backbone."):
            n = model.backbone.used_numel(name.removeprefix("backbone."), p, group, model.spec.n_tokens)
        else:
            n = p.numel()
        counts[group] += n
        trainable += n if p.requires_grad else 0
    counts["trainable"] = trainable
    counts["total"] = sum(counts[g] for g in GROUPS)
    return counts


def export_backbone(model: FPT, out_dir: str | Path) -> Path:
    """Write the (trained) backbone so that backbone=out_dir, init=pretrained loads it.

    A position table the FPT added (rotary backbones, ViT) is saved beside it and seeds the
    table of a model built from the directory. Written atomically.
    """
    def fill(tmp: Path) -> None:
        model.backbone.save(tmp)
        if model.pos_table is not None:
            table = model.pos_table.detach().float().contiguous()
            save_file({"positions": table}, str(tmp / POSITIONS_FILE), metadata={"format": "pt"})

    return atomic_dir(Path(out_dir), fill)
