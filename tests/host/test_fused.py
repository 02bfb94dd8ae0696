"""host.fused's kernels against the contract's definitions: products (model.golden), codes (model.intops), packing."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from host import fused
from model import golden, intops
from model.golden import Encoding, Operand

KINDS = {"bipolar": fused.BIPOLAR, "unipolar": fused.UNIPOLAR, "ternary": fused.TERNARY}
RNG = np.random.default_rng(3)


def _values(encoding: str, shape: tuple[int, ...]) -> np.ndarray:
    low = 0 if encoding == "unipolar" else -1
    v = RNG.integers(low, 2, size=shape)
    return np.where(v == 0, 1, v) if encoding == "bipolar" else v


def _planes(values: np.ndarray, encoding: str) -> np.ndarray:
    """Values (rows, n) as host.fused planes (rows, 2, words): sign = v > 0 (unipolar: valid), mask = v != 0 (bipolar: valid)."""
    sign = np.ones_like(values, bool) if encoding == "unipolar" else values > 0
    mask = np.ones_like(values, bool) if encoding == "bipolar" else values != 0
    return np.stack([golden.pack_bits(sign, 64), golden.pack_bits(mask, 64)], axis=1)


PAIRS = [("bipolar", "bipolar"), ("unipolar", "unipolar"), ("unipolar", "bipolar"), ("ternary", "ternary"), ("bipolar", "ternary")]


@pytest.mark.parametrize("ex, ey", PAIRS)
@pytest.mark.parametrize("n", [5, 64, 130])
def test_linear_and_matmul_products_equal_the_golden_layer_output(ex, ey, n):
    x, y = _values(ex, (2, 7, n)), _values(ey, (3, 9, n))   # two x groups, three y groups
    coefs = RNG.integers(-50, 50, size=(2, 3))
    want = golden.layer_output([Operand.from_values(v, ex) for v in x], [Operand.from_values(v, ey) for v in y], coefs)
    modes = np.full((2, 3), {("bipolar", "bipolar"): fused.BIPOLAR_PAIR, ("unipolar", "unipolar"): fused.UNIPOLAR_PAIR}.get(
        (ex, ey), fused.SIGNED_PAIR))
    xp = np.stack([_planes(v, ex) for v in x], axis=1)   # (rows, groups, 2, words)
    yp = np.stack([_planes(v, ey) for v in y], axis=1)
    out = np.empty((7, 9), np.int64)
    fused.linear_planes(xp, np.ascontiguousarray(yp.transpose(1, 2, 3, 0)), coefs, modes, n, out)
    assert np.array_equal(out, want)
    items = np.empty((7, 9, 2), np.int64)   # the same product twice as items of the batch axis
    fused.matmul_planes(np.stack([xp, xp], -1), np.stack([yp, yp], -1), coefs, modes, n, items)
    assert np.array_equal(items[..., 0], want) and np.array_equal(items[..., 1], want)
    if n <= 32:   # uint32 words and int32 outputs, as the compiled program takes short products
        x32, y32 = xp.astype(np.uint32), yp.astype(np.uint32)
        out32, items32 = np.empty((7, 9), np.int32), np.empty((7, 9, 2), np.int32)
        fused.linear_planes(x32, np.ascontiguousarray(y32.transpose(1, 2, 3, 0)), coefs, modes, n, out32)
        fused.matmul_planes(np.stack([x32, x32], -1), np.stack([y32, y32], -1), coefs, modes, n, items32)
        assert np.array_equal(out32, want) and np.array_equal(items32[..., 1], want)


def test_code_products_equal_the_integer_dot_product():
    x, w = RNG.integers(-8, 8, size=(6, 2, 11)), RNG.integers(-128, 128, size=(4, 3, 11))
    coefs = RNG.integers(-9, 9, size=(2, 3))
    want = sum(coefs[g, h] * x[:, g] @ w[:, h].T for g in range(2) for h in range(3))
    out = np.empty((6, 4), np.int64)
    fused.linear_codes(x, np.ascontiguousarray(w.transpose(1, 2, 0)), coefs, out)
    assert np.array_equal(out, want)


def _threshold_set(kind: str, channels: int) -> tuple[int, np.ndarray, np.ndarray]:
    """A monotone set: a sign (two equal thresholds), a step, or a ternary (two sorted ones); lo never counts."""
    hi = np.sort(RNG.integers(-30, 30, size=(channels, 2 if kind != "unipolar" else 1)), axis=1)
    if kind == "bipolar":
        hi[:, 1] = hi[:, 0]
    return (0 if kind == "unipolar" else -1), hi, np.full(hi.shape, -1000, np.int64)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("heads, channels", [(1, 64), (1, 80), (4, 64), (2, 48)])
def test_compares_pack_the_multithreshold_codes(kind, heads, channels):
    tokens, images = 5, 3
    base, hi, lo = _threshold_set(kind, channels)
    y = RNG.integers(-40, 40, size=(images * tokens, channels))
    codes = intops.multithreshold(y, base, hi, lo)                # the definition
    per_head = channels // heads
    words = -(-per_head // 64)
    want = np.zeros((tokens, 1, 2, words, heads, images), np.uint64)
    for h in range(heads):
        packed = _planes(codes[:, h * per_head:(h + 1) * per_head], kind).reshape(images, tokens, 2, words)
        want[:, 0, :, :, h, :] = packed.transpose(1, 2, 3, 0)
    bounds = fused.compare_bounds(base, hi, lo, 40, KINDS[kind])
    out = np.zeros_like(want)
    fused.compare_rows(y, 0, channels, tokens, *bounds, KINDS[kind], 0, out)
    assert np.array_equal(out, want)
    general = np.zeros_like(want)
    bad = fused.threshold_planes(y.reshape(images, tokens, 1, channels), base, np.ascontiguousarray(hi.T),
                                 np.ascontiguousarray(lo.T), KINDS[kind], 0, False, general)
    assert bad == 0 and np.array_equal(general, want)
    if per_head <= 32:   # heads of uint32 words
        out32 = np.zeros(want.shape, np.uint32)
        fused.compare_rows(y, 0, channels, tokens, *bounds, KINDS[kind], 0, out32)
        assert np.array_equal(out32, want)


@njit
def _word_compares(a, a0, b, b0):
    return fused._ge_bits(a, a0, b, b0), fused._lt_bits(a, a0, b, b0)


@njit
def _scaled_word_compares(a, a0, b, b0, s):
    return fused._ge_scaled_bits(a, a0, b, b0, s), fused._lt_scaled_bits(a, a0, b, b0, s)


@pytest.mark.parametrize("a_type, b_type", [(np.int32, np.int32), (np.int64, np.int64), (np.int32, np.int64)])
def test_word_compares_are_the_elementwise_compares(a_type, b_type):
    a_info, b_info = np.iinfo(a_type), np.iinfo(b_type)
    a = RNG.integers(a_info.min, a_info.max, size=130, endpoint=True, dtype=a_type)
    b = RNG.integers(b_info.min, b_info.max, size=130, endpoint=True, dtype=b_type)
    a[:40:3] = b[:40:3].clip(a_info.min, a_info.max)   # equal values too
    for a0, b0 in [(0, 0), (64, 3), (66, 1)]:
        ge, lt = _word_compares(a, a0, b, b0)
        x, y = a[a0:a0 + 64].astype(np.int64), b[b0:b0 + 64].astype(np.int64)
        assert int(ge) == int(golden.pack_bits(x >= y, 64)[0]) and int(lt) == int(golden.pack_bits(x < y, 64)[0])


def test_scaled_word_compares_multiply_the_bound():
    a, b = RNG.integers(-2**40, 2**40, size=70), RNG.integers(-1000, 1000, size=70)
    s = 12345
    a[::5] = b[::5] * s   # equal values too
    ge, lt = _scaled_word_compares(a, 3, b, 6, s)
    x, y = a[3:67], b[6:70] * s
    assert int(ge) == int(golden.pack_bits(x >= y, 64)[0]) and int(lt) == int(golden.pack_bits(x < y, 64)[0])


@pytest.mark.parametrize("channels, head_dim", [(64, 16), (128, 32), (48, 24)])
def test_compare_tokens_equal_compare_rows_and_the_codes(channels, head_dim):
    """An ``A V`` output (T, head_dim, H, B) packed by compare_tokens, as its rows by compare_rows; thresholds past the range clip."""
    tokens, images, heads = 5, 7, channels // head_dim
    base, hi, lo = _threshold_set("ternary", channels)
    hi *= 4   # some thresholds past |y| <= 40: the bounds clip them
    y = RNG.integers(-40, 40, size=(tokens, head_dim, heads, images), endpoint=True).astype(np.int32)
    rows = np.ascontiguousarray(y.transpose(3, 0, 2, 1).reshape(images * tokens, channels))
    bounds = fused.compare_bounds(base, hi, lo, 40, fused.TERNARY)
    assert bounds[0].dtype == np.int32
    words = -(-channels // 64)
    want = np.zeros((tokens, 1, 2, words, 1, images), np.uint64)
    fused.compare_rows(rows, 0, channels, tokens, *bounds, fused.TERNARY, 0, want)
    codes = intops.multithreshold(rows, base, hi, lo).reshape(images, tokens, channels)
    packed = _planes(codes.reshape(-1, channels), "ternary").reshape(images, tokens, 2, words)
    assert np.array_equal(want[:, 0, :, :, 0, :], packed.transpose(1, 2, 3, 0))
    got = np.zeros_like(want)
    fused.compare_tokens(y, *bounds, fused.TERNARY, 0, got)
    assert np.array_equal(got, want)


def test_compare_bounds_refuse_what_compares_cannot_decide():
    base, hi, lo = _threshold_set("ternary", 8)
    assert fused.compare_bounds(base, hi, lo, 40, fused.TERNARY) is not None
    assert fused.compare_bounds(base, hi[:, ::-1], lo, 40, fused.TERNARY) is None            # not sorted
    assert fused.compare_bounds(base, hi, lo, 5000, fused.TERNARY) is None                   # a lo within the input's range
    assert fused.compare_bounds(base, hi, lo, 40, fused.BIPOLAR) is None                     # code 0 possible: not bipolar
    assert fused.compare_bounds(base, hi, lo, 40, fused.UNIPOLAR) is None                    # code -1 possible


def test_the_general_kernel_counts_codes_outside_the_kind():
    y = RNG.integers(-40, 40, size=(1, 4, 1, 8))
    out = np.zeros((4, 1, 2, 1, 1, 1), np.uint64)
    hi = np.full((2, 8), -100, np.int64)   # both levels always pass: code 2, not unipolar
    assert fused.threshold_planes(y, 0, hi, np.full((2, 8), -1000, np.int64), fused.UNIPOLAR, 0, False, out) == 32


def test_the_layernorm_folded_into_compares_equals_layernorm_then_compares():
    d, tokens, images = 64, 4, 3
    x = RNG.integers(-3000, 3000, size=(images * tokens, d))
    gain, bias = RNG.integers(1, 3000, size=d), RNG.integers(-200, 200, size=d)
    base, hi, lo = _threshold_set("bipolar", d)
    hi, lo = hi * 40, lo * 20   # within and below the LayerNorm's range (|out| <= 3200)
    normalized = intops.layer_norm(x, gain, bias, 7)
    bounds = fused.compare_bounds(base, hi, lo, 10_000, fused.BIPOLAR)
    want = np.zeros((tokens, 1, 2, 1, 1, images), np.uint64)
    fused.compare_rows(normalized, 0, d, tokens, *bounds, fused.BIPOLAR, 0, want)
    got = np.zeros_like(want)
    folded = fused.norm_bounds(*bounds, gain, bias)
    fused.norm_compare(x, gain, 7, tokens, *folded, fused.BIPOLAR, 0, got)
    assert np.array_equal(got, want)
    # a residual add first, in the same pass: the stream and the bits of residual_add then norm_compare
    y, added_bias = RNG.integers(-9000, 9000, size=x.shape).astype(np.int32), RNG.integers(-50, 50, size=d)
    stream, fused_stream = x.copy(), x.copy()
    fused.residual_add(stream, y, 3, 2, added_bias, -4000, 4000)
    fused.norm_compare(stream, gain, 7, tokens, *folded, fused.BIPOLAR, 0, want)
    fused.residual_norm_compare(fused_stream, y, 3, 2, added_bias, -4000, 4000, gain, 7, tokens, *folded, fused.BIPOLAR, 0, got)
    assert np.array_equal(fused_stream, stream) and np.array_equal(got, want)
    assert np.array_equal(stream, np.clip(x + intops.requantize(y, 3, 2) + added_bias, -4000, 4000))


def test_attention_planes_equal_the_attention_codes():
    t, heads, images, levels = 7, 2, 3, 3
    scores = RNG.integers(-500, 500, size=(images, heads, t, t))
    table = intops.exp_table(6, 15)
    thresholds = RNG.integers(1000, 30000, size=(levels, heads, t, t))
    want = intops.attention_codes(intops.requantize(scores, 3, 2), table, thresholds, 16, [1] * levels)  # (levels, B, H, T, T)
    out = np.zeros((t, levels, 2, 1, heads, images), np.uint64)
    fused.attention_planes(np.ascontiguousarray(scores.transpose(2, 3, 1, 0)), 3, 2, table, thresholds, 16, out)
    for g in range(levels):
        mask = want[g].transpose(2, 0, 1, 3)  # (T, B, H, T)
        packed = golden.pack_bits(mask, 64)[..., 0]  # (T, B, H)
        assert np.array_equal(out[:, g, 1, 0], packed.transpose(0, 2, 1))
    assert np.all(out[:, :, 0, 0] == (1 << t) - 1)
    out32 = np.zeros(out.shape, np.uint32)
    fused.attention_planes(np.ascontiguousarray(scores.transpose(2, 3, 1, 0)), 3, 2, table, thresholds, 16, out32)
    assert np.array_equal(out32, out)


def test_residual_add_requantizes_adds_and_saturates():
    r, y, bias = RNG.integers(-30000, 30000, size=(5, 8)), RNG.integers(-10**6, 10**6, size=(5, 8)), RNG.integers(-9, 9, size=8)
    want = intops.saturate(r + intops.requantize(y, 77, 9) + bias, 16)
    fused.residual_add(r, y, 77, 9, bias, *intops.signed_range(16))
    assert np.array_equal(r, want)
