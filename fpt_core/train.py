"""Train one cell: Adam on the trainable groups, evaluation on the held-out split, exact resume.

One loop serves every cell. What differs is where a step's batch comes from: LiveBatches draws
it from the task and runs the whole model; features.CachedFeatures (output-only cells) steps
the output layer on frozen features computed once.

Every source of randomness in a step is a function of (seed, step): the batch comes from
task.train_batch(step) and dropout from the global generator reseeded at each step. A
checkpoint therefore needs only the trainable weights, the optimiser state and the curve so
far, and a run killed and resumed ends with the same numbers as one never killed.

While it runs, a cell's directory holds progress.json (state, step, last loss and accuracy,
rewritten at every evaluation, read by `fpt status`) and metrics.csv (the curve so far).
"""
from __future__ import annotations

import math
import os
import platform
import signal
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

import fpt_core
from fpt_core import results
from fpt_core.backbones.base import GROUPS
from fpt_core.cell import PROTOCOL, Cell, make_cell
from fpt_core.features import CachedFeatures, can_cache
from fpt_core.metrics import MetricsLog
from fpt_core.model import autocast, build_model, param_counts
from fpt_core.tasks import make_task

# Slurm's preemption and time-limit warnings, and Ctrl-C: each writes a checkpoint, then stops.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class Preempted(Exception):
    """Raised after a checkpoint is written in answer to a stop signal; .signum says which."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def eval_batch(cell: Cell) -> int:
    """Evaluation needs no activations for backward, so it can take larger batches."""
    return max(cell.batch_size, 64)


class LiveBatches:
    """The trainer's batch source for most cells: each step's batch from the task, through the
    whole model. Same interface as features.CachedFeatures."""

    def __init__(self, model, task, cell: Cell, device: torch.device):
        self.model, self.task, self.cell, self.device = model, task, cell, device

    def train_batch(self, step: int):
        x, y = self.task.train_batch(step, self.cell.batch_size)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def logits(self, x):
        return self.model(x)

    def eval_sets(self) -> dict:
        size = eval_batch(self.cell)
        return {"test": self.task.eval_batches(size), "train_sample": self.task.train_eval_batches(size)}


def batch_source(model, task, cell: Cell, device: torch.device):
    if can_cache(cell, task):
        return CachedFeatures(model, task, cell, device, eval_batch(cell))
    return LiveBatches(model, task, cell, device)


def loss_and_correct(source, x, y, cell: Cell, device: torch.device):
    with autocast(cell.precision, device):
        logits = source.logits(x)
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    correct = (logits.argmax(-1) == y).sum()
    return loss, correct


@torch.no_grad()
def evaluate(source, batches, cell: Cell, device: torch.device) -> tuple[float, float]:
    """Mean loss per prediction and accuracy over one full pass of `batches`."""
    model = source.model
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss, c = loss_and_correct(source, x, y, cell, device)
        loss_sum += loss * y.numel()
        correct += c
        count += y.numel()
    model.train(was_training)
    return (loss_sum / count).item(), correct.item() / count


def train_step(source, optimizer, params, cell: Cell, device, step: int):
    """One optimiser step on the batch of `step`; returns the loss, and the number of correct
    predictions and of predictions on that batch (train mode, as trained: the paper's train
    accuracy)."""
    torch.manual_seed(step_seed(cell.seed, step))  # dropout masks: a function of the step
    x, y = source.train_batch(step)
    loss, correct = loss_and_correct(source, x, y, cell, device)
    if optimizer is not None:
        loss.backward()
        if cell.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cell.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), correct, y.numel()


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


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


def new_state(cell: Cell) -> dict:
    return {
        "cell_id": cell.id, "step": 0, "curve": [], "loss_sum": 0.0, "loss_count": 0,
        "correct_sum": 0, "predictions": 0,
        "best_test_acc": -1.0, "best_step": None, "status": "finished", "wall_time_s": 0.0,
    }


def train_cell(cell: Cell, out_dir: str | Path) -> pd.DataFrame:
    """Train `cell` into `out_dir`, resuming from its checkpoint; return the summary row."""
    out_dir = Path(out_dir)
    done = results.finished_summary(out_dir, cell.id)
    if done is not None:
        print(f"cell {cell.id} already finished in {out_dir}", file=sys.stderr)
        results.remove_checkpoints(out_dir)  # left behind if a kill came right after the summary
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(out_dir, cell)
    try:
        return _train(cell, out_dir, progress)
    except Preempted:
        progress.write("interrupted")
        raise
    except BaseException as e:
        progress.write("failed", error=" ".join(f"{type(e).__name__}: {e}".split()))
        raise


def _train(cell: Cell, out_dir: Path, progress: "Progress") -> pd.DataFrame:
    device = resolve_device(cell.device)
    task = make_task(cell)
    model = build_model(cell, task.spec).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay) if params else None
    state = new_state(cell)

    ended = results.load_final(out_dir, cell.id)
    if ended is not None:
        # The run ended but its summary is gone (Snakemake deletes the outputs of a job it saw
        # as incomplete): write the results again from the saved end state, train nothing.
        load_trainable_state(model, ended["model"])
        state.update(ended["state"])
        print(f"restored the ended run from {out_dir / results.MODEL}", file=sys.stderr)
        return finish(cell, state, model, task, device, out_dir, progress)
    checkpoint = results.load_checkpoint(out_dir, cell.id)
    if checkpoint is not None:
        load_trainable_state(model, checkpoint.pop("model"))
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.pop("optimizer"))
        state.update(checkpoint)
        print(f"resumed from step {state['step']} ({out_dir / results.CHECKPOINT})", file=sys.stderr)

    source = batch_source(model, task, cell, device)
    metrics = MetricsLog(out_dir, cell)
    started = time.perf_counter() - state["wall_time_s"]
    progress.write("running", state)

    def save() -> None:
        state["wall_time_s"] = time.perf_counter() - started
        results.save_checkpoint(
            {**state, "model": trainable_state(model),
             "optimizer": optimizer.state_dict() if optimizer is not None else None},
            out_dir,
        )

    bar = tqdm(total=cell.steps, initial=state["step"], disable=not cell.progress,
               desc=cell.id, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    with _StopFlag() as stop, bar, metrics:
        while state["step"] < cell.steps and state["status"] == "finished":
            step = state["step"]
            loss, correct, predictions = train_step(source, optimizer, params, cell, device, step)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                state["status"] = "diverged"
                print(f"diverged at step {step}: loss {loss_value}", file=sys.stderr)
                break
            state["loss_sum"] += loss_value
            state["loss_count"] += 1
            state["correct_sum"] += int(correct)
            state["predictions"] += predictions
            state["step"] = step + 1
            bar.update(1)
            if state["step"] % cell.eval_every == 0 or state["step"] == cell.steps:
                row = record_eval(state, source, cell, device, started)
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", test_acc=f"{row['test_acc']:.3f}")
                if not cell.progress:  # a log file (Snakemake, Slurm) gets a line per evaluation
                    print(f"step {row['step']}/{cell.steps}  train loss {row['train_loss']:.4f}  "
                          f"test loss {row['test_loss']:.4f}  test acc {row['test_acc']:.4f}",
                          file=sys.stderr, flush=True)
                metrics.log(state["curve"])
                progress.write("running", state)
            if state["step"] % cell.checkpoint_every == 0 and state["step"] < cell.steps:
                save()
            if stop.signum is not None:
                save()
                raise Preempted(f"{signal.Signals(stop.signum).name}: checkpoint written at step "
                                f"{state['step']} of {cell.steps}", stop.signum)
    state["wall_time_s"] = time.perf_counter() - started
    return finish(cell, state, model, task, device, out_dir, progress)


def record_eval(state: dict, source, cell: Cell, device, started: float) -> dict:
    sets = source.eval_sets()
    test_loss, test_acc = evaluate(source, sets["test"], cell, device)
    # Held-out examples left out of scoring (homology_long: drop) count as wrong, as the paper's
    # x0.9739 counted them; the loss is over the scored ones.
    test_acc *= source.task.scored_fraction()
    _, sample_acc = evaluate(source, sets["train_sample"], cell, device)
    train_loss = state["loss_sum"] / max(state["loss_count"], 1)
    # The paper's train accuracy: over the batches trained on since the last evaluation, in
    # train mode (dropout, augmentation), as its code logs it. Ours beside it: a fixed training
    # sample scored like the test split.
    train_acc = state["correct_sum"] / max(state["predictions"], 1)
    state["loss_sum"], state["loss_count"] = 0.0, 0
    state["correct_sum"], state["predictions"] = 0, 0
    row = {
        "step": state["step"], "train_loss": train_loss, "test_loss": test_loss,
        "test_acc": test_acc, "train_acc": train_acc, "train_sample_acc": sample_acc,
        "wall_time_s": time.perf_counter() - started,
    }
    state["curve"].append(row)
    if test_acc > state["best_test_acc"]:
        state["best_test_acc"], state["best_step"] = test_acc, state["step"]
    return row


class Progress:
    """progress.json in the cell's directory: what `fpt status` shows while the cell runs."""

    def __init__(self, out_dir: Path, cell: Cell):
        self.path = out_dir / results.PROGRESS
        self.cell = cell
        self.started_at = _now()

    def write(self, state_name: str, state: dict | None = None, error: str | None = None) -> None:
        state = state or {}
        last = state["curve"][-1] if state.get("curve") else {}
        results.write_json({
            "cell_id": self.cell.id, "state": state_name, "step": state.get("step"),
            "steps": self.cell.steps, "train_loss": last.get("train_loss"),
            "test_acc": last.get("test_acc"), "started_at": self.started_at, "updated_at": _now(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "error": error,
        }, self.path)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    import transformers

    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "fpt_version": fpt_core.__version__,
    }


def finish(cell: Cell, state: dict, model, task, device, out_dir: Path, progress: Progress):
    """Write the cell's results (weights and end state, curve, then the summary) atomically."""
    threshold = cell.threshold if cell.threshold is not None else task.spec.threshold
    curve = pd.DataFrame(state["curve"], columns=results.CURVE_COLUMNS[1:])
    curve.insert(0, "cell_id", cell.id)
    reached = curve.loc[curve["test_acc"] >= threshold, "step"]
    last = curve.iloc[-1] if len(curve) else None
    counts = param_counts(model)
    row = {
        **{k: (",".join(v) if k == "trainable" else v) for k, v in cell.to_dict().items()},
        "cell_id": cell.id,
        "status": state["status"],
        "final_test_acc": float(last["test_acc"]) if last is not None else float("nan"),
        "best_test_acc": state["best_test_acc"] if state["best_step"] is not None else float("nan"),
        "best_step": state["best_step"],
        "train_acc": float(last["train_acc"]) if last is not None else float("nan"),
        "train_sample_acc": float(last["train_sample_acc"]) if last is not None else float("nan"),
        "final_test_loss": float(last["test_loss"]) if last is not None else float("nan"),
        "steps_done": state["step"],
        "steps_to_threshold": int(reached.iloc[0]) if len(reached) else None,
        "threshold_used": threshold,
        "data_source": task.load().source,
        "scored_fraction": task.scored_fraction(),
        "protocol": PROTOCOL,
        **{f"params_{g}": counts.get(g, 0) for g in GROUPS},
        "params_trainable": counts["trainable"],
        "params_total": counts["total"],
        "wall_time_s": state["wall_time_s"],
        "device": device_name(device),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **versions(),
        "finished_at": _now(),
    }
    summary = pd.DataFrame([row])
    for col in ("best_step", "steps_to_threshold", "depth", "eval_size", "max_len", "n_train"):
        summary[col] = summary[col].astype("Int64")
    summary["threshold"] = summary["threshold"].astype("float64")
    results.save_checksummed(
        {"cell": cell.to_dict(), "cell_id": cell.id, "model": trainable_state(model), "state": state},
        out_dir / results.MODEL,
    )
    results.write_parquet(curve, out_dir / results.CURVE)
    results.write_parquet(summary, out_dir / results.SUMMARY)  # last: its presence means done
    results.remove_checkpoints(out_dir)
    progress.write(state["status"], state)
    return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_trained(model_path: str | Path):
    """Rebuild a finished cell's model from its model.pt: (cell, model, task)."""
    saved = results.load_checksummed(Path(model_path))
    cell = make_cell({**saved["cell"], "progress": False})
    task = make_task(cell)
    model = build_model(cell, task.spec)
    load_trainable_state(model, saved["model"])
    model.eval()
    return cell, model, task
