"""Cells that share one frozen backbone, stepped together in one process (the library's step:
fpt_core.train.step_together) against the same cells stepped one after another.

Cells that differ only in what each owns (seed, learning rate) over the same frozen weights
would each run the same large frozen matrix products on the paper's small batches (2 to 16),
which leaves a GPU idle and a CPU paying per-operation overhead once per cell. Stepped
together, the frozen weights are held once and each frozen product sees one batch K times
larger; each cell keeps its own trainable tensors, torch.optim.Adam, batches and dropout masks.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from fpt_bench.report import device_label, line
from fpt_bench.timing import alternate
from fpt_bench.workload import (
    Settings,
    TensorPool,
    bench_cell,
    build,
    describe,
    make_spec,
    trainer_step,
    until,
)
from fpt_core.member import Member
from fpt_core.model import build_model
from fpt_core.run import Run
from fpt_core.train import step_together

BATCH = 4  # the paper's bit tasks train at batch 4


class Offset:
    """Cell k's view of a shared pool: its own batches, as its own task would give it."""

    def __init__(self, pool: TensorPool, k: int):
        self.pool, self.k = pool, k

    def train_batch(self, step: int, batch_size: int):
        return self.pool.train_batch(step + self.k, batch_size)


def together_members(cells, spec, tasks, device: torch.device, out: Path):
    """Members stepped together over one model built once (cells of one seed: random weights
    shared exactly), each with copies of its trainable tensors and its own optimiser."""
    shared = build_model(cells[0], spec).to(device).train()
    members = []
    for cell, task in zip(cells, tasks):
        member = Member(cell, out / cell.id, Run(device=device.type), device)
        member.start(task, build_model(cell, spec).to(device), shared)
        members.append(member)
    return shared, members


def measure_shared(s: Settings, shape: str) -> list[dict]:
    """Cells sharing one frozen backbone at batch 4: stepped together vs one after another."""
    spec = make_spec(shape)
    cells = [bench_cell(s, shape, batch_size=BATCH, lr=1e-3 * (i + 1)) for i in range(s.n_cells)]
    pool = TensorPool(spec, BATCH, pool=2 * s.n_cells)
    tasks = [Offset(pool, k) for k in range(s.n_cells)]
    alone = [build(c, spec, s.device) for c in cells]
    counter = {"alone": 0}
    with tempfile.TemporaryDirectory(prefix="fpt-bench-") as out:
        shared, members = together_members(cells, spec, tasks, s.device, Path(out))

        def one_after_another():
            step = counter["alone"]
            for (model, params, opt), cell, task in zip(alone, cells, tasks):
                for i in range(s.steps):
                    trainer_step(model, opt, params, task, cell, s.device, step + i)
            counter["alone"] += s.steps

        def together():
            for _ in range(s.steps):
                losses = [loss for loss, _, _ in step_together(members, shared, s.device)]
                torch.stack(losses).tolist()  # as each step alone reads its loss
                for member in members:
                    member.state["step"] += 1

        timed = alternate({"baseline": one_after_another, "ours": together}, s.repeats,
                          s.device, until(s))
    cell_steps = s.n_cells * s.steps
    return [line(
        "shared_backbone", dtype=cells[0].precision, ours=cell_steps / timed["ours"]["s"],
        baseline=cell_steps / timed["baseline"]["s"], unit="cell-steps/s",
        peak=max(timed["ours"]["peak_mb"], timed["baseline"]["peak_mb"]),
        peak_mem_mb_ours=timed["ours"]["peak_mb"], peak_mem_mb_baseline=timed["baseline"]["peak_mb"],
        device=device_label(s.device), shape=shape, model=describe(s, shared), batch=BATCH,
        cells=s.n_cells, dropout=cells[0].dropout, repeats=len(timed["ours"]["all_s"]))]
