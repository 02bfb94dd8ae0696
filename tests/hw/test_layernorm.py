# amaranth: UnusedElaboratable=no
"""hw.layernorm against model.intops.layer_norm: the contract's example, identical and extreme tokens, random tokens."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.layernorm import LayerNorm
from hw.streamsim import run_batches
from model import intops
from model.intvit import NORM_BITS, RESIDUAL_BITS


def _run(dut, norms, seed=None, stall=0.0):
    """``norms``: (eps, gain (d,), bias (d,), tokens (T, d)) each; returns the outputs (sum T, d) and the cycles."""
    batches = []
    for eps, gain, bias, tokens in norms:
        async def setup(ctx, eps=eps):
            ctx.set(dut.eps, eps)
        items = []
        for x in tokens:
            items += [{"x": int(v), "gain": 0, "bias": 0} for v in x]
            items += [{"x": int(v), "gain": int(g), "bias": int(b)} for v, g, b in zip(x, gain, bias)]
        batches.append((setup, items, tokens.size))
    got, cycles = run_batches(dut, dut.i, dut.o, batches, seed=seed, stall=stall)
    return np.array(got, np.int64).reshape(-1, dut.dim), cycles


def test_the_reciprocal_divider_takes_a_value_a_cycle():
    """Tokens back to back: each takes cycles_per_token, 199 at the digits model's widths against 1,587."""
    d = 64
    fast, serial = LayerNorm(d, RESIDUAL_BITS, NORM_BITS, 40, "reciprocal"), LayerNorm(d, RESIDUAL_BITS, NORM_BITS, 40)
    assert (fast.cycles_per_token, serial.cycles_per_token) == (199, 1587)
    rng = np.random.default_rng(9)
    tokens = rng.integers(*intops.signed_range(RESIDUAL_BITS), (3, d), endpoint=True)
    gain, bias = rng.integers(-4000, 4000, d), rng.integers(-4000, 4000, d)
    norms = [(7, gain, bias, tokens)]
    got, cycles = _run(fast, norms)
    assert np.array_equal(got, _golden(norms))
    assert 3 * fast.cycles_per_token <= cycles <= 3 * fast.cycles_per_token + fast.PIPELINE + 3


def _golden(norms):
    return np.concatenate([intops.layer_norm(tokens, gain, bias, eps) for eps, gain, bias, tokens in norms])


DIVIDERS = pytest.mark.parametrize("divider", LayerNorm.DIVIDERS)


@DIVIDERS
def test_contract_example(divider):
    """Section 10: d = 4, x = [3000, -1000, 0, 2000], gain 512, eps 1 -> [323, -324, -162, 161]."""
    dut = LayerNorm(4, divider=divider)
    norms = [(1, np.full(4, 512), np.zeros(4, np.int64), np.array([[3000, -1000, 0, 2000]]))]
    got, cycles = _run(dut, norms)
    assert got.tolist() == [[323, -324, -162, 161]]
    drain = dut.PIPELINE if divider == "reciprocal" else 0
    assert cycles <= dut.cycles_per_token + drain + 3


@DIVIDERS
def test_identical_and_extreme_tokens(divider):
    """A token of identical values gives exactly the bias; the int16 extremes, and the largest eps the port holds."""
    d = 64
    dut = LayerNorm(d, RESIDUAL_BITS, NORM_BITS, 40, divider)
    lo, hi = intops.signed_range(RESIDUAL_BITS)
    g_lo, g_hi = intops.signed_range(NORM_BITS)
    rng = np.random.default_rng(5)
    tokens = np.array([np.full(d, lo), np.full(d, hi), np.full(d, 7), np.resize([lo, hi], d),
                       np.r_[hi, np.full(d - 1, lo)], np.r_[lo, np.full(d - 1, hi)]], np.int64)
    gain = rng.integers(g_lo, g_hi, d, endpoint=True)
    gain[:4] = [g_lo, g_hi, 0, -1]
    bias = rng.integers(g_lo, g_hi, d, endpoint=True)
    bias[:4] = [g_lo, g_hi, g_lo, g_hi]
    norms = [(1, gain, bias, tokens), ((1 << 40) - 1, gain, bias, tokens[:2]), (12345, -gain.clip(-g_hi), bias, tokens[3:])]
    got, _ = _run(dut, norms)
    assert np.array_equal(got, _golden(norms))
    assert np.array_equal(got[:3], np.broadcast_to(bias, (3, d)))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
@DIVIDERS
def test_random_against_golden_with_back_pressure(divider, seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 24))
    in_bits, norm_bits = int(rng.integers(2, 18)), int(rng.integers(2, 18))
    eps_bits = int(rng.integers(1, 41))
    dut = LayerNorm(d, in_bits, norm_bits, eps_bits, divider)
    norms = []
    for _ in range(2):
        spread = int(rng.choice([1, 3, 1 << (in_bits - 1)]))  # small spreads: sigma near sqrt(eps), tight divisions
        centre = int(rng.integers(*intops.signed_range(in_bits), endpoint=True))
        tokens = np.clip(centre + rng.integers(-spread, spread, (2, d), endpoint=True), *intops.signed_range(in_bits))
        gain = rng.integers(*intops.signed_range(norm_bits), d, endpoint=True)
        bias = rng.integers(*intops.signed_range(norm_bits), d, endpoint=True)
        eps = int(rng.integers(1, 1 << eps_bits))
        norms.append((eps, gain, bias, tokens))
    got, _ = _run(dut, norms, seed=seed, stall=0.3)
    assert np.array_equal(got, _golden(norms))


@pytest.mark.parametrize("kwargs, name", [
    (dict(dim=0), "dim"), (dict(dim=4, in_bits=1), "in_bits"), (dict(dim=4, norm_bits=25), "norm_bits"),
    (dict(dim=4, eps_bits=0), "eps_bits"), (dict(dim=4, divider="newton"), "divider"),
])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LayerNorm(**kwargs)
