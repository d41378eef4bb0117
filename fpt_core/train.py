"""Train cells: Adam on the trainable groups, evaluation on the held-out split, exact resume.

One loop serves every cell, alone or stepped together with companions (fpt_core/together.py).
Each cell in it is a Member (fpt_core/member.py): its directory, task, trainable tensors, own
torch.optim.Adam, state, logs. What differs is how a step's logits are computed: alone, from
the batch source (LiveBatches draws the batch from the task and runs the whole model;
features.CachedFeatures steps the output layer on frozen features computed once); together,
one batched computation over the frozen model shared by all (together.batched_logits). Every
cell then has its own loss, and one backward gives each its own gradient; each clips and steps
its own optimiser.

Every source of randomness in a step is a function of (seed, step): the batch comes from
task.train_batch(step) and the dropout masks hash (seed, step) (fpt_core/dropout.py), whatever
else runs beside the cell. A checkpoint therefore needs only the trainable weights, the
optimiser state and the curve so far, and a run killed and resumed ends with the same numbers as
one never killed.

On a GPU the loop waits for the device only where it must: a step's loss and correct count stay
on the device until the next evaluation or checkpoint, where one transfer brings them all back
(and finds the first non-finite loss, if any). Batches and dropout keys built on the host are
pinned and copied without blocking. The task's data is drawn on the host from seeded CPU
generators on every device, so a cell's examples are the same on the CPU and on a GPU.

While it runs, a cell's directory holds progress.json (state, step, last loss and accuracy,
rewritten at every evaluation, read by `fpt status`) and metrics.csv (the curve so far).
"""
from __future__ import annotations

import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import pandas as pd
import torch
from torch.func import functional_call

from fpt_core import results, together
from fpt_core.cell import Cell, make_cell
from fpt_core.dropout import KEY_BUFFER
from fpt_core.hardware import precision_context
from fpt_core.member import (
    Member,
    Preempted,
    frozen_tensors,
    load_trainable_state,
    loss_and_correct,
    scored,
    to_device,
    trainable_state,  # noqa: F401 - fpt_core/calibrate.py takes it from here
)
from fpt_core.model import autocast, build_model, dropout_key
from fpt_core.run import Run, resolve_device
from fpt_core.tasks import make_task

# Slurm's preemption and time-limit warnings, and Ctrl-C: each writes a checkpoint, then stops.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


def step_seed(seed: int, step: int) -> int:
    """A seed for what a cell draws at a step outside the model (synthetic batches)."""
    return (seed * 1_000_003 + step) % (2**63)


def train_step(source, optimizer, params, cell: Cell, device, step: int):
    """One optimiser step of a cell alone on the batch of `step`; returns the loss and the
    number of correct predictions (on the device, train mode as trained: the paper's train
    accuracy) and the number of predictions."""
    source.model.set_dropout_step(cell.seed, step)
    x, y = source.train_batch(step)
    loss, correct = loss_and_correct(source, x, y, cell, device)
    if optimizer is not None:
        loss.backward()
        clip_and_step(optimizer, params, cell)
    return loss.detach(), correct, y.numel()


def clip_and_step(optimizer, params, cell: Cell) -> None:
    if cell.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, cell.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def step_together(members: list[Member], model, device) -> list[tuple | None]:
    """One optimiser step of each member, at its own step, over the shared frozen `model`:
    members whose batches share a shape as one batched computation (a member whose batch shape
    no other has computes as a cell alone does), a loss each, one backward for all, then each
    clips and steps its own optimiser. Returns each member's (loss, correct, predictions) as
    train_step does; None for a member whose batch could not be drawn (it has failed)."""
    batches = {}
    for i, m in enumerate(members):
        try:
            batches[i] = m.source.train_batch(m.state["step"])
        except Exception as e:  # noqa: BLE001 - its companions still step
            m.fail(e)
    by_shape: dict[tuple, list[int]] = {}
    for i, (x, y) in batches.items():
        by_shape.setdefault((x.shape, x.dtype, y.shape), []).append(i)
    logits = {}
    with autocast(members[0].cell.precision, device):
        for idx in by_shape.values():
            keys = to_device(torch.stack([dropout_key(members[i].cell.seed, members[i].state["step"])
                                          for i in idx]), device)
            if len(idx) == 1:
                own = {**members[idx[0]].tensors(), KEY_BUFFER: keys[0]}
                logits[idx[0]] = functional_call(model, own, (batches[idx[0]][0],))
            else:
                xs = torch.stack([batches[i][0] for i in idx])
                logits.update(zip(idx, together.batched_logits(
                    model, [members[i].tensors() for i in idx], keys, xs)))
    scores = {i: scored(logits[i], y) for i, (_, y) in batches.items()}
    losses = [loss for i, (loss, _) in scores.items() if members[i].optimizer is not None]
    if losses:
        torch.autograd.backward(losses)  # the sum of the losses: each cell gets its own gradient
    for i in scores:
        if members[i].optimizer is not None:
            clip_and_step(members[i].optimizer, list(members[i].params.values()), members[i].cell)
    return [(scores[i][0].detach(), scores[i][1], batches[i][1].numel()) if i in scores else None
            for i in range(len(members))]


class _StopFlag:
    """Turns the stop signals into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # signals only reach it
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train_cell(cell: Cell, out_dir: str | Path, run: Run | None = None) -> pd.DataFrame:
    """Train `cell` into `out_dir` as `run` says, resuming from its checkpoint; return the
    summary row."""
    (outcome,) = train_cells([cell], [out_dir], run)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def train_cells(cells: list[Cell], out_dirs: list, run: Run | None = None,
                logs: list[TextIO] | None = None) -> list[pd.DataFrame | Exception]:
    """Train cells that may step together (one together.together_key; or one cell, alone), each
    into its own directory, resuming each from its own checkpoint, each printing to its own log
    (default stderr). Returns each cell's summary row, or the exception that ended it: one
    cell's failure leaves the others training. A stop signal checkpoints every cell still
    training, then raises Preempted."""
    run = run or Run()
    if len(cells) > 1 and (together.together_key(cells[0]) is None
                           or len({together.together_key(c) for c in cells}) > 1):
        raise ValueError("only cells with one together key (fpt_core/together.py) step together")
    device = resolve_device(run.device)
    members = [Member(cell, Path(out), run, device, logs[i] if logs else None)
               for i, (cell, out) in enumerate(zip(cells, out_dirs))]
    waiting = [m for m in members if not m.already_finished()]
    try:
        with precision_context(cells[0].precision, device):
            _train(waiting, run, device)
    except Preempted:
        for m in waiting:
            if m.outcome is None:
                m.progress.write("interrupted")
        raise
    except BaseException as e:
        for m in waiting:
            if m.outcome is None:
                m.fail(e)
        if not isinstance(e, Exception):
            raise
    return [m.outcome for m in members]


def _train(members: list[Member], run: Run, device: torch.device) -> None:
    """Build and resume every member, then step them until each has ended."""
    shared = None
    for m in members:
        try:
            task = make_task(m.cell, data_dir=run.data_dir)
            model = build_model(m.cell, task.spec).to(device)
            if shared is None:
                shared = model.train()
            m.start(task, model, shared if len(members) > 1 else None)
        except Exception as e:  # noqa: BLE001 - its companions still train
            m.fail(e)
    running = [m for m in members if m.outcome is None]
    if len(members) > 1 and running:
        own_where_any_differs(running, shared)
    with _StopFlag() as stop, ExitStack() as stack:
        for i, m in enumerate(running):
            try:
                m.open(stack, position=i)
            except Exception as e:  # noqa: BLE001 - its companions still train
                m.fail(e)
        running = finish_done(running)
        while running:
            started = time.perf_counter()
            try:
                if len(members) == 1:
                    (m,) = running
                    outs = [train_step(m.source, m.optimizer, list(m.params.values()), m.cell,
                                       device, m.state["step"])]
                else:
                    outs = step_together(running, shared, device)
            except Exception as e:  # noqa: BLE001 - a failed shared step fails all who took it
                for m in running:
                    m.fail(e)
                return
            share = (time.perf_counter() - started) / len(running)
            stopping = stop.signum is not None
            for m, out in zip(running, outs):
                try:
                    if out is not None:
                        m.after_step(out, share, stopping)
                except Exception as e:  # noqa: BLE001 - its companions still train
                    m.fail(e)
            running = finish_done(running)
            if stopping and running:
                for m in running:
                    m.save()
                raise Preempted(stopped(stop.signum, running), stop.signum)


def finish_done(members: list[Member]) -> list[Member]:
    """Write the results of the members that have ended; the others."""
    for m in members:
        if m.done and m.outcome is None:
            m.finish()
    return [m for m in members if m.outcome is None]


def own_where_any_differs(members: list[Member], shared) -> None:
    """A frozen tensor that differs between companions is each one's own: those whose value is
    the shared model's get a copy of it, taken before any member's is loaded there."""
    names = set().union(*(m.fixed for m in members))
    reference = {n: t.detach().clone() for n, t in frozen_tensors(shared).items() if n in names}
    for m in members:
        for name in names:
            m.fixed.setdefault(name, reference[name])


def stopped(signum: int, members: list[Member]) -> str:
    name, steps = signal.Signals(signum).name, members[0].cell.steps
    if len(members) == 1:
        return f"{name}: checkpoint written at step {members[0].state['step']} of {steps}"
    where = ", ".join(f"{m.cell.id} at step {m.state['step']}" for m in members)
    return f"{name}: checkpoints written ({where}) of {steps}"


def load_trained(model_path: str | Path, data_dir: str = Run.data_dir):
    """Rebuild a finished cell's model from its model.pt: (cell, model, task)."""
    saved = results.load_checksummed(Path(model_path))
    cell = make_cell(saved["cell"])
    task = make_task(cell, data_dir=data_dir)
    model = build_model(cell, task.spec)
    load_trainable_state(model, saved["model"])
    model.eval()
    return cell, model, task
