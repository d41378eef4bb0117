"""A cell's metrics as it trains, in the forms the usual viewers read.

Always metrics.csv beside the results (the learning curve so far, rewritten whole at every
evaluation, so a resumed run never repeats a row); TensorBoard event files under tensorboard/
and a Weights & Biases run where the cell's `metrics` field asks for them.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

from fpt_core.atomic import atomic_path
from fpt_core.errors import ConfigError

LOGGERS = ("csv", "tensorboard", "wandb")
CSV = "metrics.csv"
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_loggers(loggers) -> None:
    """Refuse a logger whose package is not installed, before any training."""
    for name in loggers:
        package = _PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            raise ConfigError(f"metrics: {name} is not installed (pip install {package}); "
                              f"allowed here: {', '.join(available_loggers())}")


def available_loggers() -> list[str]:
    return [n for n in LOGGERS if n not in _PACKAGES or importlib.util.find_spec(_PACKAGES[n])]


class MetricsLog:
    """log(curve) after every evaluation; a context manager that closes the viewers' writers."""

    def __init__(self, out_dir: Path, cell, loggers=("csv",)):
        self.path = Path(out_dir) / CSV
        self.cell = cell
        self.writers = []
        if "tensorboard" in loggers:
            # optional packages, imported only where a cell asks for their viewer
            from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415

            self.writers.append(_TensorBoard(SummaryWriter(str(Path(out_dir) / "tensorboard"))))
        if "wandb" in loggers:
            import wandb  # noqa: PLC0415

            run = wandb.init(project="fpt-ablations", name=cell.id, id=cell.id, resume="allow",
                             config=cell.to_dict(), dir=str(out_dir))
            self.writers.append(_WandB(run))

    def __enter__(self):
        return self

    def log(self, curve: list[dict]) -> None:
        """The curve so far into the CSV; its newest row to the viewers."""
        with atomic_path(self.path) as tmp:
            pd.DataFrame(curve).to_csv(tmp, index=False)
        for writer in self.writers:
            writer.log(curve[-1])

    def __exit__(self, *exc) -> None:
        for writer in self.writers:
            writer.close()


class _TensorBoard:
    def __init__(self, writer):
        self.writer = writer

    def log(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step":
                self.writer.add_scalar(key, value, row["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run):
        self.run = run

    def log(self, row: dict) -> None:
        self.run.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def close(self) -> None:
        self.run.finish()
