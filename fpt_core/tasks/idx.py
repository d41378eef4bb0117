"""The idx format of MNIST's files (as torchvision keeps them): a magic number giving the
dimensionality, the dimensions, then unsigned bytes; plain or gzipped."""
from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from fpt_core.errors import DataError


def open_idx(folder: Path, name: str):
    """The path and an open binary stream of idx file `name` in folder, plain or .gz; (None, None)
    when neither exists."""
    for path, opener in ((folder / name, open), (folder / f"{name}.gz", gzip.open)):
        if path.exists():
            return path, opener(path, "rb")
    return None, None


def read_idx(path: Path, stream, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes (magic 0x0803 images, 0x0801 labels)."""
    with stream:
        data = stream.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: not an idx file of {ndim}-d unsigned bytes (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != math.prod(dims):
        raise DataError(f"{path}: header says shape {dims} but holds {body.size} bytes")
    return body.reshape(dims)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """An idx file of unsigned bytes as torchvision's MNIST files are (gzipped: path.gz)."""
    header = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)
