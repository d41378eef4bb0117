"""A smoke run of a whole study: every cell for a few steps, through the real code, on a CPU.

What the machine cannot have is replaced, nothing else:
- each registry backbone by a small random model of the same class and the same number of
  blocks (so every depth of the study exists), a few dozen units wide, saved as a model
  directory that the registry loads as it loads any other (`backbone=<dir>`, any init);
- each dataset by a tiny fixture in its real on-disk format (MNIST idx, CIFAR-10 pickles, LRA
  ListOps TSV, TAPE JSON), read by the real readers;
- a cell's length: two steps of two examples, evaluated once, on two (SMOKE).

    write_fixtures("smoke/data")
    write_tiny_backbones("smoke/backbones", ["gpt2", "vit-base", "lstm"])
    values = smoke_cell_values(values, "smoke/backbones", "smoke/data")   # per resolved cell

Sequence lengths, position tables, inits, trainable groups and depths stay those of the real
cell, so a cell the real run would refuse (too many tokens for a backbone's positions,
pretrained weights of a random-only backbone, a depth a backbone lacks) fails here too.
"""
from __future__ import annotations

import copy
import gzip
import json
import pickle
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from fpt_core.atomic import atomic_dir
from fpt_core.errors import ConfigError, DataError

AMINO = "ACDEFGHIKLMNPQRSTVWY"
FIXTURE_MARKER = "fpt_smoke_fixture.json"  # in each fixture folder: never real data
TINY = {"hidden": 32, "heads": 2, "intermediate": 64, "vocab": 64}
# Attention dropout makes torch's CPU attention take its unfused path, 5 to 10 times slower at
# 1024 tokens; the stand-ins drop it (ViT still gets the cell's dropout there, as the paper did).
ATTENTION_DROPOUT_KEYS = ("attn_pdrop", "attention_probs_dropout_prob", "attention_dropout")
# ViT's patch embedding is bypassed by the FPT, so its image only has to be valid and small.
TINY_VIT = {"image_size": 16, "patch_size": 4, "encoder_stride": 4}
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

def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def _labels(rng: np.random.Generator, n: int, n_classes: int = 10, start: int = 0) -> np.ndarray:
    """n labels that cycle through every class (from `start`), in a random order."""
    return rng.permutation((np.arange(n) + start) % n_classes)


def write_mnist(data_dir: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0) -> dict:
    """torchvision's MNIST layout: data_dir/mnist/MNIST/raw/{train,t10k}-{images,labels}-idx*-ubyte."""
    return _mnist_raw(Path(data_dir) / "mnist" / "MNIST" / "raw", n_train, n_test, gz, seed)


def _mnist_raw(raw: Path, n_train: int, n_test: int, gz: bool, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = _labels(rng, n).astype(np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, gz)
        out[split] = (images, labels)
    return out


def write_cifar(data_dir: Path, per_batch: int = 8, n_test: int = 10, seed: int = 0) -> dict:
    """The CIFAR-10 python release: data_dir/cifar10/cifar-10-batches-py/{data_batch_1..5,test_batch}."""
    return _cifar_batches(Path(data_dir) / "cifar10" / "cifar-10-batches-py", per_batch, n_test, seed)


def _cifar_batches(folder: Path, per_batch: int, n_test: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for i, name in enumerate(names):
        n = n_test if name == "test_batch" else per_batch
        # the training batches continue one another's label cycle, so together they hold every class
        start = 0 if name == "test_batch" else i * per_batch
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": _labels(rng, n, start=start).tolist(),
                 "filenames": [f"{name}_{j}.png" for j in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)  # the release's pickles are protocol 2
        out[name] = batch
    return out


def write_listops_tsv(path: Path, rows: list[tuple[str, object]]) -> None:
    """LRA's TSV: a Source/Target header, one expression and its value per line, CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Source\tTarget"] + [f"{s}\t{t}" for s, t in rows]
    path.write_text("\r\n".join(lines) + "\r\n")


def write_listops(data_dir: Path, n_train: int = 32, n_val: int = 16, n_test: int = 16,
                  seed: int = 0) -> dict:
    """basic_{train,val,test}.tsv from LRA's generator, short expressions, every value 0..9 present."""
    return _listops_files(Path(data_dir) / "listops", n_train, n_val, n_test, seed)


def _listops_files(folder: Path, n_train: int, n_val: int, n_test: int, seed: int) -> dict:
    from fpt_core.tasks.listops import generate

    pool = generate(20 * (n_train + n_val + n_test), max_depth=4, max_args=4, min_length=5,
                    max_length=60, seed=seed)
    by_value: dict[int, list[tuple[str, int]]] = {v: [] for v in range(10)}
    for text, value in pool:
        by_value[value].append((text, value))
    # deal the values round-robin so each split cycles through every value the pool holds
    dealt = [rows[i] for i in range(len(pool)) for rows in by_value.values() if i < len(rows)]
    out, start = {}, 0
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        out[split] = dealt[start:start + n]
        write_listops_tsv(folder / f"basic_{split}.tsv", out[split])
        start += n
    return out


def write_tape_json(data_dir: Path, n_train: int = 30, n_valid: int = 9, seed: int = 0,
                    splits=("train", "valid", "test_fold_holdout")) -> dict:
    """TAPE's raw JSON release: data_dir/remote-homology/remote_homology_<split>.json."""
    return _tape_files(Path(data_dir) / "remote-homology", n_train, n_valid, seed, splits)


def _tape_files(folder: Path, n_train: int, n_valid: int, seed: int, splits) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in splits:
        n = n_train if split == "train" else n_valid
        records = []
        for i in range(n):
            primary = "".join(rng.choice(list(AMINO), rng.integers(5, 60)))
            records.append({"id": f"d{split}{i}", "primary": primary, "protein_length": len(primary),
                            "fold_label": int(rng.integers(0, 1195)), "superfamily_label": 0,
                            "family_label": 0, "class_label": 0})
        (folder / f"remote_homology_{split}.json").write_text(json.dumps(records))
        out[split] = records
    return out


def _mnist_fixture(folder: Path, seed: int) -> None:
    _mnist_raw(folder / "MNIST" / "raw", 32, 16, True, seed)


def _cifar_fixture(folder: Path, seed: int) -> None:
    _cifar_batches(folder / "cifar-10-batches-py", 8, 16, seed)


def _listops_fixture(folder: Path, seed: int) -> None:
    _listops_files(folder, 32, 16, 16, seed)


def _tape_fixture(folder: Path, seed: int) -> None:
    _tape_files(folder, 32, 16, seed, ("train", "valid", "test_fold_holdout"))


# Each fixture: (folder under data_dir, writer of that folder). cifar10-lra reads cifar10's files.
# Sizes: more training examples than the largest batch (16), a few held-out ones.
FIXTURES: dict[str, tuple[str, Callable[[Path, int], None]]] = {
    "mnist": ("mnist", _mnist_fixture),
    "cifar10": ("cifar10", _cifar_fixture),
    "cifar10-lra": ("cifar10", _cifar_fixture),
    "listops": ("listops", _listops_fixture),
    "remote-homology": ("remote-homology", _tape_fixture),
}


def write_fixtures(data_dir: str | Path, tasks: Iterable[str] | None = None, seed: int = 0) -> Path:
    """Tiny files in the real formats for every task of `tasks` that reads files (None: all).

    Each task's folder is written beside its final place and renamed into it, with a marker
    inside, so a reader sees a whole fixture or none. A folder that holds real data (no marker)
    is never replaced. Tasks that generate their data are skipped.
    """
    from fpt_core.tasks import TASKS, data_files

    data_dir = Path(data_dir)
    names = list(FIXTURES) if tasks is None else list(tasks)
    folders: dict[str, Callable[[Path, int], None]] = {}
    for task in names:
        if task not in TASKS:
            raise ConfigError(f"task: unknown value {task!r}; allowed: {', '.join(sorted(TASKS))}")
        if task in FIXTURES:
            folder, write = FIXTURES[task]
            folders[folder] = write
        elif data_files(task, data_dir):
            raise ConfigError(f"task: {task} reads files but has no smoke fixture; "
                              f"allowed: {', '.join(FIXTURES)} or a task that generates its data")
    for folder, write in folders.items():
        target = data_dir / folder
        if target.exists() and not (target / FIXTURE_MARKER).is_file():
            raise DataError(f"{target}: holds data that is not a smoke fixture; refusing to replace "
                            "it; pick another data_dir for the fixtures")
        atomic_dir(target, lambda tmp: _fill_fixture(tmp, write, folder, seed))
    return data_dir


def _fill_fixture(tmp: Path, write: Callable[[Path, int], None], folder: str, seed: int) -> None:
    write(tmp, seed)
    (tmp / FIXTURE_MARKER).write_text(json.dumps({"fixture": folder, "seed": seed}) + "\n")


# ---------------------------------------------------------------- tiny backbones of the same class

def tiny_config(config: Any, *, n_layer: int | None = None, hidden: int = TINY["hidden"],
                heads: int = TINY["heads"], intermediate: int = TINY["intermediate"],
                vocab: int = TINY["vocab"]) -> Any:
    """A copy of a backbone config, narrow: the same class, hidden width, heads and feed-forward
    width shrunk, attention dropout off, the block count (or n_layer) and position tables kept.

    Takes a Hugging Face config or the LSTM's {"hidden", "n_layer"}. The vocabulary shrinks too:
    the FPT never uses a backbone's token embedding, and GPT-2's alone is 50257 rows.
    """
    if isinstance(config, dict):  # the LSTM
        return {**config, "hidden": hidden, "n_layer": n_layer or config["n_layer"]}
    config = copy.deepcopy(config)
    if n_layer is not None:
        config.num_hidden_layers = n_layer
        if isinstance(getattr(config, "layer_types", None), list):
            config.layer_types = (config.layer_types * n_layer)[:n_layer]
    grouped = (getattr(config, "num_key_value_heads", None) or config.num_attention_heads) \
        < config.num_attention_heads
    config.hidden_size = hidden
    config.num_attention_heads = heads
    if getattr(config, "num_key_value_heads", None) is not None:
        config.num_key_value_heads = 1 if grouped else heads  # grouped-query attention stays grouped
    if getattr(config, "head_dim", None) is not None:
        config.head_dim = hidden // heads
    for key in ("intermediate_size", "n_inner"):
        if hasattr(config, key):
            setattr(config, key, intermediate)
    for key in ATTENTION_DROPOUT_KEYS:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    config.vocab_size = vocab
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value >= vocab:
            setattr(config, key, vocab - 1)
    if config.model_type == "vit":
        for key, value in TINY_VIT.items():
            setattr(config, key, value)
    return config


def write_tiny_backbones(out_dir: str | Path, names: Iterable[str], seed: int = 0,
                         **shape) -> dict[str, Path]:
    """For each registry name, a random tiny model of its class in out_dir/<name>/.

    Written as export_backbone writes a backbone (weights, config, marker), so `backbone=<dir>`
    loads it with any init through the registry's directory path. Each is drawn from `seed`
    alone, so the set of names asked does not change any one of them. `shape` goes to
    tiny_config (hidden=16 for fewer parameters, say).
    """
    from fpt_core.backbones.registry import BACKBONES

    out = {}
    for name in names:
        if name not in BACKBONES:
            raise ConfigError(f"backbone: no tiny stand-in for {name!r}; allowed: {', '.join(BACKBONES)}")
        spec = BACKBONES[name]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            backbone = _tiny_backbone(spec, shape)
        out[name] = atomic_dir(Path(out_dir) / name, backbone.save)
    return out


def _tiny_backbone(spec, shape: dict):
    from fpt_core.backbones.hf import HFBackbone, ViTBackbone, hf_from_config
    from fpt_core.backbones.lstm import LSTMBackbone

    config = tiny_config(spec.config(), **shape)
    if spec.kind == "lstm":
        return LSTMBackbone(config["hidden"], config["n_layer"], source=spec.name)
    wrap = ViTBackbone if spec.kind == "vit" else HFBackbone
    return wrap(hf_from_config(config), spec.name)


def used_backbones(cells: Iterable[Any]) -> list[str]:
    """The registry names among the backbones of resolved cells (dicts or Cells), sorted."""
    from fpt_core.backbones.registry import BACKBONES

    names = {(c.get("backbone", "gpt2") if isinstance(c, dict) else c.backbone) for c in cells}
    return sorted(n for n in names if n in BACKBONES)


# ---------------------------------------------------------------- a smoke cell

def tiny_backbone_path(backbones_dir: str | Path, name: str) -> str:
    """Where write_tiny_backbones put `name`, spelled so it is never read as a hub id."""
    from fpt_core.backbones.registry import looks_like_path
    from fpt_core.grid import PRETRAINED_DIR

    if Path(backbones_dir).parts == (PRETRAINED_DIR,):
        raise ConfigError(f"backbones_dir: {PRETRAINED_DIR}/ holds the pipeline's own pretrained "
                          "backbones; pick another directory for the tiny ones")
    path = str(Path(backbones_dir) / name)
    return path if looks_like_path(path) else f"./{path}"


def smoke_cell_values(values: dict, backbones_dir: str | Path, data_dir: str | Path) -> dict:
    """A resolved cell's values for a smoke run: a registry backbone becomes its tiny directory,
    the data the fixtures, steps, batch and evaluation a few (SMOKE), the device the CPU, with a
    checkpoint after the first step; every other field stays.

    A registry name is first checked as the real cell would be (init, depth), since its tiny
    directory would accept any init. Directories (the pipeline's own pretrained backbones) and
    hub ids stay as they are.
    """
    from fpt_core.backbones.base import check_depth
    from fpt_core.backbones.registry import BACKBONES, check_init, n_blocks_of
    from fpt_core.cell import FIELDS

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
    out.update(SMOKE_RUN, data_dir=str(data_dir))
    return out


def smoke_config(config: dict) -> tuple[dict, str]:
    """A config's smoke study: the study renamed <study>-smoke, everything it writes under
    results/<study>-smoke/ (cells, pretraining, fixtures, tiny backbones), run settings those of
    SMOKE_RUN. Returns the config and the tiny backbones' directory, for grid.build."""
    study = f"{config.get('study', 'default')}-smoke"
    root = f"results/{study}"
    train = {**(config.get("train") or {}), "data_dir": f"{root}/data", **SMOKE_RUN,
             "runtime": 30, "group": None, "pack_cells": SMOKE_PACK_CELLS, "pack_minutes": None}
    return {**config, "study": study, "train": train}, f"{root}/backbones"


def fixture_tasks(grid) -> dict[str, dict]:
    """The grid's tasks that read files, each to get its fixture (options: none)."""
    used = {c.task for c in [*grid.cells.values(), *grid.pretrain.values()]}
    return {task: {} for task in FIXTURES if task in used}
