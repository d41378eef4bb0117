"""What a cell costs, before it runs: the FLOPs and kernel launches of its steps and of the
forward passes outside them (evaluations, feature extraction).

FLOPs: matrix products (2 per multiply-add) of the model build_model(cell, spec, device="meta")
builds, attention's T^2 terms whole; backward through the frozen blocks when anything below the
output layer trains, weight gradients for trainable matrices only. Launch units: the blocks a
step runs (a block that loops over tokens in Python, the LSTM, counts per token), each about the
same number of kernels; the plan turns both into seconds (fpt_core/plan.py).
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from fpt_core.errors import ConfigError
from fpt_core.features import can_cache
from fpt_core.model import build_model
from fpt_core.tasks import make_task

FIXED_UNITS = 4  # input and output layers, loss, gradient clipping, Adam: about four blocks


@dataclasses.dataclass(frozen=True)
class Arch:
    hidden: int
    blocks: int
    matrices: tuple[tuple[int, str], ...]  # (entries, group) of every matrix each token passes
    attn_layers: int
    attn_width: int  # heads x head size
    units_per_block: float = 1.0  # kernel-launch units of a block per step or evaluation batch
    units_per_token: float = 0.0  # ... and per token (a block that loops over tokens in Python)

    def launch_units(self, tokens: int) -> float:  # of one step or evaluation batch
        return self.blocks * (self.units_per_block + tokens * self.units_per_token)

    def first(self, k: int) -> "Arch":  # blocks are alike, and matrices come in block order
        return dataclasses.replace(self, blocks=k, attn_layers=min(self.attn_layers, k),
                                   matrices=self.matrices[:len(self.matrices) * k // self.blocks])


def arch_of(model) -> Arch:
    """The shape of an FPT's backbone, as the backbone states it (a meta model will do)."""
    backbone = model.backbone
    layers, width = backbone.attention_shape()
    return Arch(backbone.hidden, backbone.n_blocks, backbone.matrices(), layers, width,
                backbone.launch_units_per_block, backbone.launch_units_per_token)


def arch_flops(arch: Arch, *, batch: int, tokens: int, input_dim: int, input_kind: str,
               n_readout: int, out_per_token: int, trainable) -> dict[str, int]:
    trainable = set(trainable)
    bt = batch * tokens
    matrices = 2 * bt * sum(n for n, _ in arch.matrices)
    scores = 4 * batch * tokens * tokens * arch.attn_width * arch.attn_layers
    inp = 2 * bt * input_dim * arch.hidden if input_kind == "vector" else 0
    out = 2 * batch * n_readout * arch.hidden * out_per_token
    forward = inp + matrices + scores + out
    backward = out if "output" in trainable else 0
    if trainable - {"output"}:  # gradients must go down through the blocks
        backward += out + matrices + 2 * scores
        backward += 2 * bt * sum(n for n, group in arch.matrices if group in trainable)
        backward += inp if "input" in trainable else 0
    return {"forward": forward, "backward": backward, "total": forward + backward}


def step_flops(*, batch: int, tokens: int, hidden: int, ff: int, layers: int, input_dim: int,
               input_kind: str, n_readout: int, out_per_token: int, trainable) -> dict[str, int]:
    """FLOPs of a training step of a GPT-2-shaped FPT (4 attention projections, a 2-matrix MLP)."""
    block = ((4 * hidden * hidden, "attention"), (2 * hidden * ff, "feedforward"))
    return arch_flops(Arch(hidden, layers, block * layers, layers, hidden), batch=batch,
                      tokens=tokens, input_dim=input_dim, input_kind=input_kind,
                      n_readout=n_readout, out_per_token=out_per_token, trainable=trainable)


def spec_shape(spec) -> dict:
    return {"tokens": spec.n_tokens, "input_dim": spec.input_dim, "input_kind": spec.input_kind,
            "n_readout": spec.n_readout, "out_per_token": spec.n_predictions // spec.n_readout * spec.n_classes}


def model_flops(model, batch: int) -> dict[str, int]:
    """FLOPs of one training step of a built FPT, its trainable groups as requires_grad says."""
    trainable = [g for g, ps in model.named_groups().items() if any(p.requires_grad for _, p in ps)]
    return arch_flops(arch_of(model), batch=batch, trainable=trainable, **spec_shape(model.spec))


# ---------------------------------------------------------------- a cell's work

_ARCHS: dict[str, Arch] = {}  # backbone -> its whole architecture, built once per process

@dataclasses.dataclass(frozen=True)
class Work:
    """One cell's steps and the forward passes outside them, in FLOPs and launch units: each
    evaluation's (the held-out, validation and train-accuracy sets) and, for output-only cells
    on cached features, one pass over their splits. `cell` as timed (a pipeline-pretrained
    backbone is its source); `key` is the step's shape."""

    cell: object
    spec: object
    key: tuple
    steps: int
    eval_every: int
    step_flops: float
    step_units: float
    eval_flops: float  # per evaluation
    eval_batches: int  # per evaluation
    once_flops: float  # feature extraction, once
    once_batches: int
    pass_units: float  # launch units of one evaluation batch
    cached: bool

    def evaluations(self, steps: int | None = None) -> int:
        """Evaluations a run of `steps` makes (one every eval_every, and one at the end)."""
        return math.ceil((self.steps if steps is None else steps) / self.eval_every)

    def passes(self, steps: int | None = None) -> tuple[float, float]:
        """(FLOPs, batches) of the forward passes outside the steps of a run of `steps`."""
        n = self.evaluations(steps)
        return n * self.eval_flops + self.once_flops, n * self.eval_batches + self.once_batches


def cell_work(cell, grid=None, feature_cache: bool = True) -> Work:
    """A cell's work, from its task's official split sizes and the trainer's own caching rule,
    without the data. A pipeline-pretrained backbone (which needs the grid) costs what its
    source does."""
    task = make_task(cell, load=False)
    spec, sizes = task.spec, task.sizes()
    cached = feature_cache and can_cache(cell, task)
    source, name = cell, grid.pretrained_backbone(cell) if grid is not None else None
    if name is None and cell.backbone.startswith("backbones/") and not Path(cell.backbone).is_dir():
        raise ConfigError(f"backbone: {cell.backbone} is a pipeline-pretrained backbone not made yet; "
                          "pass grid= so that it costs what its source backbone does")
    if name is not None:
        pre = grid.pretrain[name]
        source = dataclasses.replace(cell, backbone=pre.backbone, init="random",
                                     depth=cell.depth or pre.depth)
    if source.backbone not in _ARCHS:  # built whole once; a depth keeps its first blocks
        whole = dataclasses.replace(source, depth=None)
        _ARCHS[source.backbone] = arch_of(build_model(whole, spec, device="meta"))
    arch = _ARCHS[source.backbone].first(source.depth) if source.depth else _ARCHS[source.backbone]
    shape = spec_shape(spec)
    step = arch_flops(arch, batch=cell.batch_size, trainable=cell.trainable, **shape)["total"]
    example = arch_flops(arch, batch=1, trainable=(), **shape)["forward"]
    n_train, n_sample = sizes.train or 0, sizes.train_sample
    n_held = sizes.test + (sizes.val or 0)  # every evaluation scores test and validation
    size = task.eval_batch_size(cell.batch_size)
    batches = math.ceil(n_held / size) + math.ceil(n_sample / size)
    units = arch.launch_units(spec.n_tokens)
    key = (source.backbone, source.depth, tuple(shape.values()), cell.batch_size, cell.precision,
           tuple(cell.trainable), cached)
    if cached:  # the backbone runs once over the splits; steps touch the output layer only
        out = 2 * arch.hidden * spec.n_readout * shape["out_per_token"]
        return Work(source, spec, key, cell.steps, cell.eval_every, 2 * cell.batch_size * out,
                    FIXED_UNITS, (n_held + n_sample) * out, 0,
                    (n_train + n_held + n_sample) * example, batches + math.ceil(n_train / size),
                    units + 1, True)
    return Work(source, spec, key, cell.steps, cell.eval_every, step, units + FIXED_UNITS,
                (n_held + n_sample) * example, batches, 0, 0, units + 1, False)
