"""Tiny data files in the real formats (MNIST idx, CIFAR-10 pickles, LRA TSV, TAPE JSON) for tests.

The writers live in fpt_core.smoke, which also makes the smoke run's fixtures from them; the
tests' own is write_tape_lengths.
"""
import json
from pathlib import Path

from fpt_core.smoke import (
    AMINO,
    write_cifar,
    write_idx,
    write_listops_tsv,
    write_mnist,
    write_tape_json,
)

__all__ = ["AMINO", "write_cifar", "write_idx", "write_listops_tsv", "write_mnist", "write_tape_json",
           "write_tape_lengths"]


def write_tape_lengths(data_dir, lengths: list[int], folds: int | None = None) -> None:
    """TAPE's JSON release with the same records in train and valid: record i has lengths[i]
    residues and fold label i (i % folds with `folds`), so a test can tell examples apart."""
    folder = Path(data_dir) / "remote-homology"
    folder.mkdir(parents=True, exist_ok=True)
    records = [{"primary": "A" * n, "fold_label": i % folds if folds else i}
               for i, n in enumerate(lengths)]
    for split in ("train", "valid"):
        (folder / f"remote_homology_{split}.json").write_text(json.dumps(records))
