"""Data for the hyper-parameter analysis: FashionMNIST from local IDX files, or the embedded digits.

Nothing is downloaded. FashionMNIST is read from ``--dataroot`` in either layout::

    <dataroot>/train-images-idx3-ubyte[.gz]               (the original IDX files)
    <dataroot>/FashionMNIST/raw/train-images-idx3-ubyte[.gz]   (torchvision's layout)

plus ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.digits import digits_tensors

FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# Sub-folders of --dataroot searched in order (original files, torchvision, common lower-case names).
FASHION_SUBDIRS = ("", "FashionMNIST/raw", "fashionmnist", "fashion-mnist", "fashion_mnist")

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class SplitData:
    """Train / validation / test tensors; images (N, 1, S, S) float32 in [0, 1], labels (N,) int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def input_size(self) -> int:
        return int(self.x_train.shape[-1])


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed) into an array of its stored shape.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the header is not a valid IDX header or the payload size does not match it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path} is truncated inside its IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_len != expected:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes) but holds {len(raw) - header_len}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(shape)


def find_fashion_files(dataroot: str | Path) -> dict[str, Path]:
    """Locate the four FashionMNIST IDX files under ``dataroot`` (see the module docstring).

    Raises:
        FileNotFoundError: a file is missing; the message lists every place searched.
    """
    root = Path(dataroot)
    found: dict[str, Path] = {}
    for key, stem in FASHION_FILES.items():
        candidates = [root / sub / f"{stem}{ext}" for sub in FASHION_SUBDIRS for ext in ("", ".gz")]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            raise FileNotFoundError(
                f"FashionMNIST file {stem}[.gz] not found under --dataroot {root}. This project does not "
                f"download data: copy the four IDX files ({', '.join(FASHION_FILES.values())}) into "
                f"{root}/ or {root}/FashionMNIST/raw/ (torchvision's layout). Searched: "
                + ", ".join(str(c) for c in candidates)
            )
        found[key] = hit
    return found


def load_fashion_mnist(dataroot: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FashionMNIST ``(x_train, y_train, x_test, y_test)``; images (N, 1, 28, 28) float32 in [0, 1]."""
    files = find_fashion_files(dataroot)
    arrays = {key: read_idx(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"FashionMNIST {split} files disagree: images {images.shape} (expected (N, H, W)), "
                f"labels {labels.shape} (expected (N,))"
            )

    def to_images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)

    def to_labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return (
        to_images(arrays["train_images"]),
        to_labels(arrays["train_labels"]),
        to_images(arrays["test_images"]),
        to_labels(arrays["test_labels"]),
    )


def _load_digits(dataroot: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return digits_tensors()


@dataclass(frozen=True)
class DatasetSpec:
    """How to load a data set and its default train/validation sizes (taken from its training set)."""

    loader: Callable[[str | Path], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    train_size: int
    val_size: int


DATASETS: dict[str, DatasetSpec] = {
    # The paper: 20k/20k train/validation split of FashionMNIST's 60k training images.
    "fashionmnist": DatasetSpec(load_fashion_mnist, 20_000, 20_000),
    # digits: 1,347 training images after engine.digits' 75/25 split; 1,000 train, 347 validation.
    "digits": DatasetSpec(_load_digits, 1_000, 347),
}


def load_dataset(dataset: str, dataroot: str | Path) -> tuple[torch.Tensor, ...]:
    """``(x_train_all, y_train_all, x_test, y_test)`` of ``dataset`` (a key of :data:`DATASETS`).

    Raises:
        ValueError: unknown data set.
        FileNotFoundError: FashionMNIST files missing under ``dataroot``.
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    return DATASETS[dataset].loader(dataroot)


def resolve_split_sizes(dataset: str, n_available: int, train_size: int = 0, val_size: int = 0) -> tuple[int, int]:
    """Train/validation sizes (0 means the data set's default), checked against ``n_available``.

    Raises:
        ValueError: negative sizes, or more images requested than exist.
    """
    if train_size < 0 or val_size < 0:
        raise ValueError(f"train_size and val_size must be >= 0, got {train_size}, {val_size}")
    spec = DATASETS[dataset]
    n_train = train_size or spec.train_size
    n_val = val_size or spec.val_size
    if n_train + n_val > n_available:
        raise ValueError(
            f"train_size + val_size = {n_train + n_val} exceeds the {n_available} training images of {dataset}"
        )
    return n_train, n_val


def draw_split(data: tuple[torch.Tensor, ...], n_train: int, n_val: int, split_seed: int) -> SplitData:
    """A seeded train/validation split of the training set; the test set is passed through.

    Args:
        data: ``(x_train_all, y_train_all, x_test, y_test)`` from :func:`load_dataset`.
        n_train, n_val: sizes (see :func:`resolve_split_sizes`).
        split_seed: seed of the permutation (each model gets its own).
    """
    x_all, y_all, x_test, y_test = data
    perm = torch.randperm(len(x_all), generator=torch.Generator().manual_seed(split_seed))
    train_idx, val_idx = perm[:n_train], perm[n_train : n_train + n_val]
    return SplitData(x_all[train_idx], y_all[train_idx], x_all[val_idx], y_all[val_idx], x_test, y_test)
