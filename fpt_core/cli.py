"""The `fpt` command: train a cell, count its parameters, list tasks and backbones, prepare data,
plan a grid's compute, watch a running grid, benchmark.

argparse gives every command its --help; a cell's fields stay `key=value` arguments (or come
from a YAML/JSON cell file), as in Hydra. Bad input ends with one line that names the key and
the allowed values, and exit status 2. Listing commands import neither torch nor transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import warnings

from fpt_core import catalog
from fpt_core.errors import ConfigError, DataError, ResultError

CELL_EXAMPLE = "fpt train task=bit-xor backbone=minilm-l6 init=pretrained steps=300 seed=0 out=runs/xor"


def cell_help() -> str:
    """Every cell field and run setting with its default, allowed values and help, for --help."""
    from dataclasses import fields

    from fpt_core.cell import Cell, bounds, choices
    from fpt_core.run import Run

    lines = []
    for title, cls in (("cell fields (what is computed: the cell's id)", Cell),
                       ("run settings (where and how: not in the id)", Run)):
        lines.append(f"{title}; key=value, or a YAML or JSON cell file, later pairs win:")
        for f in fields(cls):
            default = ",".join(f.default) if isinstance(f.default, tuple) else f.default
            allowed = choices(f)
            rule = f"[{' | '.join(map(str, allowed))}]" if allowed else bounds(f)
            lines.append(f"  {f.name:<19}{f.type:<17} default {default!s:<10} {rule}")
            lines.append(f"  {'':<19}{f.metadata['help']}")
    return "\n".join(lines)


def _cell_and_run(args: list[str], extra: tuple[str, ...] = ()):
    """Split off the keys in `extra`, then build the cell and the run settings from the rest."""
    from fpt_core.cell import make_cell, parse_overrides
    from fpt_core.run import Run, split

    values = parse_overrides(args)
    rest = {k: values.pop(k) for k in extra if k in values}
    cell_values, run_values = split(values)
    return make_cell(cell_values), Run(**run_values), rest


def cmd_train(ns: argparse.Namespace) -> int:
    import pandas as pd

    from fpt_core.train import Preempted, train_cell

    cell, run, rest = _cell_and_run(ns.cell, ("out",))
    cell = _native_precision(cell, run)
    out = rest.get("out") or f"runs/{cell.id}"
    try:
        summary = train_cell(cell, out, run)
    except Preempted as e:
        print(f"stopped: {e}; run the same command again to resume", file=sys.stderr)
        return 128 + e.signum
    row = summary.iloc[0]
    reached = row["steps_to_threshold"]
    print(json.dumps({
        "cell_id": row["cell_id"], "status": row["status"], "out": str(out),
        "final_test_acc": float(row["final_test_acc"]), "best_test_acc": float(row["best_test_acc"]),
        "steps_to_threshold": None if pd.isna(reached) else int(reached),
    }))
    return 0


def _native_precision(cell, run):
    """bf16 and tf32 only where the device has them: refused before training, or with
    precision_fallback=true, the fp32 cell (another id), said in one line."""
    if cell.precision == "fp32":
        return cell
    from fpt_core.cell import make_cell
    from fpt_core.hardware import check_precision
    from fpt_core.run import resolve_device

    used = check_precision(cell.precision, resolve_device(run.device), run.precision_fallback)
    if used == cell.precision:
        return cell
    print(f"precision: {cell.precision} is not native here; training the fp32 cell "
          "(precision_fallback)", file=sys.stderr)
    return make_cell({**cell.to_dict(), "precision": used})


def cmd_params(ns: argparse.Namespace) -> int:
    from fpt_core.model import build_model, param_counts
    from fpt_core.tasks import make_spec

    cell, _, _ = _cell_and_run(ns.cell)
    model = build_model(cell, make_spec(cell), device="meta")
    print(json.dumps(param_counts(model)))
    return 0


def cmd_tasks(ns: argparse.Namespace) -> int:
    print("\n".join(catalog.task_lines()))
    return 0


def cmd_backbones(ns: argparse.Namespace) -> int:
    print("\n".join(catalog.backbone_lines()))
    print("also: a Hugging Face id (org/name), a local model directory, or backbones/<name> of "
          "a pipeline pretraining")
    return 0


def cmd_data(ns: argparse.Namespace) -> int:
    from fpt_core.cell import parse_overrides
    from fpt_core.tasks import prepare_data

    if ns.task not in catalog.TASKS:
        raise ConfigError(f"task: unknown value {ns.task!r}; allowed: {', '.join(catalog.TASKS)}")
    options = parse_overrides(ns.options)
    data_dir = options.pop("dir", "data")
    print(f"preparing {ns.task} data in {data_dir} ...", file=sys.stderr, flush=True)
    prepare_data(ns.task, data_dir, **{k: _number(v) for k, v in options.items()})
    print(f"{ns.task}: data ready in {data_dir}", file=sys.stderr)
    return 0


def _number(value):
    for kind in (int, float):
        try:
            return kind(value)
        except (TypeError, ValueError):
            pass
    return value


def run_plan(argv: list[str]) -> int:
    from fpt_core.commands import plan_main

    return plan_main(argv)


def run_status(argv: list[str]) -> int:
    from fpt_core.commands import status_main

    return status_main(argv)


def run_calibrate(argv: list[str]) -> int:
    from fpt_core.commands import calibrate_main

    return calibrate_main(argv)


def run_bench(argv: list[str]) -> int:
    from fpt_bench.bench import main as bench_main

    return bench_main(argv)


# Commands whose own argparse lives with them; `fpt NAME ...` hands them the rest.
DELEGATED = {
    "plan": (run_plan, "estimated GPU-hours of a config's grid, per ablation"),
    "status": (run_status, "what a running grid is doing: done, running, failed, pending"),
    "calibrate": (run_calibrate, "parity with the CPU, step times and memory on this device"),
    "bench": (run_bench, "the speed benchmark"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error of fpt."""

    def error(self, message: str):
        print(f"error: {message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


def parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    top = _Parser(
        prog="fpt",
        description="Frozen Pretrained Transformers: train cells, inspect them, plan and watch a grid, benchmark.",
        epilog=f"example: {CELL_EXAMPLE}\n`fpt COMMAND --help` for each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    commands = {}

    def add(name, func, help, **kwargs):
        p = sub.add_parser(name, help=help, description=help,
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
        p.set_defaults(func=func)
        commands[name] = p
        return p

    train = add("train", cmd_train, "train one cell into out=DIR (resumes from its checkpoint)",
                epilog=f"example: {CELL_EXAMPLE}\n         fpt train cell.yaml lr=3e-4 out=runs/xor-lr\n\n"
                       "Ctrl-C, SIGTERM and SIGUSR1 write a checkpoint and stop; the same command "
                       "resumes.\nWhile it runs, DIR holds metrics.csv (the curve so far) and "
                       "progress.json.")
    train.add_argument("cell", nargs="*", metavar="key=value|cell.yaml")
    params = add("params", cmd_params, "parameter count per group of a cell, as JSON",
                 epilog="example: fpt params task=cifar10 backbone=gpt2 init=random")
    params.add_argument("cell", nargs="*", metavar="key=value|cell.yaml")
    add("tasks", cmd_tasks, "list the tasks and their shapes")
    add("backbones", cmd_backbones, "list the registered backbones")
    data = add("data", cmd_data, "prepare a task's data under dir=DIR",
               epilog="examples: fpt data listops dir=data n_train=4000 max_length=64\n"
                      "          fpt data mnist dir=data   (downloads; needs internet)")
    data.add_argument("task", metavar="TASK", help="a task name (`fpt tasks` lists them)")
    data.add_argument("options", nargs="*", metavar="key=value")
    for name, (_, help) in DELEGATED.items():
        add(name, None, f"{help} (fpt {name} --help)", add_help=False)
    return top, commands


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except BrokenPipeError:  # `fpt status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    top, commands = parser()
    if not argv:
        top.print_help()
        return 0
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        print(f"error: command: unknown value {argv[0]!r}; allowed: {', '.join(commands)}",
              file=sys.stderr)
        return 2
    if argv and argv[0] in DELEGATED:
        return DELEGATED[argv[0]][0](argv[1:])
    if argv[:1] in (["train"], ["params"]) and any(a in ("-h", "--help") for a in argv[1:]):
        # the cell's fields and their allowed values come from the registries (a slower import)
        command = commands[argv[0]]
        command.epilog = command.epilog + "\n\n" + cell_help()
        command.print_help()
        return 0
    ns = top.parse_args(argv)
    warnings.simplefilter("default")
    try:
        return ns.func(ns)
    except (ConfigError, DataError, ResultError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside training (loading, preparing data)
        print("interrupted", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
