"""`fpt bench`'s output: one JSON object per measure, a ratio of ours over a baseline against a
target, or an information line (the levers, a skip, an error) with the same keys."""
from __future__ import annotations

import torch

from fpt_core import hardware

# What each ratio (ours / baseline) should reach.
TARGETS = {"step_throughput": 3.0, "mfu": 0.35, "output_only_epoch": 100.0,
           "shared_backbone": 2.0, "counter_dropout": 0.9, "dry_run": 10.0}


def device_label(device: torch.device) -> str:
    name = hardware.machine_name(device)
    if device.type == "cuda":
        return name
    bf16 = "native bf16" if hardware.native_bf16(device) else "no native bf16"
    return f"cpu ({name}, {bf16}, {torch.get_num_threads()} threads)"


def line(measure: str, *, dtype, ours: float, baseline: float, unit: str, peak: float, **extra) -> dict:
    ratio = ours / baseline if baseline else None
    target = TARGETS[measure]
    return {"measure": measure, "device": extra.pop("device"), "dtype": dtype,
            "ours": significant(ours), "baseline": significant(baseline),
            "ratio": None if ratio is None else significant(ratio, 4), "unit": unit, "target": target,
            "met": ratio is not None and ratio >= target, "peak_mem_mb": round(peak, 1), **extra}


def significant(x: float, digits: int = 6) -> float:
    return float(f"{x:.{digits}g}")


def info_line(measure: str, device: torch.device, **extra) -> dict:
    """A line with every key of a measure's line but no ratio: a report, a skip or an error."""
    return {"measure": measure, "device": device_label(device), "dtype": None, "ours": None,
            "baseline": None, "ratio": None, "unit": None, "target": TARGETS.get(measure),
            "met": False, "peak_mem_mb": None, **extra}


def error_line(measure: str, device: torch.device, err: Exception) -> dict:
    return info_line(measure, device, error=f"{type(err).__name__}: {err}"[:500])
