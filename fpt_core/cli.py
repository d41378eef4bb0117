"""The `fpt` command: train a cell, count its parameters, list tasks and backbones, prepare data.

Every cell field is a `key=value` argument (or comes from a YAML/JSON cell file). Bad input ends
with one line that names the key and the allowed values, and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings

from fpt_core.cell import ConfigError, make_cell, parse_overrides

USAGE = """fpt COMMAND [key=value ...] [cell.yaml]

commands:
  train    train one cell: fpt train task=bit-xor backbone=minilm-l6 steps=300 out=DIR
  params   parameter count per group as JSON: fpt params task=cifar10 backbone=gpt2 init=random
  tasks    list the tasks and their shapes
  backbones  list the registered backbones
  data     prepare a task's data under dir: fpt data listops dir=data n_train=2000 ...
  bench    speed benchmark (fpt bench --help)
"""


def _cell(args: list[str], extra: tuple[str, ...] = ()):
    """Split off the non-cell keys in `extra`, build and validate the cell from the rest."""
    values = parse_overrides(args)
    rest = {k: values.pop(k) for k in extra if k in values}
    return make_cell(values), rest


def cmd_train(args: list[str]) -> int:
    import pandas as pd

    from fpt_core.train import Preempted, train_cell

    cell, rest = _cell(args, ("out",))
    out = rest.get("out") or f"runs/{cell.id}"
    try:
        summary = train_cell(cell, out)
    except Preempted as e:
        print(f"preempted: {e}; run the same command again to resume", file=sys.stderr)
        return 143
    row = summary.iloc[0]
    reached = row["steps_to_threshold"]
    print(json.dumps({
        "cell_id": row["cell_id"], "status": row["status"], "out": str(out),
        "final_test_acc": float(row["final_test_acc"]), "best_test_acc": float(row["best_test_acc"]),
        "steps_to_threshold": None if pd.isna(reached) else int(reached),
    }))
    return 0


def cmd_params(args: list[str]) -> int:
    from fpt_core.model import build_model, param_counts
    from fpt_core.tasks import make_spec

    cell, _ = _cell(args)
    model = build_model(cell, make_spec(cell), device="meta")
    print(json.dumps(param_counts(model)))
    return 0


def cmd_tasks(args: list[str]) -> int:
    from fpt_core.tasks import TASKS

    for name in sorted(TASKS):
        print(name)
    return 0


def cmd_backbones(args: list[str]) -> int:
    from fpt_core.backbones import backbone_names

    for name in backbone_names():
        print(name)
    return 0


def cmd_data(args: list[str]) -> int:
    from fpt_core.tasks import TASKS, prepare_data

    if not args or "=" in args[0]:
        raise ConfigError(f"task: name the task to prepare; allowed: {', '.join(sorted(TASKS))}")
    task, options = args[0], parse_overrides(args[1:])
    data_dir = options.pop("dir", "data")
    if task not in TASKS:
        raise ConfigError(f"task: unknown value {task!r}; allowed: {', '.join(sorted(TASKS))}")
    prepare_data(task, data_dir, **{k: _number(v) for k, v in options.items()})
    return 0


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


def cmd_bench(args: list[str]) -> int:
    from fpt_bench.bench import main as bench_main

    return bench_main(args)


COMMANDS = {
    "train": cmd_train, "params": cmd_params, "tasks": cmd_tasks,
    "backbones": cmd_backbones, "data": cmd_data, "bench": cmd_bench,
}


def main(argv: list[str] | None = None) -> int:
    from fpt_core.results import ResultError
    from fpt_core.tasks import DataError

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, args = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: command: unknown value {command!r}; allowed: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    warnings.simplefilter("default")
    try:
        return COMMANDS[command](args)
    except (ConfigError, DataError, ResultError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
