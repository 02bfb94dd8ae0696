"""The host runtime runs a random ViT-shaped model end to end, bit-exactly."""

from __future__ import annotations

import numpy as np
import pytest

from host.backend import Backend, Thresholds
from host.emulator import EmulatorBackend
from host.runtime import Runtime, gelu, layer_norm, softmax
from model.deploy import patchify
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


def _factored(model, name: str, rank: int, seed: int):
    """Replace linear ``name`` by two int8 engine stages (in -> rank -> out, bias on the second)."""
    from model.golden import Encoding, Operand
    from model.layers import EngineLinear, FactoredLinear, WeightGroup
    from model.quantizers import QuantGroup, Quantizer

    rng = np.random.default_rng(seed)
    out_f, in_f = model.architecture.linear_shapes()[name]
    int8 = Encoding("int", 8)

    def stage(o, i, step, bias):
        q = Quantizer((QuantGroup("int", int8, step, {"step": step}),))
        w = WeightGroup(Operand.from_values(rng.integers(-128, 128, size=(o, i)), int8, model.word_bits), 1.0 / 128 / np.sqrt(i))
        return EngineLinear(q, (w,), bias)

    model.layers[name] = FactoredLinear((stage(rank, in_f, 0.02, None),
                                         stage(out_f, rank, 0.01, (0.1 * rng.normal(size=out_f)).astype(np.float32))))
    return model


def test_factored_linear_runs_its_stages_on_the_engine(images):
    from model.deploy import linear_output

    model = _factored(random_model(seed=3), "blocks.0.attn.qkv", rank=5, seed=1)
    emu, naive = Runtime(model, EmulatorBackend("reference")), Runtime(model, NaiveBackend())
    emu.trace = {}
    for img in images[:2]:
        assert np.array_equal(emu.forward(img), naive.forward(img))
    assert {"blocks.0.attn.qkv.stage0", "blocks.0.attn.qkv.stage1"} <= emu.trace.keys()
    assert emu.trace["blocks.0.attn.qkv.stage0"][0].shape == (model.architecture.tokens, 5)
    # the layer is its stages, each by the contract, the intermediate re-quantized by stage 1's quantizer
    x = np.random.default_rng(0).normal(size=(7, model.architecture.dim)).astype(np.float32)
    layer = model.layers["blocks.0.attn.qkv"]
    want = linear_output(layer.stages[1], linear_output(layer.stages[0], x, model.word_bits), model.word_bits)
    assert np.array_equal(Runtime(model, EmulatorBackend("fast")).linear("blocks.0.attn.qkv", x), want)


@pytest.mark.parametrize("image,message", [
    (np.zeros((8, 8)), r"shape \(C, H, W\) = \(1, 8, 8\), got \(8, 8\)"),
    (np.zeros((1, 8, 9)), r"shape \(C, H, W\) = \(1, 8, 8\)"),
    (np.full((1, 8, 8), np.nan), "finite"),
    (np.full((1, 8, 8), np.inf), "finite"),
    (np.full((1, 8, 8), 1e30), r"in \[0, 16\]"),
    (np.full((1, 8, 8), -1.0), r"in \[0, 16\]"),
    (np.full((1, 8, 8), "7"), "real numbers"),
])
def test_bad_images_are_refused_naming_the_expected_input(image, message):
    rt = Runtime(random_model(seed=0), EmulatorBackend("reference"))
    with pytest.raises(ValueError, match=message):
        rt.forward(image)


def test_predict_names_the_batch_shape(images):
    rt = Runtime(random_model(seed=0), EmulatorBackend("reference"))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\) = \(B, 1, 8, 8\), got \(1, 8, 8\)"):
        rt.predict(images[0])
    assert rt.predict(images[:1].astype(np.uint8)).shape == (1,)


@pytest.mark.parametrize("backend", [lambda: EmulatorBackend("fast"), lambda: EmulatorBackend("reference"), NaiveBackend])
def test_a_batch_gives_the_integers_of_one_image_at_a_time(images, backend):
    """Batched (every image and head of a layer in one backend call) equals image by image, bit for bit."""
    model = random_model(seed=3)
    alone, batched = Runtime(model, backend()), Runtime(model, backend())
    alone.trace, batched.trace = {}, {}
    one = np.stack([alone.forward(img) for img in images])
    many = np.concatenate([batched.logits(images[:3]), batched.logits(images[3:])])
    assert many.dtype == np.float32 and np.array_equal(one, many)
    assert alone.trace.keys() == batched.trace.keys()
    for name, results in alone.trace.items():
        assert len(results) == len(batched.trace[name]), name
        assert all(np.array_equal(a, b) for a, b in zip(results, batched.trace[name])), name
    if isinstance(alone.backend, EmulatorBackend):  # the naive backend counts calls, not cycles
        assert alone.backend.cycles() == batched.backend.cycles()
    assert np.array_equal(batched.predict(images), np.argmax(one, axis=-1))
