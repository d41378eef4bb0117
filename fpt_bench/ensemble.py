"""Several cells that share one frozen backbone, trained together in one process.

Cells that differ only in seed or learning rate, over the same frozen weights, would each run
the same large frozen matrix products on the paper's small batches (2 to 16), which leaves a
GPU idle and a CPU paying per-operation overhead K times. Here the frozen weights are held
once, every trainable tensor is stacked along a leading cell axis, and torch.func.vmap runs the
model over all cells at once, so each frozen matmul sees one batch K times larger.

Each cell keeps its own loss, gradient clipping and Adam state, so without dropout a cell ends
with the numbers it reaches when trained alone, up to float rounding. Dropout masks are drawn
for all cells from one generator seeded by the first cell's (seed, step): the same distribution
as a solo run, not the same masks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, vmap

from fpt_core.model import autocast


class SharedBackbone:
    """K copies of one model that differ only in their trainable tensors, stepped together."""

    def __init__(self, models, lrs, *, grad_clip: float = 1.0, weight_decay: float = 0.0,
                 precision: str = "fp32", betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        if len(models) != len(lrs) or not models:
            raise ValueError(f"need one learning rate per model, got {len(lrs)} for {len(models)}")
        self.base = models[0]
        self.names = [n for n, p in self.base.named_parameters() if p.requires_grad]
        self.frozen = {n: p for n, p in self.base.named_parameters() if not p.requires_grad}
        self.frozen.update(self.base.named_buffers())
        check_shared(models, self.names, self.frozen)
        self.params = {
            n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_()
            for n in self.names
        }
        device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        self.device = device
        self.k = len(models)
        self.lr = torch.tensor([float(lr) for lr in lrs], device=device)
        self.grad_clip, self.weight_decay = grad_clip, weight_decay
        self.betas, self.eps = betas, eps
        self.precision = precision
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.steps = 0

    def _one(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.base, {**params, **self.frozen}, (x,))

    def logits(self, xs: Tensor) -> Tensor:
        """(K, B, ...) inputs, one batch per cell -> (K, B, n_predictions, n_classes) logits."""
        with autocast(self.precision, self.device):
            out = vmap(self._one, randomness="different")(self.params, xs)
        return out.float()

    def train_step(self, xs: Tensor, ys: Tensor) -> Tensor:
        """One step for every cell; returns the (K,) losses without a host sync."""
        logits = self.logits(xs)
        per_item = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1), reduction="none")
        losses = per_item.reshape(self.k, -1).mean(1)
        if not self.names:
            return losses.detach()
        grads = torch.autograd.grad(losses.sum(), [self.params[n] for n in self.names])
        grads = dict(zip(self.names, grads))
        if self.grad_clip > 0:
            clip_per_cell(grads, self.grad_clip)
        self._adam(grads)
        return losses.detach()

    @torch.no_grad()
    def _adam(self, grads: dict[str, Tensor]) -> None:
        """torch.optim.Adam's update, elementwise, with a learning rate per cell."""
        self.steps += 1
        beta1, beta2 = self.betas
        bias1 = 1 - beta1 ** self.steps
        bias2_sqrt = math.sqrt(1 - beta2 ** self.steps)
        for n in self.names:
            p, g, m, v = self.params[n], grads[n], self.exp_avg[n], self.exp_avg_sq[n]
            if self.weight_decay:
                g = g.add(p, alpha=self.weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            step_size = per_cell(self.lr / bias1, p)
            denom = (v.sqrt() / bias2_sqrt).add_(self.eps)
            p.addcdiv_(m * -step_size, denom)

    def trainable_state(self, k: int) -> dict[str, Tensor]:
        return {n: self.params[n][k].detach().clone() for n in self.names}

    @torch.no_grad()
    def write_back(self, models) -> None:
        """Copy each cell's trained tensors into its own model."""
        for k, model in enumerate(models):
            params = dict(model.named_parameters())
            for n in self.names:
                params[n].copy_(self.params[n][k])


def per_cell(values: Tensor, like: Tensor) -> Tensor:
    """(K,) values shaped to broadcast over a stacked (K, ...) tensor."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


@torch.no_grad()
def clip_per_cell(grads: dict[str, Tensor], max_norm: float) -> None:
    """clip_grad_norm_ applied to each cell's gradients separately."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], 1)
    total = torch.linalg.vector_norm(norms, dim=1)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads.values():
        g.mul_(per_cell(coef, g))


def check_shared(models, names: list[str], frozen: dict[str, Tensor]) -> None:
    for i, model in enumerate(models[1:], 1):
        params = dict(model.named_parameters())
        mine = [n for n, p in params.items() if p.requires_grad]
        if mine != names:
            raise ValueError(f"model {i} trains other parameters than model 0")
        state = {**params, **dict(model.named_buffers())}
        for n, t in frozen.items():
            if not torch.equal(state[n], t):
                raise ValueError(
                    f"model {i} has other frozen weights than model 0 ({n}); cells share a backbone "
                    "only when init=pretrained, or init=random/statistics with the same seed"
                )
