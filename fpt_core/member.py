"""One cell in the training loop (fpt_core/train.py): its directory, task, batches, trainable
tensors, optimiser, state and logs; what it does between steps (bring the losses back, evaluate,
checkpoint) and at its end (its results).

A cell trained alone owns its model: its trainable tensors are the model's parameters. A cell
stepped together with companions owns copies of its trainable tensors (and of any frozen tensor
of its model that differs from the shared model's), with its own torch.optim.Adam over them;
the shared model's forward takes them in place of its own (torch.func.functional_call), and
before the cell evaluates or writes its results they are copied into the shared model.
"""
from __future__ import annotations

import math
import sys
import time
from collections import deque
from contextlib import ExitStack
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fpt_core import convergence, results
from fpt_core.cell import Cell
from fpt_core.dropout import KEY_BUFFER
from fpt_core.features import CachedFeatures, can_cache
from fpt_core.metrics import MetricsLog
from fpt_core.model import autocast
from fpt_core.record import Progress, write_results
from fpt_core.run import Run

# The paper's train accuracy: its Trainer averages the batches of the last 100 training steps
# (train mode, as trained), whenever it evaluates.
TRAIN_ACC_WINDOW = 100


class Preempted(Exception):
    """Raised after a checkpoint is written in answer to a stop signal; .signum says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device`; to a GPU from pinned memory, without waiting for the copy."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


class LiveBatches:
    """The trainer's batch source for most cells: each step's batch from the task, through the
    whole model. Same interface as features.CachedFeatures."""

    def __init__(self, model, task, cell: Cell, device: torch.device):
        self.model, self.task, self.cell, self.device = model, task, cell, device

    def train_batch(self, step: int):
        x, y = self.task.train_batch(step, self.cell.batch_size)
        return to_device(x, self.device), to_device(y, self.device)

    def logits(self, x):
        return self.model(x)

    def eval_sets(self) -> dict:
        size = self.task.eval_batch_size(self.cell.batch_size)
        sets = {"test": self.task.eval_batches(size), "train_sample": self.task.train_eval_batches(size)}
        if self.task.has_validation:
            sets["val"] = self.task.val_batches(size)
        return sets


def batch_source(model, task, cell: Cell, run: Run, device: torch.device):
    if run.feature_cache and can_cache(cell, task):
        return CachedFeatures(model, task, cell, device, task.eval_batch_size(cell.batch_size))
    return LiveBatches(model, task, cell, device)


def scored(logits, y):
    """Mean cross-entropy per prediction and the number of correct predictions."""
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    return loss, (logits.argmax(-1) == y).sum()


def loss_and_correct(source, x, y, cell: Cell, device: torch.device):
    with autocast(cell.precision, device):
        logits = source.logits(x)
    return scored(logits, y)


@torch.no_grad()
def evaluate(source, batches, cell: Cell, device: torch.device) -> tuple[float, float, int]:
    """Mean loss per prediction, accuracy and examples of one full pass of `batches`."""
    model = source.model
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = examples = 0
    for x, y in batches:
        x, y = to_device(x, device), to_device(y, device)
        loss, c = loss_and_correct(source, x, y, cell, device)
        loss_sum += loss * y.numel()
        correct += c
        count += y.numel()
        examples += len(y)
    model.train(was_training)
    return (loss_sum / count).item(), correct.item() / count, examples


def new_state(cell: Cell) -> dict:
    return {
        "cell_id": cell.id, "step": 0, "curve": [], "loss_sum": 0.0, "loss_count": 0,
        "window": [],  # (correct, predictions) of the last TRAIN_ACC_WINDOW steps
        "best_test_acc": -1.0, "best_step": None, "status": "finished", "stop_reason": "budget",
        "test_examples": None, "wall_time_s": 0.0,
    }


def settle(state: dict, pending: list) -> bool:
    """Bring the losses and correct counts of the steps since the last settle to the host in one
    transfer and fold them into `state`; True, with state's step at the first bad one, if a
    loss was not finite."""
    if not pending:
        return False
    losses = torch.stack([loss for loss, _, _ in pending]).tolist()
    corrects = torch.stack([c for _, c, _ in pending]).tolist()
    first = state["step"] - len(pending)
    window = deque(state["window"], maxlen=TRAIN_ACC_WINDOW)
    for i, (loss, correct, (_, _, predictions)) in enumerate(zip(losses, corrects, pending)):
        if not math.isfinite(loss):
            state["step"], state["status"], state["stop_reason"] = first + i, "diverged", "diverged"
            break
        state["loss_sum"] += loss
        state["loss_count"] += 1
        window.append((int(correct), predictions))
    state["window"] = list(window)
    pending.clear()
    return state["status"] == "diverged"


def record_eval(state: dict, source, cell: Cell, device, started: float) -> dict:
    sets = source.eval_sets()
    test_loss, test_acc, state["test_examples"] = evaluate(source, sets["test"], cell, device)
    # Held-out examples left out of scoring (homology_long: drop) count as wrong, as the paper's
    # x0.9739 counted them; the loss is over the scored ones.
    test_acc *= source.task.scored_fraction()
    val_loss, val_acc = math.nan, math.nan
    if "val" in sets:
        val_loss, val_acc, _ = evaluate(source, sets["val"], cell, device)
        val_acc *= source.task.scored_fraction("val")
    _, sample_acc, _ = evaluate(source, sets["train_sample"], cell, device)
    correct, predictions = (sum(part) for part in zip(*state["window"])) if state["window"] else (0, 0)
    row = {
        "step": state["step"], "train_loss": state["loss_sum"] / max(state["loss_count"], 1),
        "test_loss": test_loss, "test_acc": test_acc, "val_loss": val_loss, "val_acc": val_acc,
        # the paper's train accuracy (TRAIN_ACC_WINDOW); ours beside it: a fixed training
        # sample scored like the test split
        "train_acc": correct / max(predictions, 1), "train_sample_acc": sample_acc,
        "wall_time_s": time.perf_counter() - started,
    }
    state["loss_sum"], state["loss_count"] = 0.0, 0
    state["curve"].append(row)
    if test_acc > state["best_test_acc"]:
        state["best_test_acc"], state["best_step"] = test_acc, state["step"]
    return row


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def frozen_tensors(model) -> dict[str, torch.Tensor]:
    """The model's frozen parameters and buffers by name, the dropout key left out."""
    return {**{n: p for n, p in model.named_parameters() if not p.requires_grad},
            **{n: b for n, b in model.named_buffers() if n != KEY_BUFFER}}


class Member:
    """One cell of a training loop; `outcome` is its summary row, or the exception that ended
    it, once it has ended."""

    def __init__(self, cell: Cell, out_dir: Path, run: Run, device: torch.device,
                 log: TextIO | None = None):
        self.cell, self.out_dir, self.run, self.device = cell, out_dir, run, device
        self._log = log
        self.state = new_state(cell)
        self.pending: list = []  # (loss, correct, predictions) of the steps since the last settle
        self.params: dict[str, torch.Tensor] = {}  # trainable, stepped by the optimiser
        self.fixed: dict[str, torch.Tensor] = {}  # frozen, its own where a shared model differs
        self.optimizer = None
        self.shared = None  # the model it is stepped in, where it has companions
        self.done = False
        self.outcome = None
        self.progress = Progress(out_dir, cell)

    @property
    def log(self) -> TextIO:
        # stderr as it is when printing (pytest's capture, a pack's redirect)
        return self._log if self._log is not None else sys.stderr

    def already_finished(self) -> bool:
        done = results.finished_summary(self.out_dir, self.cell.id)
        if done is not None:
            print(f"cell {self.cell.id} already finished in {self.out_dir}", file=self.log)
            results.remove_checkpoints(self.out_dir)  # left behind if a kill came after the summary
            self.outcome = done
            return True
        self.out_dir.mkdir(parents=True, exist_ok=True)
        return False

    def start(self, task, model, shared=None) -> None:
        """Take the trainable tensors of `model`, built for this cell, and resume. Alone
        (`shared` None) the cell trains `model` itself; with companions, copies of its tensors
        in `shared`. A run that ended but lost its summary writes its results again at once."""
        self.task = task
        ended = results.load_final(self.out_dir, self.cell.id)
        if ended is not None:
            load_trainable_state(model, ended["model"])
            self.state.update(ended["state"])
            print(f"restored the ended run from {self.out_dir / results.MODEL}", file=self.log)
            self.outcome = self._write(model)
            return
        trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if shared is None:
            self.params = trainable
            self.source = batch_source(model, task, self.cell, self.run, self.device)
        else:
            self.shared = shared
            self.params = {n: p.detach().clone().requires_grad_() for n, p in trainable.items()}
            if model is not shared:
                mine, theirs = frozen_tensors(model), frozen_tensors(shared)
                self.fixed = {n: t.detach().clone() for n, t in mine.items()
                              if not torch.equal(t, theirs[n])}
            self.source = LiveBatches(shared, task, self.cell, self.device)
        if self.params:
            self.optimizer = torch.optim.Adam(list(self.params.values()), lr=self.cell.lr,
                                              weight_decay=self.cell.weight_decay)
        checkpoint = results.load_checkpoint(self.out_dir, self.cell.id)
        if checkpoint is not None:
            with torch.no_grad():
                for name, value in checkpoint.pop("model").items():
                    self.params[name].copy_(value)
            if self.optimizer is not None:
                self.optimizer.load_state_dict(checkpoint.pop("optimizer"))
            self.state.update(checkpoint)
            print(f"resumed from step {self.state['step']} ({self.out_dir / results.CHECKPOINT})",
                  file=self.log)

    def tensors(self) -> dict[str, torch.Tensor]:
        """What the shared model's forward takes from this cell in place of its own tensors."""
        return {**self.params, **self.fixed}

    def open(self, stack: ExitStack, position: int = 0) -> None:
        """Start the cell's viewers and progress bar (closed with `stack`)."""
        self.metrics = stack.enter_context(MetricsLog(self.out_dir, self.cell, self.run.metrics))
        self.interactive = self.log.isatty() if self.run.progress is None else self.run.progress
        self.bar = stack.enter_context(tqdm(
            total=self.cell.steps, initial=self.state["step"], disable=not self.interactive,
            desc=self.cell.id, mininterval=1.0, file=self.log, position=position))
        self.progress.write("running", self.state)
        self.done = self.state["step"] >= self.cell.steps or self.state["status"] != "finished"

    def after_step(self, out: tuple, seconds: float, stopping: bool) -> None:
        """Count a step that took `seconds` of this cell's time; bring the losses back, evaluate
        and checkpoint where due (or a stop signal asks), and mark the cell done at its end."""
        begun = time.perf_counter()
        self.state["wall_time_s"] += seconds
        try:
            self._after_step(out, stopping, started=begun - self.state["wall_time_s"])
        finally:
            self.state["wall_time_s"] += time.perf_counter() - begun

    def _after_step(self, out: tuple, stopping: bool, started: float) -> None:
        state, cell = self.state, self.cell
        self.pending.append(out)
        state["step"] += 1
        self.bar.update(1)
        step = state["step"]
        evaluates = step % cell.eval_every == 0 or step == cell.steps
        saves = step % self.run.checkpoint_every == 0 and step < cell.steps
        self.done = step >= cell.steps
        if not (evaluates or saves or stopping):
            return
        if settle(state, self.pending):
            print(f"diverged at step {state['step']}: a non-finite loss", file=self.log)
            self.done = True
            return
        if evaluates:
            self._load_into_shared()
            row = record_eval(state, self.source, cell, self.device, started)
            self.bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_acc']:.3f}")
            if not self.interactive:  # a log file (Snakemake, Slurm) gets a line per evaluation
                print(f"step {row['step']}/{cell.steps}  train loss {row['train_loss']:.4f}  "
                      f"test loss {row['test_loss']:.4f}  test acc {row['test_acc']:.4f}",
                      file=self.log, flush=True)
            self.metrics.log(state["curve"])
            self.progress.write("running", state)
            if cell.stop == "converged" and convergence.converged(
                    state["curve"], cell.patience, floor=convergence.task_floor(cell.task)):
                state["stop_reason"] = f"converged ({convergence.monitored(state['curve'])})"
                self.done = True
        if saves and not self.done:
            self.save()

    def save(self) -> None:
        """A checkpoint: the trainable tensors, the optimiser's state and the run's state."""
        results.save_checkpoint(
            {**self.state, "model": {n: p.detach().clone() for n, p in self.params.items()},
             "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None},
            self.out_dir)

    def finish(self) -> None:
        """Write the cell's results: weights and end state, curve, then the summary."""
        try:
            self._load_into_shared()
            self.outcome = self._write(self.shared if self.shared is not None else self.source.model)
        except Exception as e:  # noqa: BLE001 - its companions still train
            self.fail(e)

    def fail(self, error: BaseException) -> None:
        self.outcome = error
        self.progress.write("failed", error=" ".join(f"{type(error).__name__}: {error}".split()))

    def _write(self, model):
        summary = write_results(self.cell, self.state, trainable_state(model), model, self.task,
                                self.device, self.out_dir)
        self.progress.write(self.state["status"], self.state)
        return summary

    @torch.no_grad()
    def _load_into_shared(self) -> None:
        """The cell's tensors into the shared model it is stepped in (alone: nothing to do)."""
        if self.shared is None:
            return
        own = {**dict(self.shared.named_parameters()), **dict(self.shared.named_buffers())}
        for name, value in self.tensors().items():
            own[name].copy_(value)
