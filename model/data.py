"""Datasets for the training side of gsbflow (torch-free: numpy only).

Two datasets, both as float32 arrays ``(n, channels, height, width)`` with
int64 labels:

* ``digits``: scikit-learn's 8x8 digits (ships inside scikit-learn, no
  download).  It has no official test split, so a stratified 30 % test split
  is drawn once with a *fixed* seed (:data:`DIGITS_TEST_SEED`): every run and
  every method is tested on the same images.
* ``fashion_mnist``: the Debian package ``dataset-fashion-mnist`` (IDX
  ``.gz`` files under :data:`FASHION_DIR`), official 60k/10k split.

Splits (:func:`load_splits`): the test split is fixed by the dataset; from
the training pool, ``val_per_class`` images per class are held out as the
validation split (seeded), and ``samples_per_class`` images per class are
drawn from the rest as the training split (seeded, same seed).  The three
splits are disjoint by construction; checkpoints and hyper-parameters are
chosen on validation only.  Normalisation statistics come from the training
split only.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass

import numpy as np

FASHION_DIR = os.environ.get("GSBFLOW_FASHION_DIR", "/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DIGITS_TEST_SEED = 0
DIGITS_TEST_FRACTION = 0.3
DATASETS = ("digits", "fashion_mnist")


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not installed; the message says how to get them."""


@dataclass
class Split:
    """Images ``x`` (n, c, h, w) float32 and labels ``y`` (n,) int64."""

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray  # indices into the dataset's pool (train pool or test set)

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: float
    std: float


def read_idx(path: str) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise ValueError(f"{path}: truncated IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {int(np.prod(dims))} bytes of data, found {body.size}")
    return body.reshape(dims)


def _load_fashion(root: str = FASHION_DIR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    paths = {k: os.path.join(root, v) for k, v in FASHION_FILES.items()}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. They come from the Debian "
            f"package 'dataset-fashion-mnist' (install it with: sudo apt-get install -y "
            f"dataset-fashion-mnist), or set GSBFLOW_FASHION_DIR to a folder holding "
            f"{', '.join(FASHION_FILES.values())}."
        )
    xtr = read_idx(paths["train_images"]).astype(np.float32)[:, None] / 255.0
    ytr = read_idx(paths["train_labels"]).astype(np.int64)
    xte = read_idx(paths["test_images"]).astype(np.float32)[:, None] / 255.0
    yte = read_idx(paths["test_labels"]).astype(np.int64)
    return xtr, ytr, xte, yte


def _load_digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_TEST_SEED)
    tr, te = np.sort(tr), np.sort(te)
    return x[tr], y[tr], x[te], y[te]


def load_pool(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dataset's training pool and fixed test set: ``xtr, ytr, xte, yte``."""
    if name == "digits":
        return _load_digits()
    if name == "fashion_mnist":
        return _load_fashion()
    raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def split_indices(
    y: np.ndarray, samples_per_class: int | None, val_per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class draw: ``(train_idx, val_idx)``, disjoint, sorted.

    For each class, ``val_per_class`` items go to validation and then
    ``samples_per_class`` (all the rest when None) to training.  Raises when a
    class has too few items.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        need = val_per_class + (samples_per_class or 0)
        if len(idx) < need or len(idx) <= val_per_class:
            raise ValueError(
                f"class {c} has {len(idx)} training items, fewer than val_per_class={val_per_class} "
                f"+ samples_per_class={samples_per_class}"
            )
        val.append(idx[:val_per_class])
        rest = idx[val_per_class:]
        train.append(rest if samples_per_class is None else rest[:samples_per_class])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def load_splits(
    name: str, samples_per_class: int | None, val_per_class: int, seed: int
) -> Splits:
    """Train / validation / test splits, normalised with training statistics."""
    xtr, ytr, xte, yte = load_pool(name)
    tr, va = split_indices(ytr, samples_per_class, val_per_class, seed)
    mean = float(xtr[tr].mean())
    std = float(xtr[tr].std()) or 1.0

    def norm(x: np.ndarray) -> np.ndarray:
        return ((x - mean) / std).astype(np.float32)

    return Splits(
        train=Split(norm(xtr[tr]), ytr[tr], tr),
        val=Split(norm(xtr[va]), ytr[va], va),
        test=Split(norm(xte), yte, np.arange(len(yte))),
        num_classes=int(max(ytr.max(), yte.max()) + 1),
        mean=mean,
        std=std,
    )
