# amaranth: UnusedElaboratable=no
"""hw.argmax against model.intops.argmax: random rows, ties (the lowest index wins), extremes, rows of one."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.argmax import Argmax
from hw.streamsim import run_stream
from model import intops
from model.intvit import LOGIT_BITS


def _run(dut, rows, seed=None, stall=0.0):
    items = [{"value": int(v), "last": j == len(row) - 1} for row in rows for j, v in enumerate(row)]
    got, cycles = run_stream(dut, dut.i, dut.o, items, len(rows), seed=seed, stall=stall)
    return [(p.index, p.value) for p in got], cycles


def _golden(rows):
    return [(int(intops.argmax(np.array(row, np.int64))), int(max(row))) for row in rows]


def test_ties_extremes_and_rows_of_one():
    lo, hi = intops.signed_range(LOGIT_BITS)
    rows = [[5, 5, 5], [lo, lo, lo, lo], [hi, hi], [lo, hi, lo, hi], [1], [lo], [hi], [-1, 0, 0, -1],
            [3, 9, 9, 2, 9], [hi - 1, hi, hi - 1], [lo + 1, lo, lo + 1]]
    dut = Argmax(LOGIT_BITS, 10)
    got, _ = _run(dut, rows)
    assert got == _golden(rows)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_against_golden_with_back_pressure(seed):
    rng = np.random.default_rng(seed)
    bits, max_len = int(rng.integers(2, 40)), int(rng.integers(1, 20))
    lo, hi = intops.signed_range(bits)
    span = int(rng.choice([3, hi]))  # narrow values: many ties
    rows = [list(rng.integers(max(lo, -span), min(hi, span), int(rng.integers(1, max_len + 1)), endpoint=True))
            for _ in range(12)]
    dut = Argmax(bits, max_len)
    got, _ = _run(dut, rows, seed=seed, stall=0.3)
    assert got == _golden(rows)


def test_one_value_every_three_cycles():
    rng = np.random.default_rng(0)
    rows = [list(rng.integers(-1000, 1000, 10)) for _ in range(20)]
    dut = Argmax(32, 10)
    got, cycles = _run(dut, rows)
    assert got == _golden(rows)
    assert cycles <= 200 * dut.cycles_per_value + 4


@pytest.mark.parametrize("kwargs, name", [(dict(value_bits=1, max_len=4), "value_bits"), (dict(value_bits=8, max_len=0), "max_len")])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Argmax(**kwargs)
