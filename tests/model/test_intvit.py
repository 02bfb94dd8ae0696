"""The integer program: compiling (the folds), bounds, and one forward on three engines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from model import intvit
from model.golden import Encoding
from model.modelfile import IntegerSection
from model.quantizers import QuantGroup
from model.random_model import TINY, random_integer_model, random_model, random_multibit_program
from model.vit import deploy_integer


@pytest.fixture(scope="module")
def program() -> intvit.IntegerProgram:
    return intvit.program(random_integer_model(seed=3))


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(4).integers(0, 17, size=(6, 1, 8, 8))


def test_numpy_and_torch_reference_engines_agree_on_every_step(program, images):
    a, b = intvit.Trace(keep=True), intvit.Trace(keep=True)
    logits = intvit.forward(program, images, intvit.ReferenceEngine(program), a)
    assert torch.equal(deploy_integer(program, images, b), torch.from_numpy(logits))
    assert a.values.keys() == b.values.keys()
    for name in a.values:
        assert np.array_equal(a.values[name], b.values[name]), name


def test_every_step_is_an_integer_array(program, images):
    trace = intvit.Trace(keep=True)
    intvit.forward(program, images, intvit.ReferenceEngine(program), trace)
    assert trace.float_steps == 0 and trace.steps == len(trace.values) > 20
    assert all(v.dtype == np.int64 for v in trace.values.values())


def test_batching_does_not_change_an_image(program, images):
    engine = intvit.ReferenceEngine(program)
    whole = intvit.forward(program, images, engine)
    assert all(np.array_equal(intvit.forward(program, images[i:i + 1], engine)[0], whole[i]) for i in range(len(images)))


def test_pixels_are_checked(program):
    with pytest.raises(ValueError, match=r"shape \(B, C, H, W\) = \(B, 1, 8, 8\)"):
        intvit.check_pixels(program, np.zeros((2, 8, 8), np.int64))
    with pytest.raises(ValueError, match=r"in \[0, 16\]"):
        intvit.check_pixels(program, np.full((1, 1, 8, 8), 17))
    with pytest.raises(ValueError, match="finite"):
        intvit.check_pixels(program, np.full((1, 1, 8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="integers"):
        intvit.check_pixels(program, np.full((1, 1, 8, 8), 3.5, np.float32))
    assert intvit.check_pixels(program, np.full((1, 1, 8, 8), 3.0, np.float32)).dtype == np.int64


# ---------------------------------------------------------------- folds


def _exhaustive(group: QuantGroup, real, y_range, channels, turn=None) -> None:
    base, hi, lo = intvit.fold_quantizer(group, real, y_range, channels, turn)
    ys = np.arange(y_range[0], y_range[1] + 1)
    grid = np.repeat(ys[:, None], channels, axis=1)
    want = np.stack([group.codes(real(row)) for row in grid])
    from model import intops

    assert np.array_equal(intops.multithreshold(grid, base, hi, lo), want)


@pytest.mark.parametrize("group", [
    QuantGroup("sign", Encoding("bipolar"), 1.0),
    QuantGroup("step", Encoding("unipolar"), 1.0, {"threshold": 0.3}),
    QuantGroup("ternary", Encoding("ternary"), 1.0, {"lo": -0.4, "hi": 0.55}),
    QuantGroup("uint", Encoding("uint", 3), 1.0, {"step": 0.125}),
    QuantGroup("int", Encoding("int", 8), 1.0, {"step": 0.01}),
])
def test_monotone_rules_fold_exactly(group):
    rng = np.random.default_rng(5)
    shift = rng.normal(0, 0.5, size=7)
    _exhaustive(group, lambda y: y * 2.0**-6 + shift, (-200, 200), 7)


def test_gelu_folds_exactly_on_both_sides_of_its_turn():
    """clip(GELU(z)) + offset >= t on an integer z grid: two-sided where GELU dips below t's level."""
    frac, bias = 7, np.array([0.0, 0.3, -1.2, 2.0, -0.1])
    offset = np.array([0.12, 0.0, 0.16, -2.0, 0.05])   # channel 0 and 2: only the dip's tails pass t
    group = QuantGroup("step", Encoding("unipolar"), 1.0, {"threshold": 0.02})
    real = lambda y: np.clip(intvit._gelu(y * 2.0**-frac + bias), -10, 10) + offset  # noqa: E731
    turn = np.ceil((intvit.GELU_ARGMIN - bias) * 2**frac).astype(np.int64)
    _exhaustive(group, real, (-1000, 1000), 5, turn)
    base, hi, lo = intvit.fold_quantizer(group, real, (-1000, 1000), 5, turn)
    assert np.any(lo[:, 0] >= -1000), "the test must reach the non-monotone branch"


def test_multiplier_shift():
    assert intvit.multiplier_shift(1.0) == (1 << 15, 15)
    assert intvit.multiplier_shift(2.0**-20) == (1 << 15, 35)
    m, s = intvit.multiplier_shift(0.3)
    assert m < 1 << 16 and abs(m / 2**s - 0.3) < 2**-16
    for bad in (0.0, -1.0, math.inf, 2.0**17):
        with pytest.raises(ValueError):
            intvit.multiplier_shift(bad)


# ---------------------------------------------------------------- compiling and bounds


def test_compile_follows_the_float_graph_of_the_model(program, images):
    """The integer logits rank classes like the float-host graph on the emulator (same weights, same rules)."""
    from host.emulator import EmulatorBackend
    from host.runtime import Runtime

    logits = intvit.forward(program, images, intvit.ReferenceEngine(program)) * 2.0**-program.params["logit_frac"]
    runtime = Runtime(program.model, EmulatorBackend())
    float_logits = np.stack([runtime.forward(img.astype(np.float32)) for img in images])
    # the file's float graph averages the two heads; the program sums them
    assert np.corrcoef(logits.ravel(), 2 * float_logits.ravel())[0, 1] > 0.95


def test_residual_fraction_bits_come_from_calibration():
    model = random_integer_model(seed=3)
    wide = np.random.default_rng(0).integers(0, 17, size=(8, 1, 8, 8))
    prog = intvit.compile_program(model, wide)
    assert prog.params["residual_frac"] == intvit.program(model).params["residual_frac"]
    assert intvit.compile_program(model, wide, residual_frac=6).params["residual_frac"] == 6


def test_a_float_model_does_not_compile():
    model = random_model(TINY)
    model.layers["blocks.0.attn.qkv"] = model.layers["head"].__class__(np.zeros((96, 32), np.float32))
    with pytest.raises(ValueError, match="blocks.0.attn.qkv is a FloatLinear"):
        intvit.compile_program(model, np.zeros((1, 1, 8, 8), np.int64))


@pytest.mark.parametrize("name, value, message", [
    ("blocks.0.norm1.gain", 1 << 15, "norm1 output can reach"),
    ("exp_table", None, "exp_table"),
])
def test_bounds_are_checked(program, name, value, message):
    arrays = dict(program.arrays)
    arrays[name] = arrays[name].copy()
    if value is None:
        arrays[name][3] += 1
    else:
        arrays[name][0] = value
    with pytest.raises(ValueError, match=message):
        intvit.check_bounds(intvit.IntegerProgram(program.model, program.params, arrays))


def test_requantizer_overflow_is_refused(program):
    params = dict(program.params, **{"blocks.1.mlp.fc2.out.multiplier": (1 << 16) - 1, "blocks.1.mlp.fc2.out.shift": 0})
    arrays = dict(program.arrays, **{"blocks.1.mlp.fc2.out.bias": program.arrays["blocks.1.mlp.fc2.out.bias"]})
    prog = intvit.IntegerProgram(program.model, params, arrays)
    prog.model.layers["blocks.1.mlp.fc2"].__dict__["accumulator_bits"] = 50
    try:
        with pytest.raises(ValueError, match="fc2.out requantizer"):
            intvit.check_bounds(prog)
    finally:
        del prog.model.layers["blocks.1.mlp.fc2"].__dict__["accumulator_bits"]


def test_validate_names_the_field(program):
    params = dict(program.params, residual_bits=12)
    with pytest.raises(ValueError, match="params.residual_bits"):
        intvit.validate(program.model, params, program.arrays)
    arrays = dict(program.arrays, **{"blocks.0.attn.q.hi": program.arrays["blocks.0.attn.q.hi"][:, :1]})
    with pytest.raises(ValueError, match=r"arrays.blocks.0.attn.q.hi: expected int64 \(32, 2\)"):
        intvit.validate(program.model, program.params, arrays)
    with pytest.raises(ValueError, match="missing"):
        intvit.validate(program.model, {k: v for k, v in program.params.items() if k != "pixel_max"}, program.arrays)


def test_attach_refuses_a_foreign_program(program):
    other = random_model(TINY)
    with pytest.raises(ValueError, match="different model"):
        intvit.attach(other, program)
    assert isinstance(program.model.integer, IntegerSection)


# ---------------------------------------------------------------- multi-bit quantizers (the PTQ family)


@pytest.fixture(scope="module")
def multibit_program() -> intvit.IntegerProgram:
    return random_multibit_program(seed=8)


def test_multibit_program_runs_equal_on_numpy_torch_and_the_emulator(multibit_program, images):
    from host.emulator import EmulatorBackend
    from host.integer_runtime import IntegerRuntime

    prog = multibit_program
    assert prog.arrays["blocks.0.attn.levels"].shape[0] == 7 and prog.arrays["blocks.0.attn.q.hi"].shape == (32, 15)
    trace = intvit.Trace(keep=True)
    logits = intvit.forward(prog, images, intvit.ReferenceEngine(prog), trace)
    assert trace.float_steps == 0
    assert torch.equal(deploy_integer(prog, images), torch.from_numpy(logits))
    assert np.array_equal(IntegerRuntime(prog, EmulatorBackend()).logits(images), logits)
    codes = trace.values["blocks.0.attn.codes"]
    assert codes.shape == (1, len(images), TINY.heads, TINY.tokens, TINY.tokens) and 0 <= codes.min() and codes.max() <= 7


def test_uint_attention_codes_round_the_integer_softmax(multibit_program, images):
    """Each code is round(softmax / step) of the integer softmax e / Z (away from the rounding ties)."""
    prog = multibit_program
    trace = intvit.Trace(keep=True)
    intvit.forward(prog, images, intvit.ReferenceEngine(prog), trace)
    scores = trace.values["blocks.1.attn.scores"]
    e, z = intvit.intops.softmax_exp(scores, prog.arrays["exp_table"])
    p = e / z
    step = 1 / 14
    want = np.clip(np.floor(p / step + 0.5), 0, 7)
    tie = np.abs(p / step - np.floor(p / step) - 0.5) < 1e-3   # within 1e-3 steps of a rounding boundary
    got = trace.values["blocks.1.attn.codes"][0]
    assert np.array_equal(got[~tie], want[~tie]) and (~tie).mean() > 0.9


def test_patch_embedding_folds_a_mean_and_std_per_channel():
    """RGB input with its own mean and std per channel: the integer embedding is the float one to within rounding."""
    from dataclasses import replace

    from model.modelfile import Preprocessing

    arch = replace(TINY, in_channels=3)
    model = random_integer_model(arch, seed=4)
    model.preprocessing = Preprocessing(16.0, (0.2, 0.5, 0.3), (0.25, 0.4, 0.6), "rgb")
    raw = np.random.default_rng(6).integers(0, 17, size=(3, 3, 8, 8))
    prog = intvit.compile_program(model, raw)
    assert [prog.params[f"patch_embed.c{c}.multiplier"] > 0 for c in range(3)] == [True] * 3
    trace = intvit.Trace(keep=True)
    logits = intvit.forward(prog, raw, intvit.ReferenceEngine(prog), trace)
    from host.emulator import EmulatorBackend
    from host.integer_runtime import IntegerRuntime

    assert np.array_equal(IntegerRuntime(prog, EmulatorBackend()).logits(raw), logits)
    t = model.tensors
    x = model.preprocessing.apply(raw).astype(np.float64)
    patches = x.reshape(3, 3, 4, 2, 4, 2).transpose(0, 2, 4, 1, 3, 5).reshape(3, 16, 12)
    w = model.layers["patch_embed"]
    front = np.concatenate([t["cls_token"], t["dist_token"]])
    want = np.concatenate([np.broadcast_to(front, (3, 2, arch.dim)), patches @ w.weight.T + w.bias], axis=1) + t["pos_embed"]
    got = trace.values["embed"] * 2.0**-prog.params["residual_frac"]
    assert np.abs(got - want).max() <= 4 * 2.0**-prog.params["residual_frac"]
