"""Your own data end to end: an .npz and a folder of PNGs through train, export, and the emulator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import model.vit as vit
from host.cli import main as host_main
from host.emulator import EmulatorBackend
from host.integer_runtime import IntegerRuntime
from host.runtime import Runtime
from model import intvit, modelfile
from model.config import from_dict
from model.data import read_raw_images
from model.export import export_checkpoint
from model.train import load_model, train
from tests.model.test_file_data import write_folder, write_npz


def tiny_config(dataset: str, path: str, in_channels: int) -> dict:
    return {"data": {"dataset": dataset, "path": path, "samples_per_class": None, "val_per_class": 2, "shift": 0},
            "model": {"image_size": 8, "in_channels": in_channels, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2,
                      "drop_path": 0.0},
            "train": {"epochs": 2, "fp_epochs": 2, "batch_size": 8, "lr": 3e-3, "warmup_epochs": 0}}


@pytest.fixture(scope="module", params=["npz", "folder"])
def exported(request, tmp_path_factory):
    """A GSB model trained a few steps on a generated npz (grey) or PNG folder (RGB), exported and reloaded."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(request.param)
    if request.param == "npz":
        path, chans = str(write_npz(root / "d.npz")), 1
    else:
        path, chans = str(write_folder(root / "images")), 3
    run = root / "runs" / "gsb"
    train(from_dict(tiny_config(request.param, path, chans)), "gsb", 0, str(run), progress=False)
    modelfile.save(export_checkpoint(str(run / "best.pt")), root / "m.gsbf")
    return load_model(str(run / "best.pt")), modelfile.load(root / "m.gsbf"), path


def test_preprocessing_comes_from_the_data(exported):
    _, mf, path = exported
    assert mf.preprocessing.input_divisor == 255.0 and mf.preprocessing.dataset == path
    assert mf.integer is not None
    assert mf.meta.get("classes") == (["cat", "dog", "owl"] if path.endswith("images") else None)


def test_emulator_equals_the_torch_deploy_forward(exported):
    torch_model, mf, path = exported
    raw, labels, _ = read_raw_images(path)
    x = torch.from_numpy(mf.preprocessing.apply(raw))
    with torch.no_grad():
        torch_pred = torch_model.deploy(x).argmax(-1).numpy()
    assert np.array_equal(Runtime(mf, EmulatorBackend("fast")).predict(raw), torch_pred)
    prog = intvit.program(mf)
    assert np.array_equal(IntegerRuntime(prog, EmulatorBackend("fast")).logits(raw.astype(np.int64)),
                          vit.deploy_integer(prog, raw.astype(np.int64)).numpy())


def test_host_infer_runs_the_images_and_reports_accuracy(exported, tmp_path):
    _, mf, path = exported
    modelfile.save(mf, tmp_path / "m.gsbf")
    out = tmp_path / "s.json"
    assert host_main(["infer", "--model", str(tmp_path / "m.gsbf"), "--images", path, "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["images"] == 36 and 0.0 <= summary["accuracy"] <= 1.0 and summary["mode"] == "integer"


def test_a_folder_of_some_classes_is_labelled_by_the_models_class_names(exported, tmp_path):
    _, mf, path = exported
    if not path.endswith("images"):
        pytest.skip("class names come with a folder dataset")
    from host.cli import user_images

    (tmp_path / "owl").mkdir()
    shutil.copy(f"{path}/owl/000.png", tmp_path / "owl" / "a.png")
    _, labels = user_images(mf, str(tmp_path))
    assert labels.tolist() == [2]
