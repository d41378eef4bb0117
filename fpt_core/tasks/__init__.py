"""Tasks of the paper (and a download-free digits task), by name.

    task = make_task(cell, data_dir=run.data_dir)   # reads task, seed, max_len, n_train,
                                  # eval_size, val_size and the options the task declares
    x, y = task.train_batch(step, batch_size)
    for x, y in task.eval_batches(task.eval_batch_size(batch_size)): ...

Importing this package registers the built-in tasks, in the order `fpt tasks` lists them.
"""
from __future__ import annotations

import inspect
from pathlib import Path

from fpt_core.errors import ConfigError, DataError

# Each module registers its tasks on import; this order is the listing's.
from fpt_core.tasks import (
    bits,  # noqa: F401, I001
    homology,  # noqa: F401
    images,  # noqa: F401
    listops,  # noqa: F401
)
from fpt_core.tasks.base import Sizes, Task, TaskSpec
from fpt_core.tasks.registry import TASKS, Option, all_options, register, task_class, task_options

__all__ = ["TASKS", "DataError", "Option", "Sizes", "Task", "TaskSpec", "all_options", "data_files",
           "data_options", "make_spec", "make_task", "prepare_data", "register", "task_class", "task_options"]


def make_task(cell, load: bool = True, data_dir: str | Path | None = None) -> Task:
    """The cell's task, reading its files under data_dir (the tasks' default where None); with
    load, its data is read now so missing files fail early.

    The task gets only the options it declares, each the cell's field of that name (the
    option's default where the cell has None or lacks the field).
    """
    cls = task_class(cell.task)
    # an option that no cell field names (a task's own, not yet a Cell field) runs at its default
    options = {name: getattr(cell, name, None) for name in cls.options}
    where = {} if data_dir is None else {"data_dir": data_dir}
    task = cls(seed=cell.seed, max_len=cell.max_len, n_train=cell.n_train, eval_size=cell.eval_size,
               val_size=cell.val_size, **where, **options)
    return task.load() if load else task


def make_spec(cell) -> TaskSpec:
    """The cell's task spec, without reading any data."""
    return make_task(cell, load=False).spec


def data_options(task: str) -> list[str] | None:
    """The options a config's `data:` block may give `task`'s preparation (None: any)."""
    params = inspect.signature(task_class(task).prepare).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [name for name, p in params.items() if p.kind is p.KEYWORD_ONLY]


def prepare_data(task: str, data_dir: str | Path, **options) -> None:
    """Generate (listops) or download (mnist, cifar10, cifar10-lra, remote-homology) a task's files."""
    allowed = data_options(task)
    for key in options:
        if allowed is not None and key not in allowed:
            raise ConfigError(f"{key}: unknown option for {task} data; allowed: {', '.join(allowed)}")
    task_class(task).prepare(data_dir, **options)


def data_files(task: str, data_dir: str | Path) -> list[Path]:
    """The files `task` reads under data_dir with its default options; empty if it needs none."""
    return task_class(task)(data_dir=data_dir).data_files()
