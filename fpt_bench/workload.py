"""What `fpt bench` times: its settings, the cells and models it builds (the library's, and the
paper's way of running them), their batches and their steps."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.activations import GELUTanh, NewGELUActivation

from fpt_bench.timing import Budget
from fpt_core.cell import make_cell
from fpt_core.dropout import CounterDropout
from fpt_core.member import LiveBatches
from fpt_core.model import build_model
from fpt_core.tasks import TaskSpec
from fpt_core.tasks.base import Task
from fpt_core.train import train_step

MIN_JOB_S = 5.0  # --quick starts a job only with this many seconds per unit of its weight left


@dataclass(frozen=True)
class Settings:
    backbone: str  # gpt2, or gpt2-tiny for smoke tests
    depth: int | None  # blocks kept; None keeps all 12
    repeats: int  # alternating repeats per measure
    steps: int  # steps timed per repeat
    n_train: int  # output-only split size
    n_cells: int  # cells in the shared-backbone measure
    device: torch.device
    compile: bool
    precision: str  # ours: the fastest this device computes (fastest_precision)
    budget: Budget | None = None  # --quick only


def until(s: Settings) -> float | None:
    return s.budget.until if s.budget is not None else None


def time_left(s: Settings) -> float | None:
    """Seconds until the current job should end (at least MIN_JOB_S), or None: no budget."""
    return None if s.budget is None else max(s.budget.until - time.perf_counter(), MIN_JOB_S)


# ---------------------------------------------------------------- batches

class TensorPool:
    """Training batches prebuilt as torch tensors, served by step as a task's train_batch."""

    def __init__(self, spec, batch_size: int, seed: int = 0, pool: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.spec = spec
        self.batches = [synthetic_batch(spec, batch_size, g) for _ in range(pool)]

    def train_batch(self, step: int, batch_size: int):
        return self.batches[step % len(self.batches)]


def synthetic_batch(spec, batch_size: int, g: torch.Generator):
    x = torch.randn(batch_size, spec.n_tokens, spec.input_dim, generator=g)
    y = torch.randint(0, spec.n_classes, (batch_size, spec.n_predictions), generator=g)
    return x, y


def numpy_batch(spec, batch_size: int, rng: np.random.Generator):
    """A batch built in NumPy every step, as the paper's data code did."""
    if spec.name == "bit-memory":
        bits = rng.integers(0, 2, size=(batch_size, 5, 1000)) * 2 - 1
        which = rng.integers(0, 5, size=batch_size)
        query = bits[np.arange(batch_size), which]
        masked = query * rng.integers(0, 2, size=query.shape)
        x = np.concatenate([bits, masked[:, None]], axis=1).reshape(batch_size, spec.n_tokens, spec.input_dim)
        y = (query > 0).astype(np.int64)
    else:
        x = rng.standard_normal((batch_size, spec.n_tokens, spec.input_dim))
        y = rng.integers(0, spec.n_classes, size=(batch_size, spec.n_predictions))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y)


class SyntheticTask(Task):
    """A task with a fixed split of random examples in a given shape, for output-only epochs."""

    def __init__(self, spec, n_train: int, n_test: int, seed: int = 0):
        self.name, self._shape = spec.name, spec
        self._sizes = (n_train, n_test)
        super().__init__(seed=seed, eval_size=None)

    def make_spec(self):
        return self._shape

    def _load(self):
        g = torch.Generator().manual_seed(self.seed)
        self._set_train(*synthetic_batch(self.spec, self._sizes[0], g))
        self._set_held_out(*synthetic_batch(self.spec, self._sizes[1], g))


# ---------------------------------------------------------------- cells, models and steps

def make_spec(name: str) -> TaskSpec:
    shapes = {  # (input_dim, n_tokens, n_classes, n_readout, n_predictions)
        "cifar10": (48, 64, 10, 1, 1),
        "bit-memory": (50, 120, 2, 20, 1000),
        "bit-xor": (1, 10, 2, 5, 5),
    }
    d, t, c, r, p = shapes[name]
    return TaskSpec(name=name, input_kind="vector", input_dim=d, n_tokens=t, n_classes=c,
                    n_readout=r, n_predictions=p, chance=1 / c, threshold=0.9)


def bench_cell(s: Settings, task: str, **overrides):
    values = {"task": task, "backbone": s.backbone, "init": "random", "depth": s.depth,
              "batch_size": 16, "precision": s.precision, **overrides}
    return make_cell(values)


def build(cell, spec, device):
    """Model, trainable parameters and optimizer, as fpt_core.train.train_cell prepares them."""
    model = build_model(cell, spec).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay)
    return model, params, optimizer


def torch_dropout(model, attention: str = "sdpa") -> None:
    """The model with torch's own dropout, drawn from the global generator: nn.Dropout for every
    counter-based one, and transformers' `attention` (sdpa or eager) dropping attention
    probabilities itself."""
    hf = getattr(model.backbone, "model", None)
    if hf is not None and hasattr(hf, "set_attn_implementation"):
        hf.set_attn_implementation(attention)
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CounterDropout):
                setattr(module, name, nn.Dropout(child.p))


def paper_style(model) -> None:
    """The model as the paper's code ran it: eager attention, HF's Python GELU, torch's dropout."""
    torch_dropout(model, attention="eager")
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, GELUTanh):
                setattr(module, name, NewGELUActivation())


def attention_name(model) -> str:
    hf = getattr(model.backbone, "model", None)
    return getattr(getattr(hf, "config", None), "_attn_implementation", "n/a")


def describe(s: Settings, model) -> str:
    blocks = model.backbone.n_blocks
    return f"{s.backbone} random, {blocks} blocks"


def trainer_step(model, optimizer, params, task, cell, device, step: int) -> float:
    """One step exactly as fpt_core.train.train_cell's loop takes a cell's alone."""
    return train_step(LiveBatches(model, task, cell, device), optimizer, params, cell, device, step)[0].item()


def reference_step(model, optimizer, spec, batch_size: int, rng, grad_clip: float, device) -> float:
    """One step the way the paper's trainer took it: fp32, NumPy batch, a loss.item() sync."""
    x, y = numpy_batch(spec, batch_size, rng)
    x, y = x.to(device), y.to(device)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.detach().cpu().item()
