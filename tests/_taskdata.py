"""Tiny data files in the real formats (MNIST idx, CIFAR-10 pickles, LRA TSV, TAPE JSON) for tests.

The writers live in fpt_core.smoke, which also makes the smoke run's fixtures from them.
"""
from fpt_core.smoke import (
    AMINO,
    write_cifar,
    write_idx,
    write_listops_tsv,
    write_mnist,
    write_tape_json,
)

__all__ = ["AMINO", "write_cifar", "write_idx", "write_listops_tsv", "write_mnist", "write_tape_json"]
