"""Output-layer-only cells on frozen features that are computed once and cached.

When only the output layer trains, everything below it is a fixed function of the input, so a
step need not run the backbone again: the features the model feeds its output layer (the
readout tokens' final-norm hidden states) are computed once for the training split, the
held-out split, the validation split (if any) and the train-accuracy sample, and the trainer's
loop steps the output layer on those. The paper saw such epochs 500 to 2000 times faster.

Features are computed in eval mode from unaugmented inputs, so caching applies only where that
is what training would compute: no dropout, a fixed training split, no augmentation, and
features that do not depend on an example's batch-mates (remote homology padded to each batch's
longest sequence) (can_cache). Training batches follow the task's own epoch order, so the
numbers equal the live path up to float rounding. With dropout on (the paper's output-only
rows) cells train live.
"""
from __future__ import annotations

import time

import torch
from torch import Tensor

from fpt_core.model import autocast

EVAL_CHUNK = 4096  # cached features are small: evaluate them in large chunks


def can_cache(cell, task) -> bool:
    """Only the output layer trains, nothing below it is random (no dropout: the paper's code
    trains output-only cells in train mode, dropout on), and the task has a fixed, unaugmented
    training split whose inputs do not depend on batch-mates: then cached features are exactly
    what the live path computes (where the run allows caching, its feature_cache). Needs no
    data: `task` may be unloaded (make_task(cell, load=False)), so plans decide with the same
    rule."""
    return (tuple(cell.trainable) == ("output",) and cell.dropout == 0
            and task.fixed_training_split and not task.augment and not task.batch_dependent)


@torch.no_grad()
def readout_features(model, x: Tensor, precision: str = "fp32") -> Tensor:
    """What the model's forward feeds its output layer, (B, n_readout, hidden), in eval mode."""
    captured: list[Tensor] = []
    hook = model.output_layer.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, x.device):
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


def _chunks(x: Tensor, y: Tensor, size: int):
    for i in range(0, len(y), size):
        yield x[i:i + size], y[i:i + size]


class CachedFeatures:
    """The trainer's batch source for output-only cells: frozen features computed once.

    Same interface as train.LiveBatches: train_batch(step), logits(x), eval_sets().
    """

    def __init__(self, model, task, cell, device, batch_size: int = 64):
        started = time.perf_counter()
        self.model, self.task, self.batch_size = model, task, cell.batch_size
        raw, labels = task.training_split()
        train = ((task.inputs(raw[i:i + batch_size]), labels[i:i + batch_size])
                 for i in range(0, len(labels), batch_size))
        self.train_x, self.train_y = _extract(model, train, cell.precision, device)
        self.test = _extract(model, task.eval_batches(batch_size), cell.precision, device)
        self.val = (_extract(model, task.val_batches(batch_size), cell.precision, device)
                    if task.has_validation else None)
        self.train_sample = _extract(model, task.train_eval_batches(batch_size), cell.precision, device)
        self.build_s = time.perf_counter() - started

    def train_batch(self, step: int) -> tuple[Tensor, Tensor]:
        idx = self.task.batch_indices(step, self.batch_size)
        if self.train_x.device.type == "cuda":  # from pinned memory, without waiting for the copy
            idx = idx.pin_memory().to(self.train_x.device, non_blocking=True)
        return self.train_x[idx], self.train_y[idx]

    def logits(self, feats: Tensor) -> Tensor:
        return output_logits(self.model, feats)

    def eval_sets(self) -> dict:
        """Batches of each evaluated set: test, train_sample, and val where the task has one."""
        sets = {"test": self.test, "train_sample": self.train_sample, "val": self.val}
        return {name: _chunks(*xy, EVAL_CHUNK) for name, xy in sets.items() if xy is not None}
