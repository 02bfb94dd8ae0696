"""The host runtime runs a random ViT-shaped model end to end, bit-exactly."""

from __future__ import annotations

import numpy as np
import pytest

from host.backend import Backend, Thresholds
from host.emulator import EmulatorBackend
from host.runtime import Runtime, gelu, layer_norm, patchify, softmax
from model.random_model import random_model


class NaiveBackend(Backend):
    """Integer matmuls on decoded values: an independent check of the emulator."""

    def __init__(self):
        self.slots, self.result, self.count = {}, None, 0

    def load(self, slot, groups):
        self.slots[slot] = [g.to_values() for g in groups]

    def run(self, x_slot, y_slot, coefs, thresholds: Thresholds | None = None):
        xs, ys = self.slots[x_slot], self.slots[y_slot]
        self.result = sum(int(coefs[g, h]) * (x @ y.T) for g, x in enumerate(xs) for h, y in enumerate(ys))
        self.count += 1

    def read(self):
        return self.result

    def cycles(self):
        return self.count

    def reset(self):
        self.slots.clear()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(7).integers(0, 17, size=(4, 1, 8, 8))


def test_runtime_on_emulator_equals_naive_integers(images):
    model = random_model(seed=3)
    emu, naive = Runtime(model, EmulatorBackend("reference")), Runtime(model, NaiveBackend())
    emu.trace, naive.trace = {}, {}
    for img in images:
        assert np.array_equal(emu.forward(img), naive.forward(img))
    assert emu.trace.keys() == naive.trace.keys()
    for name in emu.trace:
        assert all(np.array_equal(a, b) for a, b in zip(emu.trace[name], naive.trace[name]))
    # attention runs on the engine: two activation x activation products per head
    assert len(emu.trace["blocks.0.attn.qk"]) == len(emu.trace["blocks.0.attn.av"]) == 2 * len(images)
    assert emu.backend.cycles() > 0


def test_fast_kernel_backend_gives_identical_logits(images):
    model = random_model(seed=4)
    ref, fast = Runtime(model, EmulatorBackend("reference")), Runtime(model, EmulatorBackend("fast"))
    for img in images:
        assert np.array_equal(ref.forward(img), fast.forward(img))
    assert ref.backend.cycles() == fast.backend.cycles()


def test_predictions_depend_on_the_image(images):
    rt = Runtime(random_model(seed=0), EmulatorBackend("reference"))
    logits = np.stack([rt.forward(img) for img in images])
    assert logits.dtype == np.float32 and logits.shape == (4, 10)
    assert not np.allclose(logits[0], logits[1])


def test_patchify_order():
    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    p = patchify(x, 2)
    assert p.shape == (4, 8)
    # patch (row 0, col 1) is the second patch; it holds channel 0 rows 0-1 cols 2-3 first
    assert p[1].tolist() == [2, 3, 6, 7, 18, 19, 22, 23]


def test_float_ops_match_float64_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 16)).astype(np.float32)
    w, b = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-6) * w + b
    assert np.allclose(layer_norm(x, w, b, 1e-6), ref, atol=1e-5)
    assert np.allclose(softmax(x).sum(-1), 1, atol=1e-6)
    from math import erf
    assert np.allclose(gelu(x), [[0.5 * v * (1 + erf(v / np.sqrt(2))) for v in row] for row in x.astype(float)], atol=1e-6)
    assert gelu(x).dtype == np.float32
