"""The cell: one training run, described by a flat resolved config.

A cell's identity is a short hash of the fields that change its numbers, so two ablations that
ask for the same run share one job and one result.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from fpt_core.backbones import BACKBONES, backbone_names, is_known_backbone, n_blocks_of
from fpt_core.backbones.base import FPT_GROUPS, GROUPS, check_depth
from fpt_core.backbones.registry import INITS, RANDOM_INITS, check_init, random_init_matters
from fpt_core.configfile import load_strict
from fpt_core.errors import ConfigError
from fpt_core.metrics import LOGGERS, check_loggers
from fpt_core.tasks import TASKS
from fpt_core.tasks.base import LONG_SEQUENCES, PADDINGS
from fpt_core.tasks.listops import TOKENIZERS

PRECISIONS = ("fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")

# Fields that say where, how often or how it is watched, not what is computed: they do not
# enter the cell's identity, and the pipeline sets them once for every cell (config `train:`).
NON_IDENTITY = ("data_dir", "checkpoint_every", "device", "progress", "feature_cache", "metrics",
                "precision_fallback")
# Choices, field by field: the one place the allowed values live (the schema is tested against it).
CHOICES = {"task": tuple(TASKS), "init": INITS, "precision": PRECISIONS, "device": DEVICES,
           "tokenizer": TOKENIZERS, "padding": PADDINGS, "homology_long": LONG_SEQUENCES,
           "random_init": RANDOM_INITS}
# Switches added after protocol 2, whose defaults are what the code computed before them, and
# the cells each one applies to. Elsewhere validate sets the default, and the id leaves a switch
# out while it has its default: every earlier id names the same run, and a switch that changes
# nothing for a cell cannot split it in two.
SWITCHES = {
    "padding": lambda cell: cell.task in ("listops", "remote-homology"),
    "homology_long": lambda cell: cell.task == "remote-homology",
    "random_init": lambda cell: cell.init == "random" and random_init_matters(cell.backbone),
}


@dataclass
class Cell:
    task: str = "bit-xor"
    backbone: str = "gpt2"
    init: str = "pretrained"
    trainable: tuple[str, ...] = FPT_GROUPS
    depth: int | None = None  # keep the first `depth` blocks; None keeps all
    lr: float = 1e-3
    batch_size: int = 16
    steps: int = 1000
    eval_every: int = 100
    eval_size: int | None = None  # held-out examples per evaluation; None is the whole split
    grad_clip: float = 1.0
    dropout: float = 0.1
    weight_decay: float = 0.0
    seed: int = 0
    precision: str = "fp32"
    threshold: float | None = None  # accuracy for steps-to-threshold; None takes the task's
    max_len: int | None = None  # truncate token sequences (listops, homology)
    n_train: int | None = None  # cap the training split (scaled-down runs)
    tokenizer: str = "paper"  # listops: the paper's bracket-dropping one, or fixed
    # listops, remote-homology: pad on the left (the last token read is real) or on the right,
    # reading the last position, a pad for short sequences (the paper's code)
    padding: str = "left"
    # remote-homology sequences over max_len: keep their start, or drop them and count them as
    # wrong in the held-out accuracy (the paper's code and its x0.9739)
    homology_long: str = "truncate"
    # init random, GPT-2: c_proj at 0.02/sqrt(2 x blocks) as current transformers, or 0.02 as
    # the paper's transformers 4.1.1
    random_init: str = "scaled"
    data_dir: str = "data"
    checkpoint_every: int = 200
    device: str = "auto"
    progress: bool = True
    feature_cache: bool = True  # output-only cells train on frozen features computed once
    metrics: tuple[str, ...] = ("csv",)  # csv, tensorboard, wandb
    # bf16 asked for on hardware without native bf16: refused, or with this, the fp32 cell
    precision_fallback: bool = False

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["trainable"] = list(self.trainable)
        d["metrics"] = list(self.metrics)
        return d

    def identity(self) -> dict[str, Any]:
        return {k: v for k, v in self.to_dict().items() if k not in NON_IDENTITY}

    @property
    def id(self) -> str:
        return cell_id(self)


# What the code computes for a given cell. Bumped whenever a change to the code changes a cell's
# numbers; part of every cell id, so results of an older protocol are never taken for new ones.
# 2: output-only cells use cached features only without dropout; train accuracy as the paper's
#    code measures it; random init at depth k keeps the first k blocks of the full model.
PROTOCOL = 2


def cell_id(cell: Cell) -> str:
    identity = {k: v for k, v in cell.identity().items()
                if k not in SWITCHES or v != FIELDS[k].default}
    blob = json.dumps({**identity, "protocol": PROTOCOL}, sort_keys=True,
                      separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


FIELDS = {f.name: f for f in fields(Cell)}


def _allowed(name: str) -> str:
    return ", ".join(name for name in FIELDS)


def _coerce(key: str, value: Any) -> Any:
    """Turn a command-line string or a YAML value into the field's type, or raise ConfigError."""
    kind = FIELDS[key].type
    optional = "None" in kind
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        if optional:
            return None
        raise ConfigError(f"{key}: may not be empty (type {kind})")
    try:
        if key in ("trainable", "metrics"):
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
        if kind == "bool":
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


def _choice(key: str, value: str, allowed: tuple[str, ...] | list[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(allowed)}")


def validate(cell: Cell) -> None:
    """Check every field of a cell, the registries' rules (task and backbone names, the depth a
    backbone has, whether it has pretrained weights) included."""
    for f in fields(Cell):
        setattr(cell, f.name, _coerce(f.name, getattr(cell, f.name)))
    for key, allowed in CHOICES.items():
        _choice(key, getattr(cell, key), allowed)
    for key, applies in SWITCHES.items():
        if not applies(cell):
            setattr(cell, key, FIELDS[key].default)
    if not is_known_backbone(cell.backbone):
        raise ConfigError(
            f"backbone: unknown value {cell.backbone!r}; allowed: {', '.join(backbone_names())}, "
            "a Hugging Face model id (org/name) or a local directory"
        )
    for group in cell.trainable:
        _choice("trainable", group, GROUPS)
    if len(set(cell.trainable)) != len(cell.trainable):
        raise ConfigError(f"trainable: groups repeated in {','.join(cell.trainable)}")
    cell.trainable = tuple(g for g in GROUPS if g in cell.trainable)  # canonical order
    for name in cell.metrics:
        _choice("metrics", name, LOGGERS)
    check_loggers(cell.metrics)
    for key in ("batch_size", "steps", "eval_every", "checkpoint_every"):
        if getattr(cell, key) <= 0:
            raise ConfigError(f"{key}: must be a positive integer, got {getattr(cell, key)}")
    for key in ("depth", "eval_size", "max_len", "n_train"):
        value = getattr(cell, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}: must be a positive integer or null, got {value}")
    if cell.seed < 0:
        raise ConfigError(f"seed: must be an integer >= 0, got {cell.seed}")
    if not cell.lr > 0:
        raise ConfigError(f"lr: must be a positive number, got {cell.lr}")
    for key in ("grad_clip", "weight_decay"):
        if getattr(cell, key) < 0:
            raise ConfigError(f"{key}: must be >= 0, got {getattr(cell, key)}")
    if not 0 <= cell.dropout < 1:
        raise ConfigError(f"dropout: must be in [0, 1), got {cell.dropout}")
    if cell.threshold is not None and not 0 < cell.threshold <= 1:
        raise ConfigError(f"threshold: must be in (0, 1], got {cell.threshold}")
    if cell.n_train is not None and cell.batch_size > cell.n_train:
        raise ConfigError(
            f"batch_size: {cell.batch_size} does not fit a training split of n_train={cell.n_train}; "
            f"allowed: 1..{cell.n_train}"
        )
    spec = BACKBONES.get(cell.backbone)
    if spec is not None:  # hub ids and directories a later job writes are checked when built
        check_init(spec, cell.init)
        check_depth(cell.depth, n_blocks_of(cell.backbone), cell.backbone)


def make_cell(values: dict[str, Any]) -> Cell:
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed keys: {_allowed(unknown[0])}")
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
