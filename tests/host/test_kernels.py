"""The compiled kernels agree bit for bit with the golden model."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host.kernels import fast_operand_product, fast_plane_products, fast_plane_terms, weighted_and_popcount
from model.golden import WORD_BITS_CHOICES, Encoding, Operand, operand_product, plane_products, plane_terms

ENCODINGS = ("bipolar", "unipolar", "ternary", "int2", "int5", "int8", "uint2", "uint4")
# Word-boundary lengths, and long vectors, besides random ones.
LENGTHS = st.one_of(st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 1000, 1100]), st.integers(1, 300))


def random_values(rng: np.random.Generator, encoding: str, rows: int, n: int) -> np.ndarray:
    """A ``(rows, n)`` matrix of values the encoding can represent."""
    if encoding == "bipolar":
        return rng.choice(np.array([-1, 1]), size=(rows, n))
    lo, hi = Encoding.parse(encoding).value_range
    return rng.integers(lo, hi + 1, size=(rows, n))


@st.composite
def operand_pairs(draw: st.DrawFn, max_rows: int = 70) -> tuple[Operand, Operand, np.ndarray, np.ndarray]:
    """Two operands of random encodings, shared length and word width."""
    ex, ey = draw(st.sampled_from(ENCODINGS)), draw(st.sampled_from(ENCODINGS))
    n, word_bits = draw(LENGTHS), draw(st.sampled_from(WORD_BITS_CHOICES))
    rows_x, rows_y = draw(st.integers(1, max_rows)), draw(st.integers(1, max_rows))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    vx, vy = random_values(rng, ex, rows_x, n), random_values(rng, ey, rows_y, n)
    return Operand.from_values(vx, ex, word_bits), Operand.from_values(vy, ey, word_bits), vx, vy


def assert_same(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype == np.int64
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)


@settings(max_examples=150, deadline=None)
@given(operand_pairs())
def test_products_match_golden(pair: tuple[Operand, Operand, np.ndarray, np.ndarray]) -> None:
    x, y, vx, vy = pair
    assert_same(fast_plane_products(x, y), plane_products(x, y))
    assert_same(fast_operand_product(x, y), operand_product(x, y))
    assert_same(fast_operand_product(x, y), vx @ vy.T)


@settings(max_examples=60, deadline=None)
@given(operand_pairs(max_rows=9), st.data())
def test_plane_terms_match_golden(pair: tuple[Operand, Operand, np.ndarray, np.ndarray], data: st.DataObject) -> None:
    x, y, _, _ = pair
    px, py = data.draw(st.sampled_from(x.planes)), data.draw(st.sampled_from(y.planes))
    for fast, golden in zip(fast_plane_terms(px, py, x.n, x.word_bits), plane_terms(px, py, x.n, x.word_bits)):
        assert_same(fast, golden)


@pytest.mark.parametrize(
    ("ex", "ey", "rows_x", "rows_y", "n"),
    [
        ("bipolar", "bipolar", 67, 600, 200),  # several column tiles, a partial last one, an odd row
        ("bipolar", "bipolar", 600, 5, 1000),  # few y rows: computed transposed
        ("ternary", "int3", 33, 300, 130),
        ("uint4", "int4", 1, 1, 4096),
    ],
)
def test_large_shapes(ex: str, ey: str, rows_x: int, rows_y: int, n: int) -> None:
    rng = np.random.default_rng(rows_x * rows_y + n)
    vx, vy = random_values(rng, ex, rows_x, n), random_values(rng, ey, rows_y, n)
    x, y = Operand.from_values(vx, ex), Operand.from_values(vy, ey)
    assert_same(fast_operand_product(x, y), vx @ vy.T)
    assert_same(fast_plane_products(x, y), plane_products(x, y))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 5), st.integers(0, 2**32 - 1))
def test_weighted_and_popcount(rows_x: int, rows_y: int, words: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**64, size=(rows_x, words), dtype=np.uint64)
    y = rng.integers(0, 2**64, size=(rows_y, words), dtype=np.uint64)
    weight = rng.integers(-9, 10, size=words)
    bias_x, bias_y = rng.integers(-99, 100, size=rows_x), rng.integers(-99, 100, size=rows_y)
    counts = np.bitwise_count(x[:, None, :] & y[None, :, :]).astype(np.int64)
    expected = bias_x[:, None] + bias_y[None, :] + (counts * weight).sum(axis=-1)
    assert_same(weighted_and_popcount(x, y, weight, bias_x, bias_y), expected)


def test_rejects_what_golden_rejects() -> None:
    x = Operand.from_values(np.ones((2, 10), np.int64), "bipolar")
    with pytest.raises(ValueError, match="same length n"):
        fast_operand_product(x, Operand.from_values(np.ones((2, 11), np.int64), "bipolar"))
    with pytest.raises(ValueError, match="word_bits"):
        fast_plane_products(x, Operand.from_values(np.ones((2, 10), np.int64), "bipolar", word_bits=8))
    with pytest.raises(TypeError, match="Operand"):
        fast_operand_product(x, np.ones((2, 10)))
    with pytest.raises(ValueError, match="word_bits"):
        fast_plane_terms(x.planes[0], x.planes[0], 10, word_bits=12)


def test_rejects_malformed_planes() -> None:
    x = Operand.from_values(np.ones((2, 10), np.int64), "bipolar")
    dirty = x.planes[0].sign.copy()
    dirty[0, -1] |= np.uint64(1) << np.uint64(63)  # a bit past n
    with pytest.raises(ValueError, match="past n=10"):
        fast_operand_product(dataclasses.replace(x, planes=(dataclasses.replace(x.planes[0], sign=dirty),)), x)
    narrow = dataclasses.replace(x.planes[0], sign=x.planes[0].sign.astype(np.uint32))
    with pytest.raises(TypeError, match="dtype uint64"):
        fast_plane_terms(narrow, x.planes[0], 10, 64)
    wide = dataclasses.replace(x.planes[0], sign=np.zeros((2, 2), np.uint64))
    with pytest.raises(ValueError, match="1 words per row"):
        fast_plane_terms(wide, x.planes[0], 10, 64)


def test_refuses_malformed_operands_as_golden_does() -> None:
    """Plane kinds, weights and counts that do not match the encoding: the same error as the reference."""
    x = Operand.from_values(np.ones((2, 10), np.int64), "int4", 16)
    t = Operand.from_values(np.ones((2, 10), np.int64), "ternary", 16)
    bad = [
        dataclasses.replace(t, encoding=Encoding("bipolar")),
        dataclasses.replace(x, planes=x.planes[:3]),
        dataclasses.replace(x, planes=x.planes[:3] + (dataclasses.replace(x.planes[3], weight=8),)),
    ]
    for op in bad:
        with pytest.raises(ValueError) as expected:
            operand_product(op, x)
        for fast in (fast_operand_product, fast_plane_products):
            with pytest.raises(ValueError, match=re.escape(str(expected.value))):
                fast(op, x)
