"""The compiled kernels agree bit for bit with the golden model."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host import kernels
from host.backend import OperandStack
from host.kernels import (
    fast_layer_output,
    fast_operand_product,
    fast_pack,
    fast_plane_products,
    fast_plane_terms,
    fast_stacked_product,
    get_threads,
    prepare,
    set_threads,
    stacked_weighted_and_popcount,
    weighted_and_popcount,
)
from model.golden import WORD_BITS_CHOICES, Encoding, Operand, layer_output, operand_product, plane_products, plane_terms

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
    assert_same(fast_operand_product(prepare(x), prepare(y)), vx @ vy.T)


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


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ENCODINGS), st.sampled_from(ENCODINGS), LENGTHS, st.sampled_from(WORD_BITS_CHOICES),
       st.lists(st.integers(1, 3), min_size=1, max_size=2), st.integers(1, 20), st.integers(1, 20), st.integers(0, 2**32 - 1))
def test_stacked_products_match_golden_item_by_item(ex, ey, n, word_bits, lead, rows_x, rows_y, seed) -> None:
    rng = np.random.default_rng(seed)
    vx = random_values(rng, ex, int(np.prod(lead)) * rows_x, n).reshape(*lead, rows_x, n)
    vy = random_values(rng, ey, int(np.prod(lead)) * rows_y, n).reshape(*lead, rows_y, n)
    out = fast_stacked_product(OperandStack.from_values(vx, ex, word_bits), OperandStack.from_values(vy, ey, word_bits))
    assert out.shape == (*lead, rows_x, rows_y)
    for idx in np.ndindex(*lead):
        assert_same(out[idx], operand_product(Operand.from_values(vx[idx], ex, word_bits), Operand.from_values(vy[idx], ey, word_bits)))


def test_stacked_kernel_splits_among_threads_alike(monkeypatch) -> None:
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2**63, size=(300, 20, 3), dtype=np.uint64)
    y = rng.integers(0, 2**63, size=(300, 17, 3), dtype=np.uint64)
    weight, bx, by = np.array([1, -2, 3]), rng.integers(-9, 9, (300, 20)), rng.integers(-9, 9, (300, 17))
    monkeypatch.setattr(kernels, "_MIN_CHUNK_WORD_PAIRS", 1 << 10)  # small chunks: this product splits
    chunks = []
    kernel = kernels._stacked
    monkeypatch.setattr(kernels, "_stacked", lambda *args: chunks.append(args[-2:]) or kernel(*args))
    threads = get_threads()
    try:
        set_threads(1)
        one = stacked_weighted_and_popcount(x, y, weight, bx, by)
        assert chunks == [(0, 300)]
        set_threads(2)
        assert np.array_equal(one, stacked_weighted_and_popcount(x, y, weight, bx, by))
        split = sorted((int(a), int(b)) for a, b in chunks[1:])
        assert len(split) == 2 * kernels._CHUNKS_PER_THREAD  # every item once, in chunks that tile 0..300
        assert split[0][0] == 0 and split[-1][1] == 300 and all(s[1] == t[0] for s, t in zip(split, split[1:]))
    finally:
        set_threads(threads)
    expected = bx[:, :, None] + by[:, None, :] + sum(
        weight[k] * np.bitwise_count(x[:, :, None, k] & y[:, None, :, k]).astype(np.int64) for k in range(3))
    assert np.array_equal(one, expected)
    with pytest.raises(ValueError, match="threads"):
        set_threads(0)


@pytest.mark.parametrize("weight", [
    [3] * 5 + [-1] * 4 + [2] * 2 + [7] * 9 + [-4] + [5] * 3 + [5, -2, -2, -2, -2, -2, -2, -2],
    [2, 2] + [-3] * 6 + [1],  # a short run first
    [4] * 6,                  # one run, with a two-word pass
    [1, -1, 2],               # only short runs
    [-2] * 4,
])
def test_runs_of_equal_weights_of_every_length(weight):
    """The kernel counts runs of four or more equal weights unweighted; short runs and mixes are exact too."""
    rng = np.random.default_rng(9)
    weight = np.array(weight)
    x = rng.integers(0, 2**64, size=(9, len(weight)), dtype=np.uint64)
    y = rng.integers(0, 2**64, size=(300, len(weight)), dtype=np.uint64)
    bx, by = rng.integers(-50, 50, 9), rng.integers(-50, 50, 300)
    expected = bx[:, None] + by[None, :] + sum(
        int(weight[k]) * np.bitwise_count(x[:, None, k] & y[None, :, k]).astype(np.int64) for k in range(len(weight)))
    assert np.array_equal(weighted_and_popcount(x, y, weight, bx, by), expected)
    assert np.array_equal(weighted_and_popcount(y[:70], x, weight, by[:70], bx), expected.T[:70])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(ENCODINGS), min_size=1, max_size=3), st.lists(st.sampled_from(ENCODINGS), min_size=1, max_size=3),
       LENGTHS, st.sampled_from(WORD_BITS_CHOICES), st.booleans(), st.integers(0, 2**32 - 1))
def test_layer_output_is_one_call_equal_to_golden(enc_x, enc_y, n, word_bits, stacked, seed) -> None:
    """All group pairs with their coefficients in one form equal the golden superposition."""
    rng = np.random.default_rng(seed)
    lead = (2, 3) if stacked else ()
    size = int(np.prod(lead))
    vx = [random_values(rng, e, size * 5, n).reshape(*lead, 5, n) for e in enc_x]
    vy = [random_values(rng, e, size * 4, n).reshape(*lead, 4, n) for e in enc_y]
    coefs = rng.integers(-(2**17), 2**17, size=(len(enc_x), len(enc_y)))
    pack = OperandStack.from_values if stacked else Operand.from_values
    out = fast_layer_output([pack(v, e, word_bits) for v, e in zip(vx, enc_x)], [pack(v, e, word_bits) for v, e in zip(vy, enc_y)], coefs)
    for idx in np.ndindex(*lead):
        expected = layer_output([Operand.from_values(v[idx], e, word_bits) for v, e in zip(vx, enc_x)],
                                [Operand.from_values(v[idx], e, word_bits) for v, e in zip(vy, enc_y)], coefs)
        assert_same(out[idx], expected)


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(ENCODINGS), LENGTHS, st.sampled_from(WORD_BITS_CHOICES), st.lists(st.integers(1, 3), max_size=2),
       st.integers(1, 9), st.integers(0, 2**32 - 1))
def test_fast_pack_is_golden_packing(encoding, n, word_bits, lead, rows, seed) -> None:
    rng = np.random.default_rng(seed)
    values = random_values(rng, encoding, int(np.prod(lead)) * rows, n).reshape(*lead, rows, n)
    planes = fast_pack(values, Encoding.parse(encoding), word_bits)
    for idx in np.ndindex(*lead):
        expected = Operand.from_values(values[idx], encoding, word_bits).planes
        assert len(planes) == len(expected)
        for got, want in zip(planes, expected):
            assert (got.kind, got.weight) == (want.kind, want.weight)
            for a, b in ((got.sign, want.sign), (got.mask, want.mask)):
                assert (a is None and b is None) or (a[idx].dtype == b.dtype and np.array_equal(a[idx], b))


@pytest.mark.parametrize(("encoding", "bad", "message"), [
    ("bipolar", 0, "only -1 and \\+1"), ("ternary", 2, "must lie in"), ("int4", 8, "must lie in"), ("uint3", -1, "must lie in")])
def test_stack_packing_refuses_what_golden_refuses(encoding, bad, message) -> None:
    values = np.ones((2, 3, 70), np.int64)
    values[1, 2, 69] = bad
    with pytest.raises(ValueError, match=message):
        OperandStack.from_values(values, encoding)
    with pytest.raises(TypeError, match="integer"):
        OperandStack.from_values(np.ones((2, 3, 4)) * 0.5, encoding)


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
