"""Which cells can step together: one batched computation, each cell with its own trainable
parameters, optimiser state, data order and dropout masks.

Stepping in lockstep needs the same architecture, task, batch shape, precision, trainable groups
and schedule; what may differ is what each cell owns: its seed (data, dropout, the weights drawn
for it) and its optimiser's settings. The seeds of a cell are the usual companions (HFTA, Wang
et al. MLSys 2021, fuses such repeated jobs). Where their frozen blocks are the same weights
(pretrained, frozen) they are shared, not copied; where each cell drew its own (random or
statistics init) or trains its blocks, each cell's are stacked with its other tensors.

The batched computation (batched_logits) is torch.func.vmap over torch.func.functional_call of
one model: each cell's own tensors are stacked along a leading cell axis, the shared frozen
weights are not, so each shared product sees one batch K times larger, and every kernel of a
step is launched once for the K cells. fpt_core/train.py steps the cells (step_together): a
loss each, one backward, an optimiser each.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.func import functional_call, vmap

from fpt_core.dropout import KEY_BUFFER

OWN = ("seed", "lr", "weight_decay", "grad_clip")  # what companions may differ in


def together_key(cell) -> tuple | None:
    """Cells with equal keys can step together; None for a cell that trains alone because it
    may train on cached features (only its output layer trains, without dropout: a step costs
    next to nothing)."""
    if tuple(cell.trainable) == ("output",) and cell.dropout == 0:
        return None
    return tuple(sorted((k, str(v)) for k, v in cell.to_dict().items() if k not in OWN))


def groups(cells: Iterable, most: int) -> list[list]:
    """Cells in groups of at most `most` that step together, in the order given; a cell that
    must train alone is a group of its own."""
    by_key: dict[tuple, list] = {}
    out: list[list] = []
    for cell in cells:
        key = together_key(cell)
        if key is None or most <= 1:
            out.append([cell])
            continue
        members = by_key.setdefault(key, [])
        if not members:
            out.append(members)
        members.append(cell)
        if len(members) == most:
            del by_key[key]
    return out


def batched_logits(model, tensors: list[dict[str, Tensor]], keys: Tensor, xs: Tensor) -> Tensor:
    """The logits of K cells in one batched computation: cell k's batch xs[k] through `model`
    with cell k's own tensors (its trainable ones and any frozen ones of its own) in place of
    the model's and its dropout key keys[k]; every other weight is the model's, shared, not
    copied. (K, B, ...) in, (K, B, n_predictions, n_classes) out. The stack is differentiable,
    so a backward of the cells' losses reaches each cell's own tensors."""
    stacked = {name: torch.stack([own[name] for own in tensors]) for name in tensors[0]}

    def one(own: dict[str, Tensor], key: Tensor, x: Tensor) -> Tensor:
        return functional_call(model, {**own, KEY_BUFFER: key}, (x,))

    # Nothing in a step may draw from a generator: a draw would depend on the companions.
    return vmap(one, randomness="error")(stacked, keys, xs)
