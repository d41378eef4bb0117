"""Tiny data files in the real formats (MNIST idx, CIFAR-10 pickles, LRA TSV, TAPE JSON) for tests,
and a task's whole pass as one batch.

The writers are the tasks' own write_fixture, which also make the smoke run's fixtures; these
take a data_dir, as the readers do. The tests' own is write_tape_lengths.
"""
import json
from pathlib import Path

import torch

from fpt_core.tasks.homology import RemoteHomology
from fpt_core.tasks.idx import write_idx
from fpt_core.tasks.images import CIFAR10, MNIST
from fpt_core.tasks.listops import write_tsv

__all__ = ["every_batch", "write_cifar", "write_idx", "write_listops_tsv", "write_mnist",
           "write_tape_json", "write_tape_lengths"]


def every_batch(task, batch_size: int = 7, fn: str = "eval_batches"):
    """One whole pass of `fn` (eval_batches, val_batches, train_eval_batches) as one (x, y)."""
    xs, ys = zip(*getattr(task, fn)(batch_size))
    return torch.cat(xs), torch.cat(ys)


def write_mnist(data_dir, **sizes) -> dict:
    return MNIST.write_fixture(Path(data_dir) / MNIST.root, **sizes)


def write_cifar(data_dir, **sizes) -> dict:
    return CIFAR10.write_fixture(Path(data_dir) / CIFAR10.root, **sizes)


def write_tape_json(data_dir, **sizes) -> dict:
    return RemoteHomology.write_fixture(Path(data_dir) / RemoteHomology.root, **sizes)


def write_listops_tsv(path, rows) -> None:
    write_tsv(rows, Path(path))


def write_tape_lengths(data_dir, lengths: list[int], folds: int | None = None,
                       splits=("train", "valid")) -> None:
    """TAPE's JSON release with the same records in every split: record i has lengths[i]
    residues and fold label i (i % folds with `folds`), so a test can tell examples apart."""
    folder = Path(data_dir) / RemoteHomology.root
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"primary": "A" * n, "fold_label": i % folds if folds else i}
               for i, n in enumerate(lengths)]
    for split in splits:
        (folder / f"remote_homology_{split}.json").write_text(json.dumps(records))
