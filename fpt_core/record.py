"""What a cell writes as it runs and when it ends: progress.json while it trains (read by `fpt
status`), then its weights and end state (model.pt), its curve and, last, its summary row.

Every file goes through results' atomic writes, the summary last, so its presence means the
cell is done.
"""
from __future__ import annotations

import math
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch
import transformers

import fpt_core
from fpt_core import devices, results
from fpt_core.backbones.base import GROUPS
from fpt_core.cell import PROTOCOL, Cell
from fpt_core.model import param_counts


class Progress:
    """progress.json in the cell's directory: what `fpt status` shows while the cell runs."""

    def __init__(self, out_dir: Path, cell: Cell):
        self.path = out_dir / results.PROGRESS
        self.cell = cell
        self.started_at = now()
        self.state: dict = {}  # the last state written: a stopped run still says where it was

    def write(self, state_name: str, state: dict | None = None, error: str | None = None) -> None:
        state = self.state = state if state is not None else self.state
        last = state["curve"][-1] if state.get("curve") else {}
        results.write_json({
            "cell_id": self.cell.id, "state": state_name, "step": state.get("step"),
            "steps": self.cell.steps, "train_loss": last.get("train_loss"),
            "test_acc": last.get("test_acc"), "started_at": self.started_at, "updated_at": now(),
            "host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "error": error,
        }, self.path)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    return {"torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "fpt_version": fpt_core.__version__}


def device_name(device: torch.device) -> str:
    """The device's name, and where a process was handed one GPU of several, which one."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"cuda:{index}" + (f", CUDA_VISIBLE_DEVICES={visible}" if visible else "")
        return f"{torch.cuda.get_device_name(index)} ({where})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _last(curve: pd.DataFrame, column: str) -> float:
    return float(curve[column].iloc[-1]) if len(curve) else math.nan


def at_best_validation(curve: pd.DataFrame) -> tuple[float, float]:
    """(best validation accuracy, the test accuracy at that evaluation): the run early-stopped
    on its validation split, as Rothermel et al. 2021 select; NaN without validation."""
    scored = curve.dropna(subset=["val_acc"])
    if scored.empty:
        return math.nan, math.nan
    best = scored.loc[scored["val_acc"].idxmax()]
    return float(best["val_acc"]), float(best["test_acc"])


def summary_row(cell: Cell, state: dict, curve: pd.DataFrame, model, task, device) -> pd.DataFrame:
    """The cell's summary: every field, how it ended, its accuracies, sizes and where it ran."""
    threshold = cell.threshold if cell.threshold is not None else task.spec.threshold
    reached = curve.loc[curve["test_acc"] >= threshold, "step"]
    best_val, test_at_best_val = at_best_validation(curve)
    counts = param_counts(model)
    row = {
        **{k: (",".join(v) if k == "trainable" else v) for k, v in cell.to_dict().items()},
        "cell_id": cell.id,
        "status": state["status"],
        "stop_reason": state["stop_reason"],
        "final_test_acc": _last(curve, "test_acc"),
        "best_test_acc": state["best_test_acc"] if state["best_step"] is not None else math.nan,
        "best_step": state["best_step"],
        "final_val_acc": _last(curve, "val_acc"),
        "best_val_acc": best_val,
        "test_acc_at_best_val": test_at_best_val,
        "train_acc": _last(curve, "train_acc"),
        "train_sample_acc": _last(curve, "train_sample_acc"),
        "final_test_loss": _last(curve, "test_loss"),
        "test_examples": state["test_examples"],
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
        # the GPU(s) the job claimed of its machine's (fpt_core/devices.py); also when faked
        "gpu_slot": os.environ.get(devices.SLOT),
        "hostname": socket.gethostname(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        **versions(),
        "finished_at": now(),
    }
    summary = pd.DataFrame([row])
    for col in ("best_step", "steps_to_threshold", "depth", "eval_size", "val_size", "max_len",
                "n_train", "test_examples"):
        summary[col] = summary[col].astype("Int64")
    summary["threshold"] = summary["threshold"].astype("float64")
    return summary


def write_results(cell: Cell, state: dict, model_state: dict, model, task, device,
                  out_dir: Path) -> pd.DataFrame:
    """The cell's weights and end state, its curve, then its summary, each written atomically."""
    curve = pd.DataFrame(state["curve"], columns=results.CURVE_COLUMNS[1:])
    curve.insert(0, "cell_id", cell.id)
    summary = summary_row(cell, state, curve, model, task, device)
    results.save_checksummed({"cell": cell.to_dict(), "cell_id": cell.id, "model": model_state,
                              "state": state}, out_dir / results.MODEL)
    results.write_parquet(curve, out_dir / results.CURVE)
    results.write_parquet(summary, out_dir / results.SUMMARY)  # last: its presence means done
    results.remove_checkpoints(out_dir)
    return summary
