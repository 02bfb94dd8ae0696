"""Datasets: seeded, disjoint splits; clear errors for missing files."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest

from model import data


def test_split_indices_disjoint_seeded_and_balanced():
    y = np.repeat(np.arange(4), 30)
    tr, va = data.split_indices(y, samples_per_class=10, val_per_class=5, seed=3)
    assert len(set(tr) & set(va)) == 0
    assert np.bincount(y[tr]).tolist() == [10] * 4 and np.bincount(y[va]).tolist() == [5] * 4
    tr2, va2 = data.split_indices(y, 10, 5, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    tr3, _ = data.split_indices(y, 10, 5, seed=4)
    assert not np.array_equal(tr, tr3)
    tr_all, va_all = data.split_indices(y, None, 5, seed=3)
    assert len(tr_all) == 100 and not set(tr_all) & set(va_all)
    with pytest.raises(ValueError, match="class 0 has 30"):
        data.split_indices(y, 26, 5, seed=0)


def test_digits_splits_disjoint_and_test_fixed():
    a = data.load_splits("digits", 50, 20, seed=0)
    b = data.load_splits("digits", 50, 20, seed=1)
    assert a.train.x.shape == (500, 1, 8, 8) and a.val.x.shape == (200, 1, 8, 8)
    assert not set(a.train.index) & set(a.val.index)
    assert np.array_equal(a.test.y, b.test.y)
    assert np.allclose(a.test.x * a.std + a.mean, b.test.x * b.std + b.mean, atol=1e-5)
    assert not np.array_equal(a.train.index, b.train.index)
    # the test images are never in the training pool
    xtr, _, xte, _ = data.load_pool("digits")
    assert len(xtr) + len(xte) == 1797
    assert a.num_classes == 10


def _write_idx(path, arr):
    header = struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_reader_and_missing_message(tmp_path):
    with pytest.raises(data.DatasetMissingError) as e:
        data._load_fashion(str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path) in msg and "dataset-fashion-mnist" in msg
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (20, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.repeat(np.arange(10), 2))
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (10, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10))
    pool = data._load_fashion(str(tmp_path))
    assert pool.xtr.shape == (20, 1, 28, 28) and pool.xtr.dtype == np.uint8 and pool.divisor == 255.0
    assert pool.ytr.tolist()[:4] == [0, 0, 1, 1]
    xtr, _, _, _ = pool.scaled()
    assert xtr.max() <= 1.0 and xtr.dtype == np.float32
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, 1) + struct.pack(">I", 5) + b"\x00\x01")
    with pytest.raises(ValueError, match="expected 5 bytes"):
        data.read_idx(str(bad))


@pytest.mark.skipif(not os.path.exists(os.path.join(data.FASHION_DIR, data.FASHION_FILES["test_labels"])),
                    reason="dataset-fashion-mnist not installed")
def test_fashion_limited_samples():
    s = data.load_splits("fashion_mnist", 10, 10, seed=0)
    assert len(s.train) == 100 and len(s.val) == 100 and len(s.test) == 10000
    assert not set(s.train.index) & set(s.val.index)
