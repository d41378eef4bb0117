"""`fpt plan`: the compute a grid will cost, estimated before launch.

A cell costs its steps, its evaluations (forward passes over the held-out set and the
train-accuracy sample every `eval_every` steps) and, for output-only cells on cached features,
one forward pass over their splits. FLOPs: matrix products (2 per multiply-add) of the model
build_model(cell, spec, device="meta") builds, attention's T^2 terms whole; backward through the
frozen blocks when anything below the output layer trains, weight gradients for trainable
matrices only. Seconds: stated (data-sheet peak x assumed utilisation + a cost per kernel
launch) or measured (a few step shapes timed here, the same two terms fitted for the others).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import math
import statistics
import sys
import time
from pathlib import Path

from fpt_core.errors import ConfigError, DataError

# Dense (no 2:4 sparsity) TFLOP/s from vendors' data sheets: bf16 tensor cores (fp16 on the
# V100), fp32 on CUDA cores, TF32 tensor cores (for reference: see MFU).
GPUS = {
    "h100-sxm": ("NVIDIA H100 SXM5 80GB", 989.4, 66.9, 494.7),
    "h100-pcie": ("NVIDIA H100 PCIe 80GB", 756.5, 51.0, 378.0),
    "a100-80gb": ("NVIDIA A100 80GB", 312.0, 19.5, 156.0),
    "a100-40gb": ("NVIDIA A100 40GB", 312.0, 19.5, 156.0),
    "v100": ("NVIDIA V100 SXM2 (fp16 tensor cores, no bf16)", 125.0, 15.7, None),
    "l40s": ("NVIDIA L40S", 362.05, 91.6, 183.0),
    "rtx-4090": ("NVIDIA GeForce RTX 4090 (fp32 accumulate)", 165.2, 82.6, 82.6),
    "a10": ("NVIDIA A10", 125.0, 31.2, 62.5),
}
NO_BF16 = {"v100"}  # emulated there: the trainer's precision fallback runs such cells in fp32
# Model-FLOP utilisation of the arithmetic, launches aside. Tensor cores 15%: at batch 2-16 the
# products have 20 to 16k rows against 768-1280 columns, memory-bound on a GPU built for far
# larger ones, and norms, dropout and casts run at memory speed (well-tuned large-batch GPT-2
# training reaches 35-50%). fp32 50%: CUDA cores peak 8-16x lower, so the same products come
# closer to it. The trainer keeps torch's default float32_matmul_precision, so no TF32.
MFU = {"tensor": 0.15, "fp32": 0.5}
# Eager PyTorch issues ~25 kernels per block forward and ~35 backward at ~10-15 us of host time
# each; a small model's step waits on these launches, not on arithmetic.
LAUNCH_S = {"train": 0.8e-3, "eval": 0.3e-3}  # per launch unit (a block) per step or eval batch
FIXED_UNITS = 4  # input and output layers, loss, gradient clipping, Adam: about four blocks
LSTM_UNITS_PER_TOKEN = 0.5  # the LSTM loops over tokens in Python: half a block per layer-token
HEADROOM = (2.0, 10, 5, 15, 7 * 24 * 60)  # x estimate, + minutes, rounded up to, floor, ceiling
# (training, held-out) examples of each release, for passes a cell does not cap (less if data:)
SPLITS = {"mnist": (60000, 10000), "cifar10": (50000, 10000), "cifar10-lra": (50000, 10000),
          "listops": (96000, 2000), "remote-homology": (12312, 736), "digits": (1497, 300)}


# ---------------------------------------------------------------- FLOPs

@dataclasses.dataclass(frozen=True)
class Arch:
    kind: str  # hf, vit, lstm
    hidden: int
    blocks: int
    matrices: tuple[tuple[int, str], ...]  # (entries, group) of every matrix each token passes
    attn_layers: int
    attn_width: int  # heads x head size

    def launch_units(self, tokens: int) -> float:  # of one step or evaluation batch
        return self.blocks * tokens * LSTM_UNITS_PER_TOKEN if self.kind == "lstm" else self.blocks

    def first(self, k: int) -> "Arch":  # blocks are alike, and matrices come in block order
        return dataclasses.replace(self, blocks=k, attn_layers=min(self.attn_layers, k),
                                   matrices=self.matrices[:len(self.matrices) * k // self.blocks])


def arch_of(model) -> Arch:
    """The shape of an FPT's backbone, read from the model (a meta one will do)."""
    from torch import nn

    backbone = model.backbone
    matrices = []
    for name, module in backbone.named_modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            group = model.group_of(f"backbone.{name}.weight")
            if group in ("attention", "feedforward"):  # None: a pooler or patch embedding, unused
                matrices.append((module.weight.numel(), group))
    layers = width = 0
    if backbone.kind != "lstm":
        config = backbone.model.config
        heads, layers = config.num_attention_heads, backbone.n_blocks
        width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
    return Arch(backbone.kind, backbone.hidden, backbone.n_blocks, tuple(matrices), layers, width)


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
    return arch_flops(Arch("hf", hidden, layers, block * layers, layers, hidden), batch=batch,
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

# One cell's steps and the forward passes outside them (evaluations, feature extraction), in
# FLOPs and launch units; `cell` as timed (a pipeline-pretrained backbone is its source).
Work = collections.namedtuple("Work", "cell spec key steps step_flops step_units pass_flops "
                                      "pass_batches pass_units cached")


def split_sizes(cell) -> tuple[int, int, int, bool]:
    """(training examples to extract, held-out set, train sample, whether features are cached)."""
    from fpt_core.tasks import TASKS
    from fpt_core.tasks.base import TRAIN_EVAL_SIZE, GeneratedTask

    cls = TASKS[cell.task]
    if issubclass(cls, GeneratedTask):
        n_train, held_out = cell.n_train or 0, cls.eval_default
    else:
        n_train, held_out = SPLITS.get(cell.task, (50000, 10000))
        n_train = min(n_train, cell.n_train or n_train)
    sample = min(cell.eval_size or TRAIN_EVAL_SIZE, n_train or TRAIN_EVAL_SIZE)
    cached = (bool(cell.feature_cache) and tuple(cell.trainable) == ("output",) and not cls.augment
              and n_train > 0)  # as features.can_cache decides, without the data
    return n_train, min(cell.eval_size or held_out, held_out), sample, cached


def cell_work(cell, grid=None) -> Work:
    """A pipeline-pretrained backbone (which needs the grid) costs what its source does."""
    from fpt_core.model import build_model
    from fpt_core.tasks import make_spec

    spec = make_spec(cell)
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
    n_train, n_test, n_sample, cached = split_sizes(cell)
    evals = cell.steps // cell.eval_every + (1 if cell.steps % cell.eval_every else 0)
    size = max(cell.batch_size, 64)  # the trainer's evaluation batch
    batches = math.ceil(n_test / size) + math.ceil(n_sample / size)
    units = arch.launch_units(spec.n_tokens)
    key = (source.backbone, source.depth, tuple(shape.values()), cell.batch_size, cell.precision,
           tuple(cell.trainable), cached)
    if cached:  # the backbone runs once over the splits; steps touch the output layer only
        out = 2 * arch.hidden * spec.n_readout * shape["out_per_token"]
        return Work(source, spec, key, cell.steps, 2 * cell.batch_size * out, FIXED_UNITS,
                    (n_train + n_test + n_sample) * example + evals * (n_test + n_sample) * out,
                    batches + math.ceil(n_train / size), units + 1, True)
    return Work(source, spec, key, cell.steps, step, units + FIXED_UNITS,
                evals * (n_test + n_sample) * example, evals * batches, units + 1, False)


# ---------------------------------------------------------------- rates

class StatedRate:
    """Seconds from a GPU's data-sheet peak, an assumed MFU and a cost per kernel launch."""

    def __init__(self, gpu: str = "a100-80gb"):
        if gpu not in GPUS:
            raise ConfigError(f"gpu: unknown value {gpu!r}; allowed: {', '.join(GPUS)}")
        self.gpu, (self.name, self.bf16, self.fp32, self.tf32) = gpu, GPUS[gpu]

    def seconds(self, work: Work) -> tuple[float, str]:
        dtype = "bf16" if work.cell.precision == "bf16" and self.gpu not in NO_BF16 else "fp32"
        rate = 1e12 * (self.bf16 * MFU["tensor"] if dtype == "bf16" else self.fp32 * MFU["fp32"])
        train = work.steps * (work.step_flops / rate + work.step_units * LAUNCH_S["train"])
        passes = work.pass_flops / rate + work.pass_batches * work.pass_units * LAUNCH_S["eval"]
        return train + passes, f"stated {self.gpu} {dtype}"

    def describe(self) -> str:
        train, evaluation = (LAUNCH_S[k] * 1e3 for k in ("train", "eval"))
        return (f"stated, nothing measured: {self.name}, data-sheet dense peaks {self.bf16:g} TFLOP/s "
                f"bf16 (tensor cores) and {self.fp32:g} fp32 (no TF32: torch's default) x assumed MFU "
                f"{MFU['tensor']:.0%} bf16, {MFU['fp32']:.0%} fp32; + kernel launches, {train:g} ms "
                f"per block per step and {evaluation:g} ms per block per evaluation batch")


class MeasuredRate:
    """Steps timed here for a few step shapes (keys); seconds = a x FLOPs + b x launch units fitted
    to them for the others, and for evaluation passes with b at the stated eval/step ratio."""

    def __init__(self, device: str = "auto", max_keys: int = 6, budget_s: float = 60.0,
                 warmup: int = 3, timed: int = 5, threads: int | None = None):
        import torch

        from fpt_core.hardware import cpu_model

        allowed = ("auto", "cpu", "cuda") if torch.cuda.is_available() else ("auto", "cpu")
        if device not in allowed:
            raise ConfigError(f"device: {device!r} is not available here; allowed: {', '.join(allowed)}")
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        if threads and self.device == "cpu":  # as each job of the grid will run; on a busy CPU
            torch.set_num_threads(threads)    # two threads can be ten times slower than one
        self.max_keys, self.budget_s, self.warmup, self.timed = max(1, max_keys), budget_s, warmup, timed
        self.steps_s, self.points, self.fit = {}, [], (0.0, 0.0)  # s per key; (FLOPs, units, s); a, b
        self.where = (torch.cuda.get_device_name(0) if self.device == "cuda"
                      else f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)")

    def prepare(self, works: list[Work]) -> None:
        """Time the median key, then, of the keys the fit says fit their share of the budget left,
        the one farthest in log FLOPs from those timed, until max_keys or none fits."""
        left = list({w.key: w for w in sorted(works, key=lambda w: w.step_flops) if not w.cached}.values())
        started = time.perf_counter()
        while left and len(self.steps_s) < self.max_keys:
            share = (self.budget_s - (time.perf_counter() - started)) / (self.max_keys - len(self.steps_s))
            a, b = self.fit
            runs = self.warmup + self.timed
            fits = ([w for w in left if runs * (a * w.step_flops + b * w.step_units) <= share]
                    if self.points else [left[len(left) // 2]])
            if not fits:
                break
            logs = [math.log(f) for f, _, _ in self.points]
            pick = max(fits, key=lambda w: min((abs(math.log(w.step_flops) - x) for x in logs), default=0))
            left.remove(pick)
            seconds = time_step(pick.cell, pick.spec, self.device, self.warmup, self.timed, max(share, 1.0))
            self.steps_s[pick.key] = seconds
            self.points.append((pick.step_flops, pick.step_units, seconds))
            self.fit = fit_two(self.points)

    def seconds(self, work: Work) -> tuple[float, str]:
        (a, b), measured = self.fit, work.key in self.steps_s
        step = self.steps_s[work.key] if measured else a * work.step_flops + b * work.step_units
        per_unit = b * LAUNCH_S["eval"] / LAUNCH_S["train"]  # an evaluation batch launches fewer
        passes = a * work.pass_flops + per_unit * work.pass_units * work.pass_batches
        return work.steps * step + passes, f"{'measured' if measured else 'scaled'} {self.device}"

    def describe(self) -> str:
        a, b = self.fit
        return (f"measured on {self.where}: {len(self.steps_s)} step shapes timed ({self.warmup} "
                f"warm-up + up to {self.timed} timed steps, median; random weights, synthetic "
                f"batches), the others and all evaluation passes scaled by the fit seconds = FLOPs / "
                f"{1 / a / 1e9 if a else float('inf'):.3g} GFLOP/s + {b * 1e3:.3g} ms per block")


def fit_two(points) -> tuple[float, float]:
    """a, b >= 0: seconds ~ a FLOPs + b units, least squares in relative error (1 point: a only)."""
    import numpy as np
    from scipy.optimize import nnls

    x = np.array([[f / s, u / s] for f, u, s in points]).reshape(-1, 2)
    scale = np.maximum(x.max(axis=0, initial=0.0), 1e-30)  # columns of like size for nnls
    (a, b), _ = nnls(x / scale, np.ones(len(points)))
    return float(a / scale[0]), float(b / scale[1])


def time_step(cell, spec, device: str, warmup: int = 3, timed: int = 5,
              limit_s: float | None = None) -> float:
    """Median seconds of a step: random weights, synthetic batch, Adam; fewer once past limit_s."""
    import torch
    import torch.nn.functional as F

    from fpt_core.model import autocast, build_model

    model = build_model(dataclasses.replace(cell, init="random"), spec, device=device)  # in train mode
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr) if params else None
    shape = (cell.batch_size, spec.n_tokens)
    x = (torch.randint(1, spec.input_dim, shape) if spec.input_kind == "tokens"
         else torch.randn(*shape, spec.input_dim)).to(device)
    y = torch.randint(0, spec.n_classes, (cell.batch_size, spec.n_predictions)).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step():
        with autocast(cell.precision, device):
            logits = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, spec.n_classes), y.reshape(-1))
        if optimizer is not None:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cell.grad_clip or float("inf"))
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync()

    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < max(timed, 1) and (not times or limit_s is None or sum(times) < limit_s):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------- the plan

def estimate(grid, rate):
    """One row per cell, pretraining cells included: cell_id, ablations, task, backbone, steps,
    flops_per_step, seconds, gpu_hours (hours of the device the rate describes), method."""
    import pandas as pd

    ablations: dict[str, dict] = {}
    for m in grid.members:
        ablations.setdefault(m.cell_id, {})[m.ablation] = None  # config order, once each
    cells = [(c, [f"pretrain:{name}"]) for name, c in grid.pretrain.items()]
    cells += [(c, list(ablations.get(cid, ()))) for cid, c in grid.cells.items()]
    works = [cell_work(c, grid) for c, _ in cells]
    getattr(rate, "prepare", lambda works: None)(works)  # a measured rate times some steps first
    return pd.DataFrame([
        {"cell_id": c.id, "ablations": ",".join(names), "task": c.task, "backbone": c.backbone,
         "steps": c.steps, "flops_per_step": float(w.step_flops), "seconds": s, "gpu_hours": s / 3600,
         "method": method} for (c, names), w, (s, method) in zip(cells, works, map(rate.seconds, works))])


def summarize(df) -> str:
    """Cells, steps and hours per ablation, then in total (a cell in two ablations counted once)."""
    per = df.assign(ablation=df["ablations"].str.split(",")).explode("ablation")
    table = per.groupby("ablation", sort=False).agg(
        cells=("cell_id", "nunique"), steps=("steps", "sum"), hours=("gpu_hours", "sum"))
    unique = df.drop_duplicates("cell_id")
    table.loc["total (distinct cells)"] = [len(unique), unique["steps"].sum(), unique["gpu_hours"].sum()]
    table = table.astype({"cells": int, "steps": int})
    table["hours"] = table["hours"].map(lambda h: f"{h:,.1f}" if h >= 10 else f"{h:.3g}")
    methods = ", ".join(f"{n} {m}" for m, n in df["method"].value_counts().items())
    return f"{table.to_string()}\n\ncells by method: {methods}"


def runtime_minutes(cell, gpu: str = "a100-80gb", grid=None) -> int:
    """Slurm --time of one cell's job: 2 x the stated estimate + 10 min of start-up, rounded up
    to 5 min, at least 15 min, at most 7 days. A pipeline-pretrained backbone needs the grid."""
    return runtime_minutes_for([cell], gpu, grid)


def runtime_minutes_for(cells, gpu: str = "a100-80gb", grid=None) -> int:
    """The same for a job that trains `cells` one after another, with one start-up."""
    rate = StatedRate(gpu)
    seconds = sum(rate.seconds(cell_work(c, grid))[0] for c in cells)
    factor, plus, step, low, high = HEADROOM
    return int(min(max(math.ceil((factor * seconds / 60 + plus) / step) * step, low), high))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="fpt plan", description="Estimated compute of a config's grid, per ablation and in total.",
        epilog=f"GPUs: {', '.join(GPUS)}\nexamples: fpt plan --configfile config/paper.yaml "
               "--gpu h100-sxm\n          fpt plan --measure --device cpu --max-keys 4",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configfile", default="config/config.yaml")
    p.add_argument("--gpu", default="a100-80gb", help="the GPU whose stated rate to use (a100-80gb)")
    p.add_argument("--measure", action="store_true", help="time real steps on this machine instead")
    p.add_argument("--device", default="auto", help="with --measure: auto, cpu or cuda")
    p.add_argument("--max-keys", type=int, default=6, help="with --measure: step shapes to time (6)")
    p.add_argument("--budget", type=float, default=60.0, help="with --measure: seconds of timing (60)")
    p.add_argument("--cells", action="store_true", help="also print one line per cell")
    args = p.parse_args(argv)
    try:
        from fpt_core import configfile, grid

        config = configfile.load_strict(args.configfile)
        threads = (config.get("train") or {}).get("threads")  # each job's, for timing on a CPU
        rate = (MeasuredRate(args.device, args.max_keys, args.budget, threads=threads)
                if args.measure else StatedRate(args.gpu))
        df = estimate(grid.build(config), rate)
    except (ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.cells:
        print(df.drop(columns="seconds").to_string(index=False, float_format=lambda v: f"{v:.3g}") + "\n")
    print(f"{summarize(df)}\nestimated: {rate.describe()}")
    return 0

