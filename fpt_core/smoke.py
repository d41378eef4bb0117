"""A smoke run of a whole study: every cell for a few steps, through the real code, on a CPU.

What the machine cannot have is replaced, nothing else:
- each registry backbone by a small random model of the same class and the same number of
  blocks (so every depth of the study exists), a few dozen units wide, saved as a model
  directory that the registry loads as it loads any other (`backbone=<dir>`, any init);
- each dataset by a tiny fixture in its real on-disk format (MNIST idx, CIFAR-10 pickles, LRA
  ListOps TSV, TAPE JSON), read by the real readers;
- a cell's length: two steps of two examples, evaluated once, on two (SMOKE).

    write_fixtures("smoke/data")
    registry.write_tiny_backbones("smoke/backbones", ["gpt2", "vit-base", "lstm"])
    values = smoke_cell_values(values, "smoke/backbones")   # per resolved cell

Sequence lengths, position tables, inits, trainable groups and depths stay those of the real
cell, so a cell the real run would refuse (too many tokens for a backbone's positions,
pretrained weights of a random-only backbone, a depth a backbone lacks) fails here too.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Iterable

from fpt_core.atomic import atomic_dir
from fpt_core.backbones.base import check_depth
from fpt_core.backbones.registry import (
    BACKBONES,
    check_init,
    looks_like_path,
    n_blocks_of,
)
from fpt_core.cell import FIELDS
from fpt_core.errors import ConfigError, DataError
from fpt_core.grid import PRETRAINED_DIR
from fpt_core.tasks import TASKS, Task, task_class

FIXTURE_MARKER = "fpt_smoke_fixture.json"  # in each fixture folder: never real data
# What a smoke cell changes, beside backbone and data_dir: two steps of two examples, a
# checkpoint after the first, one evaluation on two examples at the end (an evaluation costs
# as much as a step, and the LSTM's 1024-step recurrence dominates the smoke run), on the CPU.
# Each is an upper bound: a cell that asks for less keeps its own.
SMOKE = {"steps": 2, "batch_size": 2, "eval_every": 2, "eval_size": 2}
SMOKE_RUN = {"checkpoint_every": 1, "device": "cpu"}
# Cells per process in a smoke run: few enough processes to pay imports a handful of times,
# enough to keep a few cores busy.
SMOKE_PACK_CELLS = 48


# ---------------------------------------------------------------- data files in the real formats

def write_fixtures(data_dir: str | Path, tasks: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Tiny files in the real formats (each task's write_fixture) for every task of `tasks` that
    reads files (None: all registered).

    Each task's folder (its root under data_dir; cifar10-lra shares cifar10's) is written beside
    its final place and renamed into it, with a marker inside, so a reader sees a whole fixture
    or none. A folder that holds real data (no marker) is never replaced. Tasks that generate
    their data or read bundled data are skipped.
    """
    data_dir = Path(data_dir)
    writers: dict[str, type[Task]] = {}
    for name in TASKS if tasks is None else tasks:
        cls = task_class(name)
        if cls.root is not None:
            writers.setdefault(cls.root, cls)
    for root, cls in writers.items():
        target = data_dir / root
        if target.exists() and not (target / FIXTURE_MARKER).is_file():
            raise DataError(f"{target}: holds data that is not a smoke fixture; refusing to replace "
                            "it; pick another data_dir for the fixtures")
        atomic_dir(target, functools.partial(_fill_fixture, cls=cls, seed=seed))
    return data_dir


def _fill_fixture(tmp: Path, cls: type[Task], seed: int) -> None:
    cls.write_fixture(tmp, seed)
    (tmp / FIXTURE_MARKER).write_text(json.dumps({"fixture": cls.root, "seed": seed}) + "\n")


# ---------------------------------------------------------------- a smoke cell

def tiny_backbone_path(backbones_dir: str | Path, name: str) -> str:
    """Where write_tiny_backbones put `name`, spelled so it is never read as a hub id."""
    if Path(backbones_dir).parts == (PRETRAINED_DIR,):
        raise ConfigError(f"backbones_dir: {PRETRAINED_DIR}/ holds the pipeline's own pretrained "
                          "backbones; pick another directory for the tiny ones")
    path = str(Path(backbones_dir) / name)
    return path if looks_like_path(path) else f"./{path}"


def smoke_cell_values(values: dict, backbones_dir: str | Path) -> dict:
    """A resolved cell's values for a smoke run: a registry backbone becomes its tiny directory,
    steps, batch and evaluation a few (SMOKE); every other field stays. (Its run settings, the
    fixtures' data directory and the CPU, are the smoke study's: smoke_config.)

    A registry name is first checked as the real cell would be (init, depth), since its tiny
    directory would accept any init. Directories (the pipeline's own pretrained backbones) and
    hub ids stay as they are.
    """
    out = dict(values)
    name = out.get("backbone", FIELDS["backbone"].default)
    if name in BACKBONES:
        check_init(BACKBONES[name], out.get("init", FIELDS["init"].default))
        depth = out.get("depth")
        if isinstance(depth, int):
            check_depth(depth, n_blocks_of(name), name)
        out["backbone"] = tiny_backbone_path(backbones_dir, name)
    for key, most in SMOKE.items():
        own = values.get(key)
        out[key] = min(own, most) if isinstance(own, int) and not isinstance(own, bool) else most
    return out


def rewriter(tiny_dir: str | None) -> Callable[[dict], dict] | None:
    """What a smoke study does to every resolved cell (tiny backbone, two steps); None outside one."""
    if tiny_dir is None:
        return None
    return lambda values: smoke_cell_values(values, tiny_dir)


def smoke_config(config: dict) -> tuple[dict, str]:
    """A config's smoke study: the study renamed <study>-smoke, everything it writes under
    results/<study>-smoke/ (cells, pretraining, fixtures, tiny backbones), run settings those of
    SMOKE_RUN. Returns the config and the tiny backbones' directory, for grid.build."""
    study = f"{config.get('study', 'default')}-smoke"
    root = f"results/{study}"
    train = {**(config.get("train") or {}), "data_dir": f"{root}/data", **SMOKE_RUN,
             "runtime": 30, "group": None, "pack_cells": SMOKE_PACK_CELLS, "pack_minutes": None}
    return {**config, "study": study, "train": train}, f"{root}/backbones"
