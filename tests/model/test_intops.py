"""The integer operations of the whole-model contract against plain Python integer definitions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model import intops

PROPERTY = settings(max_examples=150, deadline=None)

I31 = st.integers(-(1 << 30), (1 << 30) - 1)


def py_requantize(y: int, m: int, s: int) -> int:
    """round(y * m / 2**s), half up, with Python's exact integers."""
    if s == 0:
        return y * m
    num, den = y * m, 1 << s
    return (2 * num + den) // (2 * den)


@PROPERTY
@given(st.lists(I31, min_size=1, max_size=20), st.integers(1, (1 << 16) - 1), st.integers(0, 30))
def test_requantize_rounds_half_up(ys, m, s):
    got = intops.requantize(np.array(ys, np.int64), m, s)
    assert got.tolist() == [py_requantize(y, m, s) for y in ys]


def test_requantize_ties_go_up_for_negative_values_too():
    assert intops.requantize(np.array([-3, -1, 1, 3, -2]), 1, 1).tolist() == [-1, 0, 1, 2, -1]


@PROPERTY
@given(st.lists(st.integers(-(1 << 40), 1 << 40), min_size=1, max_size=20), st.integers(2, 32))
def test_saturate_clips_to_the_signed_range(xs, bits):
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    assert intops.saturate(np.array(xs, np.int64), bits).tolist() == [min(max(x, lo), hi) for x in xs]


@PROPERTY
@given(st.data())
def test_multithreshold_counts_thresholds_from_both_sides(data):
    c, k = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    hi = np.array(data.draw(st.lists(st.lists(I31, min_size=k, max_size=k), min_size=c, max_size=c)), np.int64)
    lo = np.array(data.draw(st.lists(st.lists(I31, min_size=k, max_size=k), min_size=c, max_size=c)), np.int64)
    y = np.array(data.draw(st.lists(st.lists(I31, min_size=c, max_size=c), min_size=1, max_size=4)), np.int64)
    base = data.draw(st.integers(-3, 3))
    got = intops.multithreshold(y, base, hi, lo)
    want = [[base + sum(v >= h for h in hi[j]) + sum(v <= lw for lw in lo[j]) for j, v in enumerate(row)] for row in y.tolist()]
    assert got.tolist() == want


@PROPERTY
@given(st.lists(st.integers(0, (1 << 62) - 1), min_size=1, max_size=30))
def test_isqrt_is_the_floor_square_root(vs):
    assert intops.isqrt(np.array(vs, np.int64)).tolist() == [math.isqrt(v) for v in vs]


def test_isqrt_extremes_and_refusals():
    edge = [0, 1, 3, 4, (1 << 62) - 1, (1 << 31) ** 2 - 1, ((1 << 31) - 1) ** 2]
    assert intops.isqrt(np.array(edge, np.int64)).tolist() == [math.isqrt(v) for v in edge]
    with pytest.raises(ValueError):
        intops.isqrt(np.array([-1]))
    with pytest.raises(ValueError):
        intops.isqrt(np.array([1 << 62]))
    with pytest.raises(TypeError):
        intops.isqrt(np.array([4.0]))


def py_layer_norm(x: list[int], gain: list[int], bias: list[int], eps: int) -> list[int]:
    d, s = len(x), sum(x)
    u = [d * v - s for v in x]
    sigma = math.isqrt(sum(t * t for t in u) + eps)
    return [(t * g) // sigma + b for t, g, b in zip(u, gain, bias)]


RESIDUAL = st.integers(-(1 << 15), (1 << 15) - 1)
GAIN = st.integers(-(1 << 15) + 1, (1 << 15) - 1)


@PROPERTY
@given(st.data())
def test_layer_norm_matches_the_integer_definition(data):
    d = data.draw(st.integers(1, 64))
    x = data.draw(st.lists(RESIDUAL, min_size=d, max_size=d))
    gain = data.draw(st.lists(GAIN, min_size=d, max_size=d))
    bias = data.draw(st.lists(GAIN, min_size=d, max_size=d))
    eps = data.draw(st.integers(1, 1 << 30))
    got = intops.layer_norm(np.array([x], np.int64), np.array(gain), np.array(bias), eps)
    assert got[0].tolist() == py_layer_norm(x, gain, bias, eps)


def test_layer_norm_of_identical_values_is_its_bias():
    """Variance zero: u = 0 everywhere and sigma = isqrt(eps) >= 1, so the output is exactly the bias."""
    for value in (-(1 << 15), 0, 7, (1 << 15) - 1):
        x = np.full((1, 64), value, np.int64)
        bias = np.arange(64) - 32
        assert intops.layer_norm(x, np.full(64, (1 << 15) - 1), bias, eps=1)[0].tolist() == bias.tolist()


def test_layer_norm_at_the_residual_extremes_stays_within_the_gain():
    x = np.array([[-(1 << 15)] * 32 + [(1 << 15) - 1] * 32], np.int64)
    gain = np.full(64, (1 << 15) - 1)
    out = intops.layer_norm(x, gain, np.zeros(64, np.int64), eps=1)
    assert out[0].tolist() == py_layer_norm(x[0].tolist(), gain.tolist(), [0] * 64, 1)
    assert np.abs(out).max() <= (1 << 15) - 1


def test_layer_norm_is_the_float_layer_norm_to_within_rounding():
    rng = np.random.default_rng(1)
    x = rng.integers(-3000, 3000, size=(20, 64))
    gamma, beta, frac = rng.normal(1.0, 0.2, 64), rng.normal(0, 0.3, 64), 10
    gain = np.floor(gamma * 8 * 2**frac + 0.5).astype(np.int64)
    out = intops.layer_norm(x, gain, np.floor(beta * 2**frac + 0.5).astype(np.int64), eps=1) * 2.0**-frac
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mean) / np.sqrt(var) * gamma + beta
    assert np.abs(out - ref).max() < 0.01


def test_exp_table_is_rounded_exp_down_to_zero():
    table = intops.exp_table(6, 15)
    k = np.arange(len(table))
    assert table[0] == 1 << 15 and table[-1] == 0 and np.all(table[:-1] > 0)
    assert np.all(np.abs(table - np.exp(-k / 64) * 2**15) <= 0.5)
    assert np.all(np.diff(table) <= 0)


def py_softmax_levels(scores: list[int], table: list[int], a: list[list[int]], frac: int) -> list[list[int]]:
    top = max(scores)
    e = [table[min(top - s, len(table) - 1)] for s in scores]
    z = sum(e)
    return [[int(ej * (1 << frac) >= al * z) for ej, al in zip(e, row)] for row in a]


@PROPERTY
@given(st.data())
def test_softmax_levels_match_the_integer_definition(data):
    cols = data.draw(st.integers(1, 24))
    scores = data.draw(st.lists(st.integers(-(1 << 20), 1 << 20), min_size=cols, max_size=cols))
    a = data.draw(st.lists(st.lists(st.integers(0, (1 << 16) + 1), min_size=cols, max_size=cols), min_size=1, max_size=3))
    table = intops.exp_table(6, 15)
    got = intops.softmax_levels(np.array([scores]), table, np.array(a)[:, None, :], 16)
    assert got[:, 0].tolist() == py_softmax_levels(scores, table.tolist(), a, 16)


def test_softmax_levels_at_the_widest_scores():
    """Scores a whole 32-bit range apart: the far ones read the table's final 0, the top one holds everything."""
    table = intops.exp_table(6, 15)
    scores = np.array([[(1 << 31) - 1, -(1 << 31), 0, (1 << 31) - 1]])
    a = np.array([[[1 << 15] * 4], [[(1 << 16) + 1] * 4]])   # softmax >= 0.5, and > 1 (never)
    got = intops.softmax_levels(scores, table, a, 16)
    assert got[:, 0].tolist() == [[1, 0, 0, 1], [0, 0, 0, 0]]


def test_softmax_levels_approximate_the_float_softmax():
    rng = np.random.default_rng(2)
    s = rng.integers(-400, 400, size=(50, 18))
    t = rng.uniform(0.0, 0.3, size=(50, 18))
    a = np.ceil(t * 2**16).astype(np.int64)
    got = intops.softmax_levels(s, intops.exp_table(6, 15), a[None], 16)[0]
    p = np.exp(s / 64 - (s / 64).max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    near = np.abs(p - t) < 2e-3
    assert np.array_equal(got[~near], (p >= t)[~near].astype(np.int64))


def test_argmax_takes_the_lowest_index_on_a_tie():
    assert intops.argmax(np.array([[3, 7, 7, 1], [-5, -5, -6, -9]])).tolist() == [1, 0]


def test_operations_refuse_floats():
    with pytest.raises(TypeError):
        intops.requantize(np.array([0.5]), 1, 1)
    with pytest.raises(TypeError):
        intops.multithreshold(np.array([1]), 0, np.array([[0.5]]), np.array([[0]]))


def test_attention_codes_sum_the_levels_of_each_group():
    table = intops.exp_table(6, 15)
    s = np.array([[0, -64, -128, 5]])
    a = np.array([[[1 << 13] * 4], [[1 << 14] * 4], [[1 << 15] * 4]])
    levels = intops.softmax_levels(s, table, a, 16)
    codes = intops.attention_codes(s, table, a, 16, [1, 2])
    assert codes.tolist() == [levels[0].tolist(), (levels[1] + levels[2]).tolist()]
    with pytest.raises(ValueError, match="sum to the 3 level thresholds"):
        intops.attention_codes(s, table, a, 16, [1, 1])
