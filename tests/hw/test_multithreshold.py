# amaranth: UnusedElaboratable=no
"""hw.multithreshold against model.intops.multithreshold: random, extreme and out-of-range thresholds, GELU-style folds."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.multithreshold import (MultiThreshold, PipelinedMultiThreshold, row_layout, threshold_layout, threshold_rows,
                               threshold_words)
from hw.streamsim import run_stream
from model import intops


UNITS = [MultiThreshold, PipelinedMultiThreshold]


def _run(in_bits, hi, lo, base, values, channels, code_bits=8, seed=None, stall=0.0, unit=MultiThreshold):
    dut = unit(in_bits, hi.shape[0], hi.shape[1], code_bits)
    m = Module()
    m.submodules.dut = dut
    if unit is MultiThreshold:  # a word per channel and level
        mem = Memory(shape=threshold_layout(in_bits), depth=hi.size, init=threshold_words(hi, lo, in_bits))
    else:  # a word per channel
        mem = Memory(shape=row_layout(in_bits, hi.shape[1]), depth=hi.shape[0], init=threshold_rows(hi, lo, in_bits))
    m.submodules.mem = mem
    wiring.connect(m, mem.read_port(), dut.thresh)

    async def setup(ctx):
        ctx.set(dut.base, base)

    items = [{"value": int(v), "channel": int(c)} for v, c in zip(values, channels)]
    got, cycles = run_stream(m, dut.i, dut.o, items, len(items), seed=seed, stall=stall, setup=setup)
    return np.array(got, np.int64), cycles


def _golden(values, channels, base, hi, lo):
    # intops.multithreshold works per channel on the last axis: one value at a time here
    return np.array([intops.multithreshold(np.array([v]), base, hi[c:c + 1], lo[c:c + 1])[0]
                     for v, c in zip(values, channels)], np.int64)


@pytest.mark.parametrize("unit", UNITS)
def test_sign_step_ternary_and_gelu_fold_exhaustive(unit):
    """Every input of a 6-bit range, four channels: a sign, a step, a ternary and a two-sided (GELU) fold."""
    in_bits, y_min, y_max = 6, -32, 31
    below, above = -(1 << 40), 1 << 40  # the export's 'never counts' thresholds, far outside the range
    hi = np.array([[3, 3], [-5, above], [-7, 9], [-3, above]], np.int64)
    lo = np.array([[below, below], [below, below], [below, below], [-25, below]], np.int64)
    bases = [-1, 0, -1, 0]
    values = np.tile(np.arange(y_min, y_max + 1), 4)
    channels = np.repeat(np.arange(4), y_max - y_min + 1)
    for base in sorted(set(bases)):
        got, _ = _run(in_bits, hi, lo, base, values, channels, unit=unit)
        assert np.array_equal(got, _golden(values, channels, base, hi, lo))
    # the GELU fold of the contract's example: 1 for y <= -25 and y >= -3, 0 in between
    got, _ = _run(in_bits, hi, lo, 0, np.arange(y_min, y_max + 1), np.full(64, 3), unit=unit)
    assert np.array_equal(got, ((np.arange(y_min, y_max + 1) <= -25) | (np.arange(y_min, y_max + 1) >= -3)).astype(int))


@pytest.mark.parametrize("unit", UNITS)
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_against_golden_with_back_pressure(unit, seed):
    rng = np.random.default_rng(seed)
    in_bits = int(rng.integers(2, 20))
    channels, levels = int(rng.integers(1, 5)), int(rng.integers(1, 8))
    y_min, y_max = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    # thresholds in and well beyond the input's range (clamped by threshold_words), inputs at the extremes too
    span = 1 << (in_bits + 2)
    hi = np.sort(rng.integers(-span, span, (channels, levels)), axis=1)
    lo = np.sort(rng.integers(-span, span, (channels, levels)), axis=1)
    values = rng.integers(y_min, y_max + 1, 40)
    values[:4] = [y_min, y_max, y_min, y_max]
    values[4:8] = hi[:, 0].clip(y_min, y_max)[rng.integers(0, channels, 4)]
    chans = rng.integers(0, channels, 40)
    base = int(rng.integers(-8, 9))
    code_bits = (2 * levels).bit_length() + 1 + 4
    got, _ = _run(in_bits, hi, lo, base, values, chans, code_bits, seed=seed, stall=0.3, unit=unit)
    assert np.array_equal(got, _golden(values, chans, base, hi, lo))


@pytest.mark.parametrize("unit, per_value, fill", [(MultiThreshold, 5 + 3, 3),
                                                   (PipelinedMultiThreshold, 1, PipelinedMultiThreshold.latency)])
def test_throughput_without_stalls(unit, per_value, fill):
    """One input every K + 3 cycles when both sides are always ready (pipelined: one a cycle)."""
    levels, n = 5, 30
    hi = np.arange(levels)[None, :].repeat(2, 0)
    got, cycles = _run(8, hi, hi - 100, 0, np.arange(n) % 7, np.arange(n) % 2, unit=unit)
    assert np.array_equal(got, _golden(np.arange(n) % 7, np.arange(n) % 2, 0, hi, hi - 100))
    assert cycles <= n * per_value + fill


def test_threshold_words_clamp_keeps_codes():
    hi = np.array([[-(1 << 40), 1 << 40]])
    lo = np.array([[1 << 40, -(1 << 40)]])
    assert threshold_words(hi, lo, 4) == [{"hi": -8, "lo": 7}, {"hi": 8, "lo": -9}]
    assert threshold_rows(np.r_[hi, hi], np.r_[lo, lo], 4) == [{"hi": [-8, 8], "lo": [7, -9]}] * 2
    with pytest.raises(TypeError):
        threshold_words(hi.astype(float), lo, 4)
    with pytest.raises(ValueError, match="shape"):
        threshold_words(hi, lo[:, :1], 4)


@pytest.mark.parametrize("unit", UNITS)
@pytest.mark.parametrize("kwargs, name", [
    (dict(in_bits=1, channels=2, levels=2, code_bits=4), "in_bits"),
    (dict(in_bits=8, channels=0, levels=2, code_bits=4), "channels"),
    (dict(in_bits=8, channels=2, levels=0, code_bits=4), "levels"),
    (dict(in_bits=8, channels=2, levels=4, code_bits=4), "code_bits"),
])
def test_rejects_bad_parameters(unit, kwargs, name):
    with pytest.raises(ValueError, match=name):
        unit(**kwargs)
