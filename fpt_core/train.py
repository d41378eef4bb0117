"""Train one cell: Adam on the trainable groups, evaluation on the held-out split, exact resume.

Every source of randomness in a step is a function of (seed, step): the batch comes from
task.train_batch(step) and dropout from the global generator reseeded at each step. A checkpoint therefore
needs only the trainable weights, the optimiser state and the curve so far, and a run killed and
resumed ends with the same numbers as one never killed.
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
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

import fpt_core
from fpt_core import features, results
from fpt_core.cell import GROUPS, Cell, make_cell
from fpt_core.model import build_model, param_counts
from fpt_core.tasks import make_task

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Raised after a checkpoint is written in answer to SIGTERM or SIGUSR1."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


def autocast(cell: Cell, device: torch.device):
    if cell.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def loss_and_correct(model, x, y, cell: Cell, device: torch.device):
    with autocast(cell, device):
        logits = model(x)
    logits = logits.float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    correct = (logits.argmax(-1) == y).sum()
    return loss, correct


@torch.no_grad()
def evaluate(model, batches, cell: Cell, device: torch.device) -> tuple[float, float]:
    """Mean loss per prediction and accuracy over one full pass of `batches`."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        loss, c = loss_and_correct(model, x, y, cell, device)
        loss_sum += loss * y.numel()
        correct += c
        count += y.numel()
    model.train(was_training)
    return (loss_sum / count).item(), correct.item() / count


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def versions() -> dict[str, str]:
    import transformers

    return {
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "fpt_version": fpt_core.__version__,
    }


class _StopFlag:
    """Turns SIGTERM/SIGUSR1 (Slurm preemption or time limit) into a flag the loop checks."""

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


def train_step(model, optimizer, params, task, cell: Cell, device, step: int) -> torch.Tensor:
    """One optimiser step on the batch of `step`; returns the loss (not synchronised)."""
    torch.manual_seed(step_seed(cell.seed, step))  # dropout masks: a function of the step
    x, y = task.train_batch(step, cell.batch_size)
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    loss, _ = loss_and_correct(model, x, y, cell, device)
    if optimizer is not None:
        loss.backward()
        if cell.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, cell.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def train_cell(cell: Cell, out_dir: str | Path) -> pd.DataFrame:
    """Train `cell` into `out_dir`, resuming from its checkpoint; return the summary row."""
    out_dir = Path(out_dir)
    done = results.finished_summary(out_dir, cell.id)
    if done is not None:
        print(f"cell {cell.id} already finished in {out_dir}", file=sys.stderr)
        results.remove_checkpoints(out_dir)  # left behind if a kill came right after the summary
        return done
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cell.device)
    task = make_task(cell)
    model = build_model(cell, task.spec).to(device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cell.lr, weight_decay=cell.weight_decay) if params else None
    threshold = cell.threshold if cell.threshold is not None else task.spec.threshold

    state = {
        "cell_id": cell.id, "step": 0, "curve": [], "loss_sum": 0.0, "loss_count": 0,
        "best_test_acc": -1.0, "best_step": None, "status": "finished", "wall_time_s": 0.0,
    }
    ended = results.load_final(out_dir, cell.id)
    if ended is not None:
        # The run ended but its summary is gone (Snakemake deletes the outputs of a job it saw
        # as incomplete): write the results again from the saved end state, train nothing.
        load_trainable_state(model, ended["model"])
        state.update(ended["state"])
        print(f"restored the ended run from {out_dir / results.MODEL}", file=sys.stderr)
        return finish(cell, state, model, task, device, threshold, out_dir)
    checkpoint = results.load_checkpoint(out_dir, cell.id)
    if checkpoint is not None:
        load_trainable_state(model, checkpoint.pop("model"))
        if optimizer is not None:
            optimizer.load_state_dict(checkpoint.pop("optimizer"))
        state.update(checkpoint)
        print(f"resumed from step {state['step']} ({out_dir / results.CHECKPOINT})", file=sys.stderr)
    elif features.can_cache(cell, task):
        # Nothing below the output layer trains: its inputs are computed once, not every step.
        state.update(features.train_output_only(cell, task, model, device))
        return finish(cell, state, model, task, device, threshold, out_dir)

    def save() -> None:
        results.save_checkpoint(
            {**state, "model": trainable_state(model),
             "optimizer": optimizer.state_dict() if optimizer is not None else None},
            out_dir,
        )

    started = time.perf_counter() - state["wall_time_s"]
    bar = tqdm(total=cell.steps, initial=state["step"], disable=not cell.progress,
               desc=cell.id, mininterval=1.0 if sys.stderr.isatty() else 30.0)
    with _StopFlag() as stop:
        while state["step"] < cell.steps and state["status"] == "finished":
            step = state["step"]
            loss_value = train_step(model, optimizer, params, task, cell, device, step).item()
            if not math.isfinite(loss_value):
                state["status"] = "diverged"
                print(f"diverged at step {step}: loss {loss_value}", file=sys.stderr)
                break
            state["loss_sum"] += loss_value
            state["loss_count"] += 1
            state["step"] = step + 1
            bar.update(1)
            if state["step"] % cell.eval_every == 0 or state["step"] == cell.steps:
                record_eval(state, model, task, cell, device, started)
                bar.set_postfix(test_acc=f"{state['curve'][-1]['test_acc']:.3f}")
            if state["step"] % cell.checkpoint_every == 0 and state["step"] < cell.steps:
                state["wall_time_s"] = time.perf_counter() - started
                save()
            if stop.signum is not None:
                state["wall_time_s"] = time.perf_counter() - started
                save()
                bar.close()
                raise Preempted(f"signal {stop.signum}: checkpoint written at step {state['step']}")
    bar.close()
    state["wall_time_s"] = time.perf_counter() - started
    return finish(cell, state, model, task, device, threshold, out_dir)


def record_eval(state: dict, model, task, cell: Cell, device, started: float) -> None:
    test_loss, test_acc = evaluate(model, task.eval_batches(eval_batch(cell)), cell, device)
    _, train_acc = evaluate(model, task.train_eval_batches(eval_batch(cell)), cell, device)
    train_loss = state["loss_sum"] / max(state["loss_count"], 1)
    state["loss_sum"], state["loss_count"] = 0.0, 0
    state["curve"].append({
        "step": state["step"], "train_loss": train_loss, "test_loss": test_loss,
        "test_acc": test_acc, "train_acc": train_acc,
        "wall_time_s": time.perf_counter() - started,
    })
    if test_acc > state["best_test_acc"]:
        state["best_test_acc"], state["best_step"] = test_acc, state["step"]


def eval_batch(cell: Cell) -> int:
    """Evaluation needs no activations for backward, so it can take larger batches."""
    return max(cell.batch_size, 64)


def finish(cell: Cell, state: dict, model, task, device, threshold: float, out_dir: Path):
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
        "final_test_loss": float(last["test_loss"]) if last is not None else float("nan"),
        "steps_done": state["step"],
        "steps_to_threshold": int(reached.iloc[0]) if len(reached) else None,
        "threshold_used": threshold,
        **{f"params_{g}": counts.get(g, 0) for g in GROUPS},
        "params_trainable": counts["trainable"],
        "params_total": counts["total"],
        "wall_time_s": state["wall_time_s"],
        "device": device_name(device),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **versions(),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
    return summary


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def load_trained(out_dir: str | Path):
    """Rebuild a finished cell's model with its trained weights: (cell, model, task)."""
    saved = results.load_checksummed(Path(out_dir) / results.MODEL)
    values = {**saved["cell"], "progress": False}
    cell = make_cell(values)
    task = make_task(cell)
    model = build_model(cell, task.spec)
    load_trainable_state(model, saved["model"])
    model.eval()
    return cell, model, task
