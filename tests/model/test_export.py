"""Export of a GSB model: the host runtime on the emulator equals the torch deploy forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import model.vit as vit
from host.emulator import EmulatorBackend
from host.runtime import Runtime
from model import modelfile
from model.data import load_pool
from model.export import export_model
from model.layers import EngineLinear, EngineMatmul, FloatLinear
from model.modelfile import Preprocessing


@pytest.fixture(scope="module")
def trained(small_vit):
    """A small GSB digits model, trained for 150 steps at stage 2."""
    model, splits = small_vit("gsb", 150, stage=2)
    pre = Preprocessing(splits.input_divisor, splits.mean, splits.std, "digits")
    return model, export_model(model, pre)


def test_export_maps_every_layer_kind(trained, tmp_path):
    model, exported = trained
    kinds = {name: type(layer) for name, layer in exported.layers.items()}
    assert kinds["patch_embed"] is FloatLinear and kinds["head"] is FloatLinear
    for i in range(2):
        assert kinds[f"blocks.{i}.attn.qkv"] is EngineLinear and kinds[f"blocks.{i}.mlp.fc2"] is EngineLinear
        assert kinds[f"blocks.{i}.attn.qk"] is EngineMatmul and kinds[f"blocks.{i}.attn.av"] is EngineMatmul
    av = exported.layers["blocks.0.attn.av"]
    assert [g.encoding.name for g in av.x.groups] == ["unipolar"] * 3
    assert [g.encoding.name for g in av.y.groups] == ["bipolar", "ternary", "ternary"]
    modelfile.save(exported, tmp_path / "m.gsbf")
    assert modelfile.to_manifest(modelfile.load(tmp_path / "m.gsbf"))[0] == modelfile.to_manifest(exported)[0]


def test_runtime_on_emulator_equals_torch_deploy_on_the_test_set(trained):
    model, exported = trained
    _, _, xte, yte = load_pool("digits")
    raw = np.rint(xte * 16)
    x = torch.from_numpy(exported.preprocessing.apply(raw))
    torch_pred = model.deploy(x).argmax(-1).numpy()
    host_pred = Runtime(exported, EmulatorBackend("fast")).predict(raw)
    assert np.mean(torch_pred == host_pred) >= 0.999
    assert np.mean(host_pred == yte) > 0.3  # the model learned something: the check is not vacuous


def test_same_integers_for_every_binary_layer_on_a_sample(trained, monkeypatch):
    model, exported = trained
    _, _, xte, _ = load_pool("digits")
    raw = np.rint(xte[:5] * 16)
    torch_ints: list[np.ndarray] = []
    original = vit.integer_product

    def recording(*args):
        y = original(*args)
        torch_ints.append(y)
        return y

    monkeypatch.setattr(vit, "integer_product", recording)
    runtime = Runtime(exported, EmulatorBackend("reference"))
    for img in raw:
        torch_ints.clear()
        runtime.trace = {}
        model.deploy(torch.from_numpy(exported.preprocessing.apply(img[None])))
        runtime.forward(img)
        # torch's order, per block: qkv, Q K^T (all heads), A V (all heads), proj, fc1, fc2
        expected = []
        for i in range(2):
            p = f"blocks.{i}"
            t = runtime.trace
            expected += [t[f"{p}.attn.qkv"][0], np.stack(t[f"{p}.attn.qk"]), np.stack(t[f"{p}.attn.av"]),
                         t[f"{p}.attn.proj"][0], t[f"{p}.mlp.fc1"][0], t[f"{p}.mlp.fc2"][0]]
        assert len(torch_ints) == len(expected) == 12
        for got, want in zip(torch_ints, expected):
            assert np.array_equal(got[0], want)


def test_integer_program_on_the_test_set(trained):
    """The compiled program: torch and the emulator give the same logits on every test image, close to the float host."""
    from host.integer_runtime import IntegerRuntime
    from model import intvit
    from model.data import split_indices

    model, exported = trained
    xtr, ytr, xte, yte = load_pool("digits")
    train, _ = split_indices(ytr, 100, 20, 0)
    prog = intvit.compile_program(exported, np.rint(xtr[train] * 16).astype(np.int64))
    raw = np.rint(xte * 16).astype(np.int64)
    torch_logits = vit.deploy_integer(prog, raw).numpy()
    assert np.array_equal(IntegerRuntime(prog, EmulatorBackend("fast")).logits(raw), torch_logits)
    float_pred = model.deploy(torch.from_numpy(exported.preprocessing.apply(raw))).argmax(-1).numpy()
    int_pred = torch_logits.argmax(-1)
    assert np.mean(int_pred == float_pred) > 0.9
    assert abs(np.mean(int_pred == yte) - np.mean(float_pred == yte)) < 0.05


def test_bin1_compiles_to_an_integer_program(small_vit):
    """The 1-base baseline (one V group, one attention level, mean scales) folds like GSB."""
    from host.integer_runtime import IntegerRuntime
    from model import intvit

    model, splits = small_vit("bin1", 30, stage=2)
    exported = export_model(model, Preprocessing(splits.input_divisor, splits.mean, splits.std, "digits"))
    xtr, _, xte, _ = load_pool("digits")
    raw = np.rint(xte[:40] * 16).astype(np.int64)
    prog = intvit.compile_program(exported, np.rint(xtr[:64] * 16).astype(np.int64))
    assert prog.params["blocks.0.attn.v_groups"] == 1 and prog.arrays["blocks.0.attn.levels"].shape[0] == 1
    assert np.array_equal(IntegerRuntime(prog, EmulatorBackend("fast")).logits(raw), vit.deploy_integer(prog, raw).numpy())
