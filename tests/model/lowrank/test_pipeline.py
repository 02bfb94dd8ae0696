"""Compression, int8 factors, export and the emulator on a small trained digits ViT."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from host.emulator import EmulatorBackend
from host.runtime import Runtime
from model import modelfile
from model.data import load_pool, load_splits
from model.export import export_model
from model.layers import EngineLinear, FactoredLinear
from model.lowrank.compensate import LowRankConfig, calibrate, compress
from model.lowrank.quant import EngineForward, onchip_bits, quantize
from model.lowrank.svd import LowRankLinear
from model.modelfile import Preprocessing


@pytest.fixture(scope="module")
def setup(small_vit):
    """A small FP digits ViT trained for 120 steps, its splits and calibration."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared 2-core machine: one thread is far faster than two contending
    model, splits = small_vit("fp", 120)
    calib_x = splits.train.x[:300]
    yield model, splits, calib_x, calibrate(model, calib_x)
    torch.set_num_threads(threads)


def _logits(model, x):
    with torch.no_grad():
        return model.predict(torch.from_numpy(x))


def test_budget_is_met_and_compensation_lowers_the_calibration_loss(setup):
    model, splits, calib_x, calib = setup
    for kw in (dict(method="activation"), dict(method="weight", compensate=False), dict(method="weight", allocation="uniform")):
        out, info = compress(model, calib, LowRankConfig(removed=0.6, steps=40, **kw), calib_x)
        assert info["params"] <= info["budget"] and info["removed"] >= 0.6
        assert sum(isinstance(m, LowRankLinear) for m in out.modules()) >= 1
        assert all(v["loss_after"] <= v["loss_before"] for v in info["compensation"].values())
        assert bool(info["compensation"]) == (kw["method"] == "activation")
    # the original model is untouched; nothing removed is the model itself
    same, info = compress(model, calib, LowRankConfig(removed=0.0), calib_x)
    assert info["params"] == info["dense_params"] and torch.equal(_logits(same, splits.val.x), _logits(model, splits.val.x))


def test_activation_aware_keeps_the_outputs_closer_than_weight_svd(setup):
    model, splits, calib_x, calib = setup
    ref = _logits(model, splits.val.x)
    errs = {}
    for method in ("activation", "weight"):
        out, _ = compress(model, calib, LowRankConfig(method=method, removed=0.5, compensate=False, allocation="uniform"))
        errs[method] = float((_logits(out, splits.val.x) - ref).pow(2).mean())
    assert errs["activation"] < errs["weight"]


@pytest.fixture(scope="module")
def exported(setup, tmp_path_factory):
    model, splits, calib_x, calib = setup
    low, _ = compress(model, calib, LowRankConfig(removed=0.5, steps=40), calib_x)
    qmodel, layers = quantize(low, calib_x)
    pre = Preprocessing(splits.input_divisor, splits.mean, splits.std, "digits")
    path = tmp_path_factory.mktemp("lr") / "lowrank.gsbf"
    modelfile.save(export_model(model, pre, overrides=layers), path)
    return qmodel, layers, modelfile.load(path)


def test_int8_factors_export_as_factored_engine_layers(exported):
    qmodel, layers, mf = exported
    factored = [n for n, l in mf.layers.items() if isinstance(l, FactoredLinear)]
    assert factored and all(isinstance(s, EngineLinear) for n in factored for s in mf.layers[n].stages)
    for n in factored:
        s0, s1 = mf.layers[n].stages
        assert s0.bias is None and s1.bias is not None and s0.out_features == s1.in_features
        assert str(s0.weights[0].operand.encoding) == "int8" and s0.accumulator_bits <= 31


def test_engine_forward_equals_the_runtime_layer_bit_for_bit(exported):
    _, layers, mf = exported
    rt = Runtime(mf, EmulatorBackend("fast"))
    x = np.random.default_rng(0).normal(size=(9, 32)).astype(np.float32)
    for n, layer in layers.items():
        if n.endswith("fc2"):
            continue  # input width 64
        got = EngineForward(layer)(torch.from_numpy(x)).numpy()
        assert np.array_equal(got, rt.linear(n, x)), n


def test_emulator_predictions_equal_the_torch_forward(exported):
    qmodel, _, mf = exported
    _, _, xte, yte = load_pool("digits")
    n = 40
    raw = np.rint(xte[:n] * 16).astype(np.int64)
    rt = Runtime(mf, EmulatorBackend("fast"))
    logits = np.stack([rt.forward(img) for img in raw])
    torch_logits = _logits(qmodel, np.stack([mf.preprocessing.apply(r) for r in raw])).numpy()
    assert np.array_equal(logits.argmax(-1), torch_logits.argmax(-1))
    assert np.abs(logits - torch_logits).max() < 1e-3


def test_onchip_bits_count_planes_and_scales(exported):
    _, layers, _ = exported
    bits = onchip_bits(layers)
    weights = sum(s.out_features * s.in_features for l in layers.values() for s in (l.stages if isinstance(l, FactoredLinear) else (l,)))
    stages = sum(len(l.stages) if isinstance(l, FactoredLinear) else 1 for l in layers.values())
    assert bits["plane_bits"] == 8 * weights and bits["scale_bits"] == 64 * stages
    assert bits["padded_plane_bits"][8] <= bits["padded_plane_bits"][64]


@pytest.mark.slow
def test_full_digits_test_set_on_the_emulator(tmp_path):
    """The seed-0 FP digits model at 50 % removed, int8: emulator = torch on all 540 test images."""
    from host.lowrank_results import fp_checkpoint
    from model.export import export_checkpoint
    from model.train import load_model

    torch.set_num_threads(1)
    ck = fp_checkpoint("digits", 0)
    fp = load_model(ck)
    splits = load_splits("digits", 100, 20, 0)
    low, _ = compress(fp, calibrate(fp, splits.train.x), LowRankConfig(removed=0.5), splits.train.x)
    qmodel, layers = quantize(low, splits.train.x)
    modelfile.save(export_checkpoint(ck, overrides=layers), tmp_path / "m.gsbf")
    mf = modelfile.load(tmp_path / "m.gsbf")
    _, _, xte, yte = load_pool("digits")
    raw = np.rint(xte * 16).astype(np.int64)
    pred = Runtime(mf, EmulatorBackend("fast")).predict(raw)
    assert np.array_equal(pred, _logits(qmodel, splits.test.x).argmax(-1).numpy())
