"""Datasets from files: an .npz and an image folder, their splits and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from model import data
from model.config import from_dict


def write_npz(path, n_per_class=12, classes=3, shape=(8, 8), dtype=np.uint8, test=False, seed=0):
    """A small learnable npz: each class lights its own band of rows."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(classes), n_per_class)
    x = rng.integers(0, 60, (len(y), *shape))
    for c in range(classes):
        x[y == c, ..., 2 * c:2 * c + 2, :] += 190
    arrays = {"x": x.astype(dtype), "y": y}
    if test:
        arrays.update(x_test=x[:classes].astype(dtype), y_test=y[:classes])
    np.savez(path, **arrays)
    return path


def write_folder(root, n_per_class=12, classes=("cat", "dog", "owl"), size=8, rgb=True, seed=0):
    """A small learnable folder of PNGs: each class is brightest in its own colour channel (or row band)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            a = rng.integers(0, 60, (size, size, 3) if rgb else (size, size)).astype(np.uint8)
            if rgb:
                a[..., c] += 190
            else:
                a[2 * c:2 * c + 2] += 190
            Image.fromarray(a).save(root / name / f"{i:03d}.png")
    return root


def test_npz_uint8_gets_a_fixed_stratified_test_split(tmp_path):
    path = str(write_npz(tmp_path / "d.npz"))
    pool = data.load_raw(data.Source("npz", path))
    assert pool.divisor == 255.0 and pool.xtr.shape[1:] == (1, 8, 8)
    assert np.bincount(pool.yte).tolist() == [2, 2, 2] and len(pool.ytr) == 30  # round(0.2 * 12) per class
    again = data.load_raw(data.Source("npz", path))
    assert np.array_equal(pool.xte, again.xte)
    s = data.load_splits(data.Source("npz", path), None, 2, seed=0)
    assert s.input_divisor == 255.0 and len(s.val) == 6 and len(s.train) == 24 and s.num_classes == 3


def test_npz_with_its_own_test_split_and_declared_scale(tmp_path):
    path = str(write_npz(tmp_path / "d.npz", dtype=np.float32, test=True, shape=(2, 8, 8)))
    with pytest.raises(ValueError, match=r"d\.npz: x is float32, not uint8: declare .* data\.scale"):
        data.load_raw(data.Source("npz", path))
    pool = data.load_raw(data.Source("npz", path, scale=255.0))
    assert pool.divisor == 255.0 and pool.xtr.shape == (36, 2, 8, 8) and len(pool.yte) == 3


@pytest.mark.parametrize("arrays,message", [
    ({"x": np.zeros((4, 8, 8), np.uint8)}, r"needs arrays x and y"),
    ({"x": np.zeros((4, 8), np.uint8), "y": np.zeros(4, int)}, r"array 'x' must be .* \(N, H, W\) or \(N, C, H, W\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(3, int)}, r"array 'y' must have shape \(4,\)"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.zeros(4)}, r"array 'y' must hold integer labels"),
    ({"x": np.zeros((4, 8, 8), np.uint8), "y": np.arange(4)}, r"class 0 has 1 image\(s\), too few"),
])
def test_npz_errors_name_the_file(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ValueError, match=r"bad\.npz: " + message):
        data.load_raw(data.Source("npz", str(path)))


def test_unreadable_npz_names_the_file(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: cannot read as an \.npz"):
        data.load_raw(data.Source("npz", str(path)))


def test_folder_rgb_and_grey(tmp_path):
    rgb = data.load_raw(data.Source("folder", str(write_folder(tmp_path / "rgb"))))
    assert rgb.xtr.shape[1:] == (3, 8, 8) and rgb.xtr.dtype == np.uint8 and rgb.classes == ["cat", "dog", "owl"]
    assert len(rgb.ytr) == 30 and len(rgb.yte) == 6 and rgb.divisor == 255.0
    grey = data.load_raw(data.Source("folder", str(write_folder(tmp_path / "grey", rgb=False))))
    assert grey.xtr.shape[1:] == (1, 8, 8)


def test_folder_with_train_and_test(tmp_path):
    write_folder(tmp_path / "train", n_per_class=4)
    write_folder(tmp_path / "test", n_per_class=2, classes=("cat", "owl"))
    pool = data.load_raw(data.Source("folder", str(tmp_path)))
    assert len(pool.ytr) == 12 and pool.yte.tolist() == [0, 0, 2, 2] and pool.classes == ["cat", "dog", "owl"]


def test_folder_errors_name_the_file(tmp_path):
    root = write_folder(tmp_path / "sizes", n_per_class=3)
    Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(root / "dog" / "big.png")
    with pytest.raises(ValueError, match=r"big\.png: image is 8x9 pixels, but .*000\.png is 8x8"):
        data.load_raw(data.Source("folder", str(root)))
    root = write_folder(tmp_path / "broken", n_per_class=3)
    (root / "owl" / "zz.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"zz\.png: cannot read as an image"):
        data.load_raw(data.Source("folder", str(root)))
    root = write_folder(tmp_path / "few", n_per_class=3)
    for f in list((root / "dog").iterdir())[1:]:
        f.unlink()
    with pytest.raises(ValueError, match=r"few: class 1 has 1 image\(s\), too few to draw a test split"):
        data.load_raw(data.Source("folder", str(root)))
    with pytest.raises(ValueError, match=r"few2: class 0 has 2 training items, fewer than val_per_class=2"):
        data.load_splits(data.Source("folder", str(write_folder(tmp_path / "few2", n_per_class=3))), None, 2, 0)


def test_read_raw_images_for_inference(tmp_path):
    root = write_folder(tmp_path / "f", n_per_class=2)
    x, y, names = data.read_raw_images(str(root))
    assert x.shape == (6, 3, 8, 8) and y.tolist() == [0, 0, 1, 1, 2, 2] and names == ["cat", "dog", "owl"]
    x, y, names = data.read_raw_images(str(root / "dog"))
    assert x.shape == (2, 3, 8, 8) and y is None and names is None
    x, y, _ = data.read_raw_images(str(write_npz(tmp_path / "d.npz", test=True)))
    assert x.shape == (3, 1, 8, 8) and y.tolist() == [0, 0, 0]


def test_config_file_datasets():
    cfg = from_dict({"data": {"dataset": "npz", "path": "d.npz", "scale": 255}})
    assert cfg.data.source() == data.Source("npz", "d.npz", 255.0, 0.2)
    with pytest.raises(ValueError, match="data.path: needed"):
        from_dict({"data": {"dataset": "folder"}})
    with pytest.raises(ValueError, match="data.path: only"):
        from_dict({"data": {"dataset": "digits", "path": "x"}})
    with pytest.raises(ValueError, match="data.scale: only for an npz"):
        from_dict({"data": {"dataset": "folder", "path": "x", "scale": 1.0}})
    with pytest.raises(ValueError, match=r"'data.test_fraction': must be in \(0, 1\)"):
        from_dict({"data": {"dataset": "folder", "path": "x", "test_fraction": 1.0}})
