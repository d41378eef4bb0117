"""Tiny data files in the real formats (MNIST idx, CIFAR-10 pickles, LRA TSV, TAPE JSON) for tests."""
from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import numpy as np

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_mnist(data_dir: Path, n_train: int = 40, n_test: int = 12, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = Path(data_dir) / "mnist" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{split}-images-idx3-ubyte", images, gz)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, gz)
        out[split] = (images, labels)
    return out


def write_cifar(data_dir: Path, per_batch: int = 8, n_test: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        n = n_test if name == "test_batch" else per_batch
        batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n).tolist(), "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f)
        out[name] = batch
    return out


def write_listops_tsv(path: Path, rows: list[tuple[str, object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["Source\tTarget"] + [f"{s}\t{t}" for s, t in rows]
    path.write_text("\r\n".join(lines) + "\r\n")


def write_tape_json(data_dir: Path, n_train: int = 30, n_valid: int = 9, seed: int = 0,
                    splits=("train", "valid", "test_fold_holdout")) -> dict:
    rng = np.random.default_rng(seed)
    folder = Path(data_dir) / "remote-homology"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split in splits:
        n = n_train if split == "train" else n_valid
        records = [{"id": f"d{split}{i}", "primary": "".join(rng.choice(list(AMINO), rng.integers(5, 60))),
                    "protein_length": 0, "fold_label": int(rng.integers(0, 1195)),
                    "superfamily_label": 0, "family_label": 0, "class_label": 0}
                   for i in range(n)]
        (folder / f"remote_homology_{split}.json").write_text(json.dumps(records))
        out[split] = records
    return out
