"""Per-cell results on disk: atomic writes, schema checks, checksummed checkpoints.

Every file a cell writes goes through a temp file in the same directory, fsync, and rename, so a
reader sees either the old file or the whole new one. Checkpoints carry a SHA-256 of their payload
so that a truncated or corrupted one is detected rather than half-loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from fpt_core.atomic import atomic_path
from fpt_core.backbones.base import GROUPS
from fpt_core.errors import ResultError

SUMMARY = "summary.parquet"
CURVE = "curve.parquet"
MODEL = "model.pt"
CHECKPOINT = "checkpoint.pt"
PROGRESS = "progress.json"  # state of a running cell, for `fpt status`
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
STATUSES = ("finished", "diverged")

SUMMARY_COLUMNS = (
    "cell_id", "status", "stop_reason", "final_test_acc", "best_test_acc", "best_step",
    "final_val_acc", "best_val_acc", "test_acc_at_best_val", "train_acc", "train_sample_acc",
    "test_examples", "protocol",
    "final_test_loss", "steps_done", "steps_to_threshold", "threshold_used",
    *(f"params_{g}" for g in GROUPS), "params_trainable", "params_total",
    "wall_time_s", "device", "torch_version", "transformers_version", "fpt_version",
    "finished_at",
)
CURVE_COLUMNS = ("cell_id", "step", "train_loss", "test_loss", "test_acc", "val_loss", "val_acc",
                 "train_acc", "train_sample_acc", "wall_time_s")
_MAGIC = b"FPTCKPT1"


def write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)


def write_json(obj: dict, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def read_parquet(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a results file and check it has every expected column, or raise ResultError."""
    try:
        df = pq.read_table(path).to_pandas()
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        raise ResultError(f"{path}: unreadable Parquet ({type(e).__name__}: {e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ResultError(f"{path}: missing columns {', '.join(missing)}")
    return df


def read_summary(out_dir: Path) -> pd.DataFrame:
    df = read_parquet(Path(out_dir) / SUMMARY, SUMMARY_COLUMNS)
    if len(df) != 1 or df["status"].iloc[0] not in STATUSES:
        raise ResultError(f"{Path(out_dir) / SUMMARY}: expected one row with status in {STATUSES}")
    return df


def read_curve(out_dir: Path) -> pd.DataFrame:
    return read_parquet(Path(out_dir) / CURVE, CURVE_COLUMNS)


def finished_summary(out_dir: Path, cell_id: str) -> pd.DataFrame | None:
    """The cell's summary if both result files are whole and belong to this cell, else None."""
    out_dir = Path(out_dir)
    if not (out_dir / SUMMARY).exists():
        return None
    try:
        summary = read_summary(out_dir)
        read_curve(out_dir)
    except ResultError as e:
        warnings.warn(f"ignoring results that are not whole: {e}", stacklevel=2)
        return None
    if summary["cell_id"].iloc[0] != cell_id:
        raise ResultError(
            f"{out_dir}: holds cell {summary['cell_id'].iloc[0]}, not {cell_id}; "
            "use another out directory"
        )
    return summary


def save_checksummed(obj: Any, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    with atomic_path(path) as tmp:
        tmp.write_bytes(_MAGIC + hashlib.sha256(payload).digest() + payload)


def load_checksummed(path: Path) -> Any:
    """Load a file written by save_checksummed, or raise ResultError if it is not whole."""
    data = Path(path).read_bytes()
    head = len(_MAGIC) + 32
    if len(data) < head or data[: len(_MAGIC)] != _MAGIC:
        raise ResultError(f"{path}: not an fpt checkpoint (bad header)")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(_MAGIC) : head]:
        raise ResultError(f"{path}: checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=False)


def save_checkpoint(state: dict, out_dir: Path) -> None:
    """Keep the previous checkpoint until the new one is whole, so one good copy always exists."""
    out_dir = Path(out_dir)
    current = out_dir / CHECKPOINT
    if current.exists():
        os.replace(current, out_dir / PREVIOUS_CHECKPOINT)
    save_checksummed(state, current)


def load_checkpoint(out_dir: Path, cell_id: str) -> dict | None:
    """The newest whole checkpoint of this cell, warning about any file that is not whole."""
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = Path(out_dir) / name
        if not path.exists():
            continue
        try:
            state = load_checksummed(path)
        except ResultError as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
            continue
        if state.get("cell_id") != cell_id:
            warnings.warn(f"skipping checkpoint {path}: it belongs to cell {state.get('cell_id')}")
            continue
        return state
    return None


def load_final(out_dir: Path, cell_id: str) -> dict | None:
    """The end state saved beside the trained weights, if whole and of this cell, else None."""
    path = Path(out_dir) / MODEL
    if not path.exists():
        return None
    try:
        saved = load_checksummed(path)
    except ResultError as e:
        warnings.warn(f"ignoring trained weights that are not whole: {e}", stacklevel=2)
        return None
    return saved if saved.get("cell_id") == cell_id and "state" in saved else None


def remove_checkpoints(out_dir: Path) -> None:
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (Path(out_dir) / name).unlink(missing_ok=True)
