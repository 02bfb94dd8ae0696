# amaranth: UnusedElaboratable=no
"""hw.requantize against model.intops: saturate(r + rq(y, m, s) + bias), every shift, the extremes, saturation both ways."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.requantize import Requantize
from hw.streamsim import run_batches
from model import intops
from model.intvit import MULTIPLIER_BITS, RESIDUAL_BITS


def _run(dut, layers, seed=None, stall=0.0):
    """``layers``: (multiplier, shift, y, r, bias) each; returns the outputs of all, in order."""
    batches = []
    for mult, shift, y, r, bias in layers:
        async def setup(ctx, mult=mult, shift=shift):
            ctx.set(dut.multiplier, mult)
            ctx.set(dut.shift, shift)
        items = [{"y": int(a), "r": int(b), "bias": int(c)} for a, b, c in zip(y, r, bias)]
        batches.append((setup, items, len(items)))
    got, cycles = run_batches(dut, dut.i, dut.o, batches, seed=seed, stall=stall)
    return np.array(got, np.int64), cycles


def _golden(layers, out_bits):
    return np.concatenate([intops.saturate(r + intops.requantize(y, mult, shift) + bias, out_bits)
                           for mult, shift, y, r, bias in layers])


def _extremes(bits):
    lo, hi = intops.signed_range(bits)
    return np.array([lo, lo + 1, -1, 0, 1, hi - 1, hi], np.int64)


def test_contract_examples():
    """Section 8's examples: rq(-37, 3, 2) = -28, rq(-5, 1, 1) = -2 (half rounds up), and a shift of 0."""
    dut = Requantize(8, 8, 8, 16)
    zero = np.zeros(1, np.int64)
    layers = [(3, 2, np.array([-37]), zero, zero), (1, 1, np.array([-5]), zero, zero), (7, 0, np.array([-5]), zero, zero)]
    got, _ = _run(dut, layers)
    assert got.tolist() == [-28, -2, -35]


def test_every_shift_at_the_extremes():
    """Every shift 0..63 of a 6-bit port, extreme y and multipliers, residual and bias at the int16 limits: saturation both ways."""
    y_bits, out_bits = 20, RESIDUAL_BITS
    dut = Requantize(y_bits, RESIDUAL_BITS, 26, out_bits, MULTIPLIER_BITS, 6)
    ys, rs = _extremes(y_bits), _extremes(RESIDUAL_BITS)
    y, r = np.repeat(ys, len(rs)), np.tile(rs, len(ys))
    bias = np.resize(np.array([-(1 << 24), 0, (1 << 24) - 1, 5], np.int64), len(y))
    layers = [((1 << MULTIPLIER_BITS) - 1 if s % 3 else 1 + s * 997, s, y, r, bias) for s in range(64)]
    got, _ = _run(dut, layers)
    assert np.array_equal(got, _golden(layers, out_bits))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_against_golden_with_back_pressure(seed):
    rng = np.random.default_rng(seed)
    y_bits, r_bits, bias_bits = (int(b) for b in rng.integers(2, 32, 3))
    out_bits = int(rng.integers(2, 40))
    dut = Requantize(y_bits, r_bits, bias_bits, out_bits, MULTIPLIER_BITS, 6)
    layers = []
    for _ in range(3):
        n = 20
        y = rng.integers(*intops.signed_range(y_bits), n, endpoint=True)
        r = rng.integers(*intops.signed_range(r_bits), n, endpoint=True)
        bias = rng.integers(*intops.signed_range(bias_bits), n, endpoint=True)
        mult = int(rng.integers(1, 1 << MULTIPLIER_BITS))
        shift = int(rng.integers(0, y_bits + MULTIPLIER_BITS + 2))
        layers.append((mult, shift, y, r, bias))
    got, _ = _run(dut, layers, seed=seed, stall=0.3)
    assert np.array_equal(got, _golden(layers, out_bits))


def test_one_item_a_cycle():
    dut = Requantize(16, 16, 16, 16)
    y = np.arange(-100, 100, dtype=np.int64)
    layers = [(12345, 9, y, y[::-1].copy(), np.full(len(y), 3))]
    got, cycles = _run(dut, layers)
    assert np.array_equal(got, _golden(layers, 16))
    assert cycles <= len(y) + dut.latency + 2


@pytest.mark.parametrize("kwargs, name", [
    (dict(y_bits=1, r_bits=16, bias_bits=16, out_bits=16), "y_bits"),
    (dict(y_bits=16, r_bits=0, bias_bits=16, out_bits=16), "r_bits"),
    (dict(y_bits=16, r_bits=16, bias_bits=0, out_bits=16), "bias_bits"),
    (dict(y_bits=16, r_bits=16, bias_bits=16, out_bits=1), "out_bits"),
    (dict(y_bits=16, r_bits=16, bias_bits=16, out_bits=16, multiplier_bits=19), "multiplier_bits"),
    (dict(y_bits=16, r_bits=16, bias_bits=16, out_bits=16, shift_bits=7), "shift_bits"),
])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Requantize(**kwargs)
