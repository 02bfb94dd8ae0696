# amaranth: UnusedElaboratable=no
"""hw.softmax against model.intops.attention_codes: the contract's example, boundary thresholds, far scores, random rows."""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hw.config import ceil_log2
from hw.softmax import SoftmaxLevels, level_words
from hw.streamsim import run_stream
from model import intops
from model.intvit import ATTN_FRAC_BITS, EXP_FRAC_BITS, SCORE_FRAC_BITS

TABLE = intops.exp_table(SCORE_FRAC_BITS, EXP_FRAC_BITS)


def _run(scores, levels, counts, score_bits=24, seed=None, stall=0.0):
    """``scores`` (heads, T, T), ``levels`` (L, heads, T, T): every row through the unit; codes (groups, heads, T, T)."""
    heads, t, _ = scores.shape
    words, per_row = level_words(levels)
    m = Module()
    m.submodules.dut = dut = SoftmaxLevels(score_bits, t, len(TABLE), counts, thresh_addr_bits=ceil_log2(len(words)))
    m.submodules.table = table = Memory(shape=16, depth=len(TABLE), init=[int(e) for e in TABLE])
    m.submodules.thresh = thresh = Memory(shape=17, depth=len(words), init=words)
    wiring.connect(m, table.read_port(), dut.table)
    wiring.connect(m, thresh.read_port(), dut.thresh)
    items = [{"score": int(scores[h, i, j]), "last": j == t - 1, "base": (h * t + i) * per_row}
             for h in range(heads) for i in range(t) for j in range(t)]
    got, cycles = run_stream(m, dut.i, dut.o, items, len(items), seed=seed, stall=stall)
    codes = np.array([[c[g] for g in range(len(counts))] for c in got], np.int64)
    return codes.T.reshape(len(counts), heads, t, t), cycles, dut


def _golden(scores, levels, counts):
    return intops.attention_codes(scores, TABLE, levels, ATTN_FRAC_BITS, counts)


def test_contract_example():
    """Section 12: scores [64, 0, -32], A = 32768 gives [1, 0, 0], A = 8000 gives [1, 1, 1]."""
    scores = np.array([[[64, 0, -32]] * 3])
    levels = np.stack([np.full((1, 3, 3), 32768), np.full((1, 3, 3), 8000)])
    got, cycles, dut = _run(scores, levels, (1, 1))
    assert got[:, 0, 0].tolist() == [[1, 0, 0], [1, 1, 1]]
    assert np.array_equal(got, _golden(scores, levels, (1, 1)))
    assert cycles <= 3 * dut.row_cycles(3) + dut.DRAIN + 3


def test_boundaries_far_scores_and_extreme_thresholds():
    """Thresholds exactly at e*2**16 / Z and one above, 0 and 2**16 + 1, scores past the table's end and a 24-bit span."""
    rng = np.random.default_rng(11)
    heads, t = 2, 6
    lo, hi = intops.signed_range(24)
    scores = rng.integers(-400, 400, (heads, t, t))
    scores[0, 0] = [hi, lo, hi, lo, 0, hi - 1]  # a whole 24-bit range apart: k clamps to the table's end
    scores[0, 1] = 5  # a row of ties: e_j = 2**15 for all
    scores[1, 0] = [0, -64 * 11, -710, -711, -712, 1]
    scores[1, 1] = [0, -1029, -2000, -(1 << 20) - 3, -4096, -3000]  # past the end, not a multiple of the table's size away
    e, z = intops.softmax_exp(scores, TABLE)
    exact = (e << ATTN_FRAC_BITS) // z  # e*2**16 >= A*Z holds for A <= exact, fails for exact + 1
    levels = np.stack([exact, exact + 1, np.zeros_like(exact), np.full_like(exact, (1 << 16) + 1),
                       rng.integers(0, (1 << 16) + 2, exact.shape)])
    for counts in [(1, 1, 1, 1, 1), (2, 3), (5,)]:
        got, _, _ = _run(scores, levels, counts)
        assert np.array_equal(got, _golden(scores, levels, counts)), counts


def test_rows_of_one_and_a_one_word_level_memory():
    """T = 1: e = table[0] = Z, so a level passes exactly when A <= 2**16; one level word (a 0-bit address)."""
    for a, bit in ((1 << 16, 1), ((1 << 16) + 1, 0)):
        scores, levels = np.array([[[-7]]]), np.array([[[[a]]]])
        got, _, _ = _run(scores, levels, (1,))
        assert got.tolist() == [[[[bit]]]] and np.array_equal(got, _golden(scores, levels, (1,)))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1))
def test_random_against_golden_with_back_pressure(seed):
    rng = np.random.default_rng(seed)
    heads, t = int(rng.integers(1, 3)), int(rng.integers(1, 7))
    counts = tuple(int(c) for c in rng.integers(1, 4, int(rng.integers(1, 4))))
    spread = int(rng.choice([8, 200, 2000]))
    scores = rng.integers(-spread, spread, (heads, t, t))
    levels = rng.integers(0, (1 << 16) + 2, (sum(counts), heads, t, t))
    got, _, _ = _run(scores, levels, counts, seed=seed, stall=0.3)
    assert np.array_equal(got, _golden(scores, levels, counts))


def test_rows_come_back_to_back_at_row_cycles():
    """The digits model's rows (T = 18, GSB's three levels): 94 cycles a row, the columns' levels without gaps."""
    rng = np.random.default_rng(4)
    scores = rng.integers(-300, 300, (1, 18, 18))
    levels = rng.integers(0, (1 << 16) + 2, (3, 1, 18, 18))
    got, cycles, dut = _run(scores, levels, (1, 1, 1), score_bits=16)
    assert np.array_equal(got, _golden(scores, levels, (1, 1, 1)))
    assert dut.row_cycles(18) == 94
    assert 18 * 94 <= cycles <= 18 * 94 + dut.DRAIN + 3


def test_level_words_layout():
    levels = np.arange(2 * 1 * 2 * 2).reshape(2, 1, 2, 2)  # A[l, h, i, j] = 4l + 2i + j
    words, per_row = level_words(levels)
    assert per_row == 4 and words == [0, 4, 1, 5, 2, 6, 3, 7]
    with pytest.raises(ValueError, match="levels"):
        level_words(levels[0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(score_bits=1), "score_bits"), (dict(max_len=0), "max_len"), (dict(table_len=1), "table_len"),
    (dict(counts=()), "counts"), (dict(counts=(0,)), "counts"), (dict(frac_bits=25), "frac_bits"),
    (dict(exp_bits=0), "exp_bits"), (dict(threshold_bits=27), "threshold_bits"), (dict(thresh_addr_bits=25), "thresh_addr_bits"),
])
def test_rejects_bad_parameters(kwargs, name):
    args = dict(score_bits=24, max_len=8, table_len=711, counts=(1, 1, 1)) | kwargs
    with pytest.raises(ValueError, match=name):
        SoftmaxLevels(**args)
