"""Output-layer-only cells on frozen features that are computed once and cached.

When only the output layer trains, everything below it is a fixed function of the input, so an
epoch need not run the backbone again: the features the model feeds its output layer (the
readout tokens' final-norm hidden states) are computed once for the training split, the
held-out split and the train-accuracy sample, and the output layer is trained on those. The
paper saw such epochs 500 to 2000 times faster.

Features are computed in eval mode (no dropout) from unaugmented inputs, so caching applies to
tasks with a fixed training split and no augmentation (can_cache). Training batches follow the
task's own epoch order, so with dropout off the numbers equal the normal trainer path up to
float rounding; with dropout on they differ as two seeds do.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class FeatureCache:
    train_x: Tensor  # (N, n_readout, hidden), in the task's training-split order
    train_y: Tensor  # (N, n_predictions)
    test_x: Tensor
    test_y: Tensor
    train_eval_x: Tensor
    train_eval_y: Tensor
    build_s: float = 0.0  # seconds spent computing the features


def can_cache(cell, task) -> bool:
    """Only the output layer trains, and the task has a fixed, unaugmented training split."""
    task.load()
    return tuple(cell.trainable) == ("output",) and fixed_split(task) is not None and not task.augment


def fixed_split(task):
    """The task's raw training split (x, y), None for tasks that draw fresh examples each step."""
    return getattr(task, "_train", None)


def _autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def readout_features(model, x: Tensor, precision: str = "fp32") -> Tensor:
    """What the model's forward feeds its output layer, (B, n_readout, hidden), in eval mode."""
    captured: list[Tensor] = []
    hook = model.output_layer.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        with _autocast(precision, x.device):
            model(x)
    finally:
        hook.remove()
        model.train(was_training)
    return captured[0].float()


def output_logits(model, feats: Tensor) -> Tensor:
    """The output layer on cached features: (B, n_predictions, n_classes), as FPT.forward reshapes."""
    spec = model.spec
    return model.output_layer(feats).reshape(feats.shape[0], spec.n_predictions, spec.n_classes)


def _extract(model, batches, precision: str, device) -> tuple[Tensor, Tensor]:
    xs, ys = [], []
    for x, y in batches:
        xs.append(readout_features(model, x.to(device), precision))
        ys.append(y.to(device))
    return torch.cat(xs), torch.cat(ys)


def build_cache(model, task, precision: str, device, batch_size: int = 64) -> FeatureCache:
    """Features of the training split, the held-out split and the train-accuracy sample."""
    started = time.perf_counter()
    split = fixed_split(task.load())
    if split is None:
        raise ValueError(f"task {task.spec.name}: draws fresh examples every step, so it has no "
                         "fixed training split to cache; set n_train to fix one")
    raw, labels = split
    train = ((task._features(raw[i:i + batch_size], None), labels[i:i + batch_size])
             for i in range(0, len(labels), batch_size))
    train_x, train_y = _extract(model, train, precision, device)
    test_x, test_y = _extract(model, task.eval_batches(batch_size), precision, device)
    te_x, te_y = _extract(model, task.train_eval_batches(batch_size), precision, device)
    return FeatureCache(train_x, train_y, test_x, test_y, te_x, te_y, time.perf_counter() - started)


def head_loss(model, feats: Tensor, y: Tensor, precision: str) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy and number correct, as the trainer's loss_and_correct."""
    with _autocast(precision, feats.device):
        logits = output_logits(model, feats)
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, (logits.argmax(-1) == y).sum()


@torch.no_grad()
def evaluate_cached(model, x: Tensor, y: Tensor, precision: str, batch_size: int = 4096):
    """Mean loss per prediction and accuracy over cached features."""
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(y), batch_size):
        loss, c = head_loss(model, x[i:i + batch_size], y[i:i + batch_size], precision)
        loss_sum += loss * y[i:i + batch_size].numel()
        correct += c
    return (loss_sum / y.numel()).item(), correct.item() / y.numel()


def head_steps(model, optimizer, params, cache: FeatureCache, task, cell, start: int, stop: int) -> list[Tensor]:
    """Training steps start..stop-1 on cached features; the losses, not yet synced to the host."""
    losses = []
    for step in range(start, stop):
        idx = task._sampler.indices(step, cell.batch_size).to(cache.train_x.device)
        loss, _ = head_loss(model, cache.train_x[idx], cache.train_y[idx], cell.precision)
        loss.backward()
        if cell.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cell.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return losses


def train_output_only(cell, task, model, device, cache: FeatureCache | None = None) -> dict:
    """Train the output layer of `model` on cached features; the trainer's state for finish().

    The state holds step, curve (step, train_loss, test_loss, test_acc, train_acc,
    wall_time_s), best_test_acc, best_step, status and wall_time_s, as train_cell keeps them.
    """
    if not can_cache(cell, task):
        raise ValueError(f"cell {cell.id}: features can be cached only when trainable is output "
                         "alone and the task has a fixed, unaugmented training split")
    device = torch.device(device)
    started = time.perf_counter()
    if cache is None:
        cache = build_cache(model, task, cell.precision, device, max(cell.batch_size, 64))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay)
    state = {"cell_id": cell.id, "step": 0, "curve": [], "best_test_acc": -1.0, "best_step": None,
             "status": "finished", "wall_time_s": 0.0, "loss_sum": 0.0, "loss_count": 0}
    step = 0
    while step < cell.steps:
        stop = min(cell.steps, (step // cell.eval_every + 1) * cell.eval_every)
        losses = torch.stack(head_steps(model, optimizer, params, cache, task, cell, step, stop)).tolist()
        bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
        if bad:
            state.update(status="diverged", step=step + bad[0])
            break
        step = stop
        test_loss, test_acc = evaluate_cached(model, cache.test_x, cache.test_y, cell.precision)
        _, train_acc = evaluate_cached(model, cache.train_eval_x, cache.train_eval_y, cell.precision)
        state["curve"].append({
            "step": step, "train_loss": sum(losses) / len(losses), "test_loss": test_loss,
            "test_acc": test_acc, "train_acc": train_acc, "wall_time_s": time.perf_counter() - started,
        })
        if test_acc > state["best_test_acc"]:
            state["best_test_acc"], state["best_step"] = test_acc, step
        state["step"] = step
    state["wall_time_s"] = time.perf_counter() - started
    state["feature_cache_s"] = cache.build_s
    return state
