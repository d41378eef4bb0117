"""How and where cells run, never what they compute: none of it enters a cell's id.

Run: the settings of one training run (device, data directory, checkpoints, viewers), set once
for every cell of a study by the config's `train:` block, or as key=value to `fpt train`.
Resources: what each training job of the pipeline asks for (threads, memory, time, GPUs, cells
per job). Each field is declared once, with its default and help; the schema's `train:` block
is made from both (schema.py).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from fpt_core.cell import check_fields, declare
from fpt_core.errors import ConfigError
from fpt_core.metrics import LOGGERS, check_loggers

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class Run:
    data_dir: str = declare("data", "where the tasks' data files are")
    checkpoint_every: int = declare(200, "steps between checkpoints (a killed run resumes there)", low=1)
    device: str = declare("auto", "auto (a GPU where there is one), cpu, cuda or cuda:N",
                          schema={"type": "string", "pattern": "^(auto|cpu|cuda(:[0-9]+)?)$"})
    progress: bool | None = declare(None, "a progress bar; null: where stderr is a terminal "
                                    "(elsewhere a line per evaluation)")
    feature_cache: bool = declare(True, "output-only cells without dropout train on frozen "
                                  "features computed once")
    metrics: tuple[str, ...] = declare(("csv",), "where metrics go as the cell trains", choices=LOGGERS)
    precision_fallback: bool = declare(False, "bf16 where the hardware lacks it becomes the fp32 "
                                       "cell (another id) instead of being refused")

    def __post_init__(self) -> None:
        check_fields(self)
        kind, _, index = self.device.partition(":")
        if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
            raise ConfigError(f"device: unknown value {self.device!r}; allowed: {', '.join(DEVICES)}, cuda:N")
        check_loggers(self.metrics)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["metrics"] = list(self.metrics)
        return d


def resolve_device(name: str) -> torch.device:
    """The device a run trains on: auto is a GPU where there is one; a GPU asked for where none
    is visible is refused in one line, before anything is loaded."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = name.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name} asked for, but torch sees no CUDA GPU here "
                          f"(torch {torch.__version__}); allowed here: auto, cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(f"device: {name} asked for, but this machine has "
                          f"{torch.cuda.device_count()} GPU(s); allowed: cuda:0..cuda:"
                          f"{torch.cuda.device_count() - 1}")
    return torch.device(name)


RUN_FIELDS = tuple(f.name for f in dataclasses.fields(Run))


def split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """key=value pairs as (cell fields, run settings)."""
    run = {k: v for k, v in values.items() if k in RUN_FIELDS}
    return {k: v for k, v in values.items() if k not in RUN_FIELDS}, run


@dataclass(frozen=True)
class Resources:
    """What each training job of the study asks for (config `train:`)."""

    threads: int = declare(1, "CPU threads per job (and torch's threads)", low=1)
    mem_mb: int = declare(4000, "memory per job, MB", low=1)
    runtime: int | str = declare(60, "minutes per cell a job may run (Slurm --time), or auto: "
                                 "from the plan's estimate for `gpu`",
                                 schema={"anyOf": [{"type": "integer", "minimum": 1}, {"const": "auto"}]})
    gpu: str = declare("a100-80gb", "the GPU whose stated rate sizes runtime: auto and "
                       "pack_minutes (fpt plan --help lists them)")
    gpus: int | None = declare(None, "GPUs each job holds; null: one where device is cuda", low=0)
    pack_cells: int = declare(1, "at most this many cells per job, trained one after another "
                              "in one process", low=1)
    pack_minutes: int | None = declare(None, "at most this much estimated work per job "
                                       "(minutes on `gpu`)", low=1)
    together: int = declare(1, "at most this many cells that share their frozen weights step "
                            "together in one batched computation (1: each alone)", low=1)
    group: str | None = declare(None, "a Snakemake group for the train jobs")

    @classmethod
    def of(cls, train: dict) -> "Resources":
        return cls(**{f.name: train[f.name] for f in dataclasses.fields(cls) if f.name in train})
