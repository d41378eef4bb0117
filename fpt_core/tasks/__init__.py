"""Tasks of the paper (and a download-free digits task), by name.

    task = make_task(cell)                  # reads task, seed, data_dir, max_len, n_train, tokenizer, eval_size, ...
    x, y = task.train_batch(step, batch_size)
    for x, y in task.eval_batches(batch_size): ...
"""
from __future__ import annotations

import inspect
from pathlib import Path

from fpt_core.errors import ConfigError, DataError
from fpt_core.tasks.base import Task, TaskSpec
from fpt_core.tasks.bits import BitMemory, BitXOR
from fpt_core.tasks.homology import RemoteHomology
from fpt_core.tasks.images import CIFAR10, CIFAR10LRA, MNIST, Digits
from fpt_core.tasks.listops import ListOps

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (BitMemory, BitXOR, ListOps, MNIST, CIFAR10, CIFAR10LRA, RemoteHomology, Digits)
}

__all__ = ["TASKS", "DataError", "Task", "TaskSpec", "make_task", "make_spec", "prepare_data", "data_files"]


def _task_class(name: str) -> type[Task]:
    if name not in TASKS:
        raise ConfigError(f"task: unknown value {name!r}; allowed: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def make_task(cell, load: bool = True) -> Task:
    """The cell's task; with load, its data is read now so missing files fail early."""
    task = _task_class(cell.task)(
        seed=cell.seed, data_dir=cell.data_dir, max_len=cell.max_len, n_train=cell.n_train,
        tokenizer=cell.tokenizer, eval_size=cell.eval_size,
        padding=cell.padding, long_sequences=cell.homology_long,
    )
    return task.load() if load else task


def make_spec(cell) -> TaskSpec:
    """The cell's task spec, without reading any data."""
    return make_task(cell, load=False).spec


def prepare_data(task: str, data_dir: str | Path, **options) -> None:
    """Generate (listops) or download (mnist, cifar10, cifar10-lra, remote-homology) a task's files."""
    cls = _task_class(task)
    params = inspect.signature(cls.prepare).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        allowed = [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY]
        for key in options:
            if key not in allowed:
                raise ConfigError(f"{key}: unknown option for {task} data; allowed: {', '.join(allowed)}")
    cls.prepare(data_dir, **options)


def data_files(task: str, data_dir: str | Path) -> list[Path]:
    """The files `task` reads under data_dir, for a workflow's inputs; empty if it needs none."""
    return _task_class(task).data_files(data_dir)
