"""Datasets for the training side of gsbflow (torch-free: numpy only).

Two built-in datasets and two kinds of file (:class:`Source`), all as float32
arrays ``(n, channels, height, width)`` of raw pixels divided by the
dataset's top raw pixel value (:attr:`Pool.divisor`), with int64 labels:

* ``digits``: scikit-learn's 8x8 digits (ships inside scikit-learn, no
  download).  It has no official test split, so a stratified 30 % test split
  is drawn once with a *fixed* seed (:data:`DIGITS_TEST_SEED`): every run and
  every method is tested on the same images.
* ``fashion_mnist``: the Debian package ``dataset-fashion-mnist`` (IDX
  ``.gz`` files under :data:`FASHION_DIR`), official 60k/10k split.
* ``npz``: a numpy ``.npz`` file with arrays ``x`` (n, h, w) or (n, c, h, w)
  and ``y`` (n,) integer labels from 0, optionally ``x_test``/``y_test``.
  ``x`` is uint8 (top value 255) or holds raw values up to a declared
  ``scale`` (any other dtype, float included, needs one).
* ``folder``: one sub-folder per class (the classes in sorted name order),
  PNG or JPEG files read with Pillow as 8-bit grey (every image grey) or RGB
  (top value 255); a folder holding exactly ``train`` and ``test`` gives its
  own test split.

A file without a test split gets one drawn per class, ``test_fraction`` of
each class (at least one image), with the fixed seed
:data:`FILE_TEST_SEED`: every run of a config tests on the same images.

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
#: the dataset kinds read from a file or folder (``data.path``)
FILE_KINDS = ("npz", "folder")
FILE_TEST_SEED = 0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
#: The top raw pixel value (:attr:`Pool.divisor`) of 8-bit images: Fashion-MNIST, image folders, uint8 npz files.
UINT8_TOP = 255.0
#: The top raw pixel value of scikit-learn's digits (16 grey levels plus 0).
DIGITS_TOP = 16.0


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not installed; the message says how to get them."""


@dataclass(frozen=True)
class Source:
    """Where a dataset comes from: a built-in name, or a file kind with its ``path``.

    ``scale`` declares the top raw pixel value of an ``npz`` (required unless
    its ``x`` is uint8); ``test_fraction`` is the share of each class drawn
    as the test split of a file that has none.
    """

    dataset: str
    path: str | None = None
    scale: float | None = None
    test_fraction: float = 0.2


@dataclass
class Pool:
    """A dataset's raw pixels: the training pool and the fixed test set.

    ``x*`` are (n, c, h, w) raw pixel values, ``y*`` int64 labels; the model
    sees ``x / divisor`` (then normalised), so ``divisor`` is the top raw
    value and travels in the model file as ``input_divisor``.
    """

    xtr: np.ndarray
    ytr: np.ndarray
    xte: np.ndarray
    yte: np.ndarray
    divisor: float
    classes: list[str] | None = None  # a folder's class names, by label

    def scaled(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``xtr, ytr, xte, yte`` with the pixels divided by :attr:`divisor` (float32)."""
        d = np.float32(self.divisor)
        return self.xtr.astype(np.float32) / d, self.ytr, self.xte.astype(np.float32) / d, self.yte


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
    mean: tuple[float, ...]   # one per channel, from the training split
    std: tuple[float, ...]
    input_divisor: float = 1.0
    classes: list[str] | None = None


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


def _load_fashion(root: str = FASHION_DIR) -> Pool:
    paths = {k: os.path.join(root, v) for k, v in FASHION_FILES.items()}
    missing = [p for p in paths.values() if not os.path.exists(p)]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. They come from the Debian "
            f"package 'dataset-fashion-mnist' (install it with: sudo apt-get install -y "
            f"dataset-fashion-mnist), or set GSBFLOW_FASHION_DIR to a folder holding "
            f"{', '.join(FASHION_FILES.values())}."
        )
    xtr = read_idx(paths["train_images"])[:, None]
    ytr = read_idx(paths["train_labels"]).astype(np.int64)
    xte = read_idx(paths["test_images"])[:, None]
    yte = read_idx(paths["test_labels"]).astype(np.int64)
    return Pool(xtr, ytr, xte, yte, UINT8_TOP)


def _load_digits() -> Pool:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = d.data.reshape(-1, 1, 8, 8)
    y = d.target.astype(np.int64)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=DIGITS_TEST_FRACTION, stratify=y, random_state=DIGITS_TEST_SEED)
    tr, te = np.sort(tr), np.sort(te)
    return Pool(x[tr], y[tr], x[te], y[te], DIGITS_TOP)


def _as_source(source: str | Source) -> Source:
    return source if isinstance(source, Source) else Source(source)


def load_raw(source: str | Source) -> Pool:
    """The raw pixels of a dataset (a built-in name or a :class:`Source`)."""
    source = _as_source(source)
    if source.dataset == "digits":
        return _load_digits()
    if source.dataset == "fashion_mnist":
        return _load_fashion()
    if source.dataset not in FILE_KINDS:
        raise ValueError(f"unknown dataset {source.dataset!r}; choose one of {DATASETS + FILE_KINDS}")
    if not source.path:
        raise ValueError(f"a dataset of kind {source.dataset!r} needs a path")
    if source.dataset == "npz":
        return _load_npz(source)
    return _load_folder(source)


def load_pool(source: str | Source) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The dataset's training pool and fixed test set, scaled: ``xtr, ytr, xte, yte``."""
    return load_raw(source).scaled()


def draw_test_split(y: np.ndarray, fraction: float, seed: int = FILE_TEST_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class draw of a test split: ``(pool_idx, test_idx)``, sorted.

    Each class gives ``round(fraction * n)`` of its ``n`` items to the test
    split, at least one and never all of them; a class of fewer than two
    items raises.
    """
    rng = np.random.default_rng(seed)
    pool, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if len(idx) < 2:
            raise ValueError(f"class {c} has {len(idx)} image(s), too few to draw a test split (at least 2)")
        idx = idx[rng.permutation(len(idx))]
        k = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
        test.append(idx[:k])
        pool.append(idx[k:])
    return np.sort(np.concatenate(pool)), np.sort(np.concatenate(test))


def _with_test_split(x: np.ndarray, y: np.ndarray, source: Source, divisor: float,
                     classes: list[str] | None = None) -> Pool:
    try:
        tr, te = draw_test_split(y, source.test_fraction)
    except ValueError as exc:
        raise ValueError(f"{source.path}: {exc}") from None
    return Pool(x[tr], y[tr], x[te], y[te], divisor, classes)


def _npz_images(path: str, x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.dtype.kind not in "biuf":
        raise ValueError(f"{path}: array {name!r} must be real numbers of shape (N, H, W) or (N, C, H, W), "
                         f"got {x.dtype} {x.shape}")
    return x


def _npz_labels(path: str, y: np.ndarray, name: str, n: int) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{path}: array {name!r} must have shape ({n},) (one label per image), got {y.shape}")
    if y.dtype.kind not in "iu" or (len(y) and y.min() < 0):
        raise ValueError(f"{path}: array {name!r} must hold integer labels from 0, got {y.dtype}")
    return y.astype(np.int64)


def read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, or a ValueError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read as an .npz file ({exc})") from None


def npz_divisor(path: str, x: np.ndarray, scale: float | None) -> float:
    """The top raw pixel value of an npz's ``x``: the declared ``scale``, else 255 for uint8."""
    if scale is not None:
        return float(scale)
    if x.dtype != np.uint8:
        raise ValueError(f"{path}: x is {x.dtype}, not uint8: declare its top raw pixel value as data.scale")
    return UINT8_TOP


def _load_npz(source: Source) -> Pool:
    path = source.path
    arrays = read_npz(path)
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing or ("x_test" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{path}: needs arrays x and y (and x_test with y_test, or neither), has {sorted(arrays)}")
    x = _npz_images(path, arrays["x"], "x")
    y = _npz_labels(path, arrays["y"], "y", len(x))
    divisor = npz_divisor(path, arrays["x"], source.scale)
    if "x_test" not in arrays:
        return _with_test_split(x, y, source, divisor)
    xte = _npz_images(path, arrays["x_test"], "x_test")
    if xte.shape[1:] != x.shape[1:]:
        raise ValueError(f"{path}: x_test images are {xte.shape[1:]}, x images {x.shape[1:]}")
    return Pool(x, y, xte, _npz_labels(path, arrays["y_test"], "y_test", len(xte)), divisor)


def read_image(path: str, grey: bool) -> np.ndarray:
    """One PNG/JPEG file as uint8 (C, H, W): grey (C=1) or RGB (C=3); a ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            a = np.asarray(im.convert("L" if grey else "RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read as an image ({exc})") from None
    return a[None] if grey else a.transpose(2, 0, 1)


def _is_grey(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "I;16", "I")
    except OSError:
        return False  # read_image names the file


def image_files(folder: str) -> list[str]:
    """The PNG/JPEG files directly in ``folder``, sorted by name."""
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))


def read_images(files: list[str]) -> np.ndarray:
    """Images of one size as uint8 (N, C, H, W): grey when every file is grey, else RGB."""
    grey = all(_is_grey(f) for f in files)
    images, first = [], None
    for f in files:
        a = read_image(f, grey)
        if first is None:
            first = (f, a.shape)
        elif a.shape != first[1]:
            raise ValueError(f"{f}: image is {a.shape[2]}x{a.shape[1]} pixels, but {first[0]} is "
                             f"{first[1][2]}x{first[1][1]}: every image must have the same size")
        images.append(a)
    return np.stack(images)


def class_folders(root: str) -> list[str]:
    """The class names of an image folder: its sub-folders, sorted."""
    if not os.path.isdir(root):
        raise ValueError(f"{root}: not a folder")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not classes:
        raise ValueError(f"{root}: no class sub-folders")
    return classes


def read_folder(root: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The images of the ``classes`` sub-folders of ``root`` (uint8 N, C, H, W) and their labels."""
    files, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(os.path.join(root, name)) if os.path.isdir(os.path.join(root, name)) else []
        files += found
        labels += [label] * len(found)
    if not files:
        raise ValueError(f"{root}: no PNG or JPEG images in its class sub-folders")
    return read_images(files), np.array(labels, dtype=np.int64)


def _load_folder(source: Source) -> Pool:
    root = source.path
    classes = class_folders(root)
    if classes == ["test", "train"]:
        classes = class_folders(os.path.join(root, "train"))
        xtr, ytr = read_folder(os.path.join(root, "train"), classes)
        xte, yte = read_folder(os.path.join(root, "test"), classes)
        if xte.shape[1:] != xtr.shape[1:]:
            raise ValueError(f"{root}: test images are {xte.shape[1:]}, train images {xtr.shape[1:]} (C, H, W)")
        return Pool(xtr, ytr, xte, yte, UINT8_TOP, classes)
    x, y = read_folder(root, classes)
    return _with_test_split(x, y, source, UINT8_TOP, classes)


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
    source: str | Source, samples_per_class: int | None, val_per_class: int, seed: int
) -> Splits:
    """Train / validation / test splits, normalised with training statistics."""
    source = _as_source(source)
    pool = load_raw(source)
    xtr, ytr, xte, yte = pool.scaled()
    try:
        tr, va = split_indices(ytr, samples_per_class, val_per_class, seed)
    except ValueError as exc:
        raise ValueError(f"{source.path}: {exc}" if source.path else str(exc)) from None
    train_x = xtr[tr]
    mean = tuple(float(train_x[:, c].mean()) for c in range(train_x.shape[1]))
    std = tuple(float(train_x[:, c].std()) or 1.0 for c in range(train_x.shape[1]))
    m, sd = np.array(mean, np.float32)[:, None, None], np.array(std, np.float32)[:, None, None]

    def norm(x: np.ndarray) -> np.ndarray:
        return ((x - m) / sd).astype(np.float32)

    return Splits(
        train=Split(norm(xtr[tr]), ytr[tr], tr),
        val=Split(norm(xtr[va]), ytr[va], va),
        test=Split(norm(xte), yte, np.arange(len(yte))),
        num_classes=int(max(ytr.max(), yte.max()) + 1),
        mean=mean,
        std=std,
        input_divisor=pool.divisor,
        classes=pool.classes,
    )


def read_raw_images(path: str) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """Raw images to run a model on: ``(x (N, C, H, W), labels or None, class names or None)``.

    An ``.npz`` gives ``x_test``/``y_test`` when it has them, else ``x`` and
    ``y`` (labels None without ``y``).  A folder with class sub-folders gives
    their images, labelled by sorted sub-folder name (the class names come
    back so the caller can map them to a model's classes); a folder of image
    files alone gives them unlabelled.
    """
    if not os.path.isdir(path):
        arrays = read_npz(path)
        xk, yk = ("x_test", "y_test") if "x_test" in arrays else ("x", "y")
        if xk not in arrays:
            raise ValueError(f"{path}: needs an array x (or x_test), has {sorted(arrays)}")
        x = _npz_images(path, arrays[xk], xk)
        return x, (_npz_labels(path, arrays[yk], yk, len(x)) if yk in arrays else None), None
    files = image_files(path)
    if files:
        return read_images(files), None, None
    classes = class_folders(path)
    x, y = read_folder(path, classes)
    return x, y, classes
