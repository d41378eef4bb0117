"""Malformed configs are refused before any job starts, each with one line naming the key."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fpt_core.errors import ConfigError
from fpt_core.study import Study

ROOT = Path(__file__).resolve().parents[1]

GOOD = {
    "defaults": {"backbone": "gpt2-tiny", "init": "random", "steps": 10, "batch_size": 4},
    "axes": {"task": ["bit-xor"], "seed": [0]},
    "ablations": {"headline": {"rows": {"fpt": {}, "full-transformer": {"trainable": "all"}}}},
}


def with_(path: str, value):
    """GOOD with the dotted `path` set to `value` (or deleted when value is DELETE)."""
    config = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node.setdefault(key, {})
    if value is DELETE:
        del node[last]
    else:
        node[last] = value
    return config


DELETE = object()

CASES = [
    # unknown keys, at every level
    (with_("defaults.lrr", 1), "lrr"),
    (with_("ablations.headline.rows.fpt", {"lerning_rate": 1}), "lerning_rate"),
    (with_("ablations.headline.colour", "red"), "colour"),
    (with_("axes.sed", [0]), "sed"),
    (with_("trian", {"threads": 1}), "trian"),
    (with_("train.gpu_count", 1), "gpu_count"),
    (with_("train.gpus", -1), "gpus"),
    (with_("train.device", "cuda:x"), "device"),
    (with_("defaults.val_size", 0), "val_size"),
    (with_("defaults.stop", "early"), "stop"),
    (with_("defaults.padding", "middle"), "padding"),
    (with_("ablations.headline.select", {"over": "lr", "by": "test"}), "select.by"),
    (with_("attention", {"ablation": "headline", "label": "fpt", "tasks": ["no-such-task"]}),
     "attention.tasks[0]"),
    (with_("cka", {"tasks": ["no-such-task"], "backbones": {"a": {}}}), "cka.tasks[0]"),
    # unknown names
    (with_("axes.task", ["imagenet"]), "task"),
    (with_("axes.task", ["bit-xor", "mnits"]), "task"),
    (with_("defaults.backbone", "gpt5"), "backbone"),
    (with_("defaults.init", "xavier"), "init"),
    (with_("defaults.init", "Pretrained"), "init"),
    (with_("defaults.trainable", ["input", "bias"]), "trainable"),
    (with_("defaults.trainable", "fpt,output"), "trainable"),
    (with_("defaults.trainable", []), "trainable"),
    (with_("defaults.trainable", ["input", "input"]), "trainable"),
    (with_("defaults.precision", "fp16"), "precision"),
    (with_("defaults.tokenizer", "brackets"), "tokenizer"),
    (with_("train.device", "tpu"), "device"),
    (with_("ablations.headline.figure", "pie"), "figure"),
    # wrong types
    (with_("defaults.lr", "fast"), "lr"),
    (with_("defaults.lr", [1e-3]), "lr"),
    (with_("defaults.steps", 1.5), "steps"),
    (with_("defaults.steps", "ten"), "steps"),
    (with_("defaults.batch_size", True), "batch_size"),
    (with_("defaults.seed", "zero"), "seed"),
    (with_("defaults.depth", "all"), "depth"),
    (with_("defaults.dropout", "none"), "dropout"),
    (with_("axes.seed", 0), "seed"),
    (with_("axes.task", "bit-xor"), "task"),
    (with_("ablations.headline.rows", ["fpt"]), "rows"),
    (with_("train.threads", "two"), "threads"),
    (with_("train.mem_mb", 1.5), "mem_mb"),
    # out of range
    (with_("defaults.lr", 0), "lr"),
    (with_("defaults.lr", -1e-3), "lr"),
    (with_("defaults.steps", 0), "steps"),
    (with_("defaults.steps", -5), "steps"),
    (with_("defaults.batch_size", 0), "batch_size"),
    (with_("defaults.eval_every", 0), "eval_every"),
    (with_("defaults.eval_size", 0), "eval_size"),
    (with_("defaults.dropout", 1.0), "dropout"),
    (with_("defaults.dropout", -0.1), "dropout"),
    (with_("defaults.grad_clip", -1), "grad_clip"),
    (with_("defaults.weight_decay", -0.01), "weight_decay"),
    (with_("defaults.threshold", 1.5), "threshold"),
    (with_("defaults.max_len", 0), "max_len"),
    (with_("defaults.n_train", -1), "n_train"),
    (with_("train.runtime", 0), "runtime"),
    # empty grids
    (with_("ablations", {}), "ablations"),
    (with_("ablations", DELETE), "ablations"),
    (with_("ablations.headline.rows", {}), "rows"),
    (with_("axes.task", []), "task"),
    (with_("axes.seed", []), "seed"),
    # names the pipeline cannot use
    (with_("ablations.Head Line", {"rows": {"fpt": {}}}), "Head Line"),
    # what only the backbone or the task knows
    (with_("defaults.depth", 3), "depth"),  # gpt2-tiny has 2 blocks
    (with_("defaults.n_train", 2), "batch_size"),  # a batch of 4 from 2 examples
    (with_("defaults.init", "pretrained"), "init"),  # gpt2-tiny has no pretrained weights
    # a negative seed, wherever it is set
    (with_("axes.seed", [-1]), "seed"),
    (with_("defaults.seed", -1), "seed"),
    (with_("pretrain", {"p": {"task": "bit-xor", "seed": -1}}), "seed"),
    # a row that would average cells differing in more than the seed
    (with_("ablations.headline", {"rows": {"fpt": {}}, "axes": {"lr": [1e-3, 1e-2]}, "label": "{row}"}),
     "lr"),
]


def refuse(config) -> str:
    with pytest.raises(ConfigError) as error:
        Study.from_config(config)
    return str(error.value)


def test_the_good_config_is_accepted():
    assert len(Study.from_config(GOOD).grid.cells) == 2


def test_at_least_fifty_malformed_configs():
    assert len(CASES) >= 50


@pytest.mark.parametrize("config, key", CASES, ids=[f"{i}-{k}" for i, (_, k) in enumerate(CASES)])
def test_malformed_config_is_one_line_naming_the_key(config, key):
    message = refuse(config)
    assert "\n" not in message and key in message, message


@pytest.mark.parametrize("viewer", ["tensorboard", "wandb"])
def test_a_metrics_viewer_that_is_not_installed_is_refused(monkeypatch, viewer):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == viewer else find_spec(name, *a))
    message = refuse(with_("train.metrics", ["csv", viewer]))
    assert message.endswith(f"metrics: {viewer} is not installed (pip install {viewer}); allowed here: "
                       + ", ".join(v for v in ("csv", "tensorboard", "wandb") if v != viewer))


def test_duplicate_ablation_names_are_refused(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(GOOD) + "ablations:\n  other: {rows: {fpt: {}}}\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--configfile", str(path)],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "ablations" in result.stderr + result.stdout and "Traceback" not in result.stderr


def case(key: str, value) -> tuple[dict, str]:
    return next((config, k) for config, k in CASES if k == key and value(config))


@pytest.mark.parametrize("config, key", [
    case("lrr", lambda c: True),
    case("task", lambda c: c["axes"]["task"] == ["imagenet"]),
    case("lr", lambda c: c["defaults"].get("lr") == 0),
    case("seed", lambda c: "pretrain" in c),
    case("select.by", lambda c: True),
], ids=["unknown-key", "unknown-task", "zero-lr", "pretrain-seed", "select-on-test"])
def test_snakemake_refuses_before_any_job_without_a_traceback(tmp_path, config, key):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile", str(path),
         "--directory", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True)
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert any(key in line for line in out.splitlines())
    assert not (tmp_path / "results").exists()
