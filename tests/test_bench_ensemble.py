import pytest
import torch
import torch.nn.functional as F

from fpt_core.cell import make_cell
from fpt_bench.ensemble import SharedBackbone
from fpt_core.model import build_model
from fpt_core.tasks import make_task

CELL = {"task": "digits", "backbone": "gpt2-tiny", "init": "random", "batch_size": 4,
        "progress": False, "eval_size": 100}


def solo_steps(model, batches, lr, grad_clip, weight_decay):
    """The trainer's step, alone: Adam, clip_grad_norm_, mean cross-entropy."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    losses = []
    for x, y in batches:
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_cells_stepped_together_end_where_each_ends_alone():
    lrs = [1e-3, 3e-3, 1e-2]
    cell = make_cell(CELL)
    task = make_task(cell)
    batches = [[task.train_batch(10 * k + s, 4) for s in range(5)] for k in range(3)]
    alone = [build_model(cell, task.spec).eval() for _ in lrs]
    together = [build_model(cell, task.spec).eval() for _ in lrs]
    group = SharedBackbone(together, lrs, grad_clip=0.05, weight_decay=0.01)
    group_losses = []
    for s in range(5):
        xs = torch.stack([batches[k][s][0] for k in range(3)])
        ys = torch.stack([batches[k][s][1] for k in range(3)])
        group_losses.append(group.train_step(xs, ys))
    group.write_back(together)
    for k, lr in enumerate(lrs):
        losses = solo_steps(alone[k], batches[k], lr, grad_clip=0.05, weight_decay=0.01)
        assert torch.allclose(torch.stack(group_losses)[:, k], torch.tensor(losses), rtol=1e-5, atol=1e-6)
        for (name, a), b in zip(alone[k].named_parameters(), together[k].parameters()):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), name
    moved = [n for n, p in alone[0].named_parameters() if p.requires_grad]
    assert moved and not torch.equal(group.params[moved[0]][0], group.params[moved[0]][2])


def test_frozen_weights_are_held_once():
    cell = make_cell(CELL)
    spec = make_task(cell).spec
    models = [build_model(cell, spec) for _ in range(2)]
    group = SharedBackbone(models, [1e-3, 1e-3])
    assert all(p.data_ptr() == dict(models[0].named_parameters())[n].data_ptr()
               for n, p in group.frozen.items() if n in dict(models[0].named_parameters()))
    assert all(p.shape[0] == 2 for p in group.params.values())


def test_random_backbones_of_different_seeds_cannot_share():
    spec = make_task(make_cell(CELL)).spec
    models = [build_model(make_cell({**CELL, "seed": s}), spec) for s in (0, 1)]
    with pytest.raises(ValueError, match="frozen weights"):
        SharedBackbone(models, [1e-3, 1e-3])
