"""The compiled integer steps equal their model.intops definitions, extremes and strided inputs included."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host import intkernels
from model import intops

PROPERTY = settings(max_examples=60, deadline=None)


@PROPERTY
@given(st.integers(1, 70), st.integers(1, 40), st.integers(1, 5), st.integers(-3, 3), st.integers(0, 2**32 - 1))
def test_multithreshold_equals_the_definition(channels, rows, k, base, seed):
    rng = np.random.default_rng(seed)
    hi = rng.integers(-50, 50, size=(channels, k))
    lo = rng.integers(-50, 50, size=(channels, k))
    y = rng.integers(-60, 60, size=(2, rows, channels))
    got = intkernels.multithreshold(y, base, hi, lo)
    assert np.array_equal(got, intops.multithreshold(y, base, hi, lo))
    assert got.dtype == np.int8  # codes that fit int8 come back narrow


def test_multithreshold_reads_a_strided_slice_and_wide_codes():
    rng = np.random.default_rng(0)
    y = rng.integers(-(1 << 40), 1 << 40, size=(3, 7, 30))[..., 5:25]  # a slice of channels, as q of qkv
    hi = np.sort(rng.integers(-(1 << 40), 1 << 40, size=(20, 70)), axis=1)
    lo = hi - (1 << 41)
    got = intkernels.multithreshold(y, 0, hi, lo)
    assert got.dtype == np.int64  # 0..140 does not fit int8
    assert np.array_equal(got, intops.multithreshold(y, 0, hi, lo))


@PROPERTY
@given(st.integers(1, 64), st.integers(1, 30), st.integers(1, 1 << 40), st.integers(0, 2**32 - 1))
def test_layer_norm_equals_the_definition(d, rows, eps, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(1 << 15), 1 << 15, size=(rows, d))
    gain = rng.integers(-(1 << 15) + 1, 1 << 15, size=d)
    bias = rng.integers(-(1 << 15) + 1, 1 << 15, size=d)
    assert np.array_equal(intkernels.layer_norm(x, gain, bias, eps), intops.layer_norm(x, gain, bias, eps))


def test_layer_norm_at_the_extremes():
    """Constant rows (u = 0), rows at the residual's ends and the widest gains: where a float quotient is closest to an integer."""
    gain = np.array([(1 << 15) - 1, -(1 << 15) + 1] * 32)
    x = np.array([[-(1 << 15)] * 32 + [(1 << 15) - 1] * 32, [7] * 64, [-(1 << 15)] + [(1 << 15) - 1] * 63,
                  list(range(-32, 32))], np.int64)
    for eps in (1, 3, 1 << 40):
        assert np.array_equal(intkernels.layer_norm(x, gain, gain, eps), intops.layer_norm(x, gain, gain, eps))


@PROPERTY
@given(st.integers(1, 24), st.integers(1, 5), st.lists(st.integers(1, 3), min_size=1, max_size=3), st.integers(0, 2**32 - 1))
def test_attention_codes_equal_the_definition(cols, rows, counts, seed):
    rng = np.random.default_rng(seed)
    table = intops.exp_table(6, 15)
    scores = rng.integers(-(1 << 20), 1 << 20, size=(2, 3, rows, cols))
    scores[..., 0] = scores[..., -1]  # ties at the top
    thresholds = rng.integers(0, (1 << 16) + 2, size=(sum(counts), 3, rows, cols))
    got = intkernels.attention_codes(scores, table, thresholds, 16, counts)
    assert np.array_equal(got, intops.attention_codes(scores, table, thresholds, 16, counts))


def test_refusals_match_the_definitions():
    y, hi = np.zeros((2, 3), np.int64), np.zeros((3, 1), np.int64)
    for fn in (intops.multithreshold, intkernels.multithreshold):
        with pytest.raises(TypeError, match="y must be an integer"):
            fn(y.astype(float), 0, hi, hi)
    for fn in (intops.layer_norm, intkernels.layer_norm):
        with pytest.raises(ValueError, match="eps must be >= 1"):
            fn(y, hi[:, 0], hi[:, 0], 0)
    table = intops.exp_table(6, 15)
    for fn in (intops.attention_codes, intkernels.attention_codes):
        with pytest.raises(ValueError, match="counts"):
            fn(np.zeros((1, 1, 2, 2), np.int64), table, np.zeros((2, 1, 2, 2), np.int64), 16, [1])
    with pytest.raises(ValueError, match="hi and lo"):
        intkernels.multithreshold(y, 0, np.zeros((2, 1), np.int64), np.zeros((2, 1), np.int64))


def test_layer_norm_with_gains_past_the_float_bound_is_still_exact():
    x = np.array([[3, -5, 9, 1]], np.int64)
    gain = np.array([(1 << 55) + 1, -(1 << 52), 3, 1 << 50])
    assert np.array_equal(intkernels.layer_norm(x, gain, gain, 1), intops.layer_norm(x, gain, gain, 1))
