"""Property tests of the numeric contract against naive integer arithmetic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from model import golden
from model.golden import Encoding, FixedPoint, Operand

ENCODINGS = ["bipolar", "unipolar", "ternary", "int2", "int4", "int8", "uint3", "uint8"]


def random_values(rng: np.random.Generator, encoding: Encoding, rows: int, n: int) -> np.ndarray:
    lo, hi = encoding.value_range
    values = rng.integers(lo, hi + 1, size=(rows, n))
    if encoding.name == "bipolar":
        values = np.where(values >= 0, 1, -1)
    return values


lengths = st.one_of(st.just(1), st.integers(2, 200), st.sampled_from([63, 64, 65, 127, 129, 1000, 4099]))


@settings(max_examples=150, deadline=None)
@given(
    ex=st.sampled_from(ENCODINGS),
    ey=st.sampled_from(ENCODINGS),
    n=lengths,
    rows_x=st.integers(1, 5),
    rows_y=st.integers(1, 5),
    word_bits=st.sampled_from(golden.WORD_BITS_CHOICES),
    seed=st.integers(0, 2**32 - 1),
)
def test_operand_product_equals_naive_dot(ex, ey, n, rows_x, rows_y, word_bits, seed):
    rng = np.random.default_rng(seed)
    enc_x, enc_y = Encoding.parse(ex), Encoding.parse(ey)
    a = random_values(rng, enc_x, rows_x, n)
    b = random_values(rng, enc_y, rows_y, n)
    x = Operand.from_values(a, enc_x, word_bits)
    y = Operand.from_values(b, enc_y, word_bits)
    expected = np.array([[sum(int(p) * int(q) for p, q in zip(ra, rb)) for rb in b] for ra in a])
    assert np.array_equal(golden.operand_product(x, y), expected)


@settings(max_examples=100, deadline=None)
@given(
    enc=st.sampled_from(ENCODINGS),
    n=lengths,
    rows=st.integers(1, 4),
    word_bits=st.sampled_from(golden.WORD_BITS_CHOICES),
    seed=st.integers(0, 2**32 - 1),
)
def test_encode_pack_round_trip(enc, n, rows, word_bits, seed):
    rng = np.random.default_rng(seed)
    encoding = Encoding.parse(enc)
    values = random_values(rng, encoding, rows, n)
    op = Operand.from_values(values, encoding, word_bits)
    assert len(op.planes) == len(encoding.plane_weights)
    assert np.array_equal(op.to_values(), values)
    for plane in op.planes:
        for words in (plane.sign, plane.mask):
            if words is not None:
                assert words.shape == (rows, golden.words_for(n, word_bits))
                # zero padding past n
                assert np.array_equal(golden.pack_bits(golden.unpack_bits(words, n, word_bits), word_bits), words)


@settings(max_examples=100, deadline=None)
@given(
    n=lengths,
    word_bits=st.sampled_from(golden.WORD_BITS_CHOICES),
    seed=st.integers(0, 2**32 - 1),
)
def test_pack_layout_is_little_endian(n, word_bits, seed):
    bits = np.random.default_rng(seed).integers(0, 2, size=n)
    words = golden.pack_bits(bits, word_bits)
    for i in range(n):
        assert (int(words[i // word_bits]) >> (i % word_bits)) & 1 == bits[i]
    tail = len(words) * word_bits - n
    if tail:
        assert int(words[-1]) >> (word_bits - tail) == 0
    assert np.array_equal(golden.unpack_bits(words, n, word_bits), bits)


def test_plane_terms_affine_correction_bipolar():
    rng = np.random.default_rng(1)
    a = np.where(rng.random((2, 70)) < 0.5, 1, -1)
    b = np.where(rng.random((3, 70)) < 0.5, 1, -1)
    x, y = Operand.from_values(a, "bipolar"), Operand.from_values(b, "bipolar")
    p, c = golden.plane_terms(x.planes[0], y.planes[0], 70, 64)
    assert np.all(c == 70)
    assert np.array_equal(70 - 2 * p, a @ b.T)
    # P is the number of disagreeing positions
    assert np.array_equal(p, (a[:, None, :] != b[None, :, :]).sum(-1))


def test_unipolar_product_is_and_popcount():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 2, (3, 100)), rng.integers(0, 2, (4, 100))
    x, y = Operand.from_values(a, "unipolar"), Operand.from_values(b, "unipolar")
    p, c = golden.plane_terms(x.planes[0], y.planes[0], 100, 64)
    assert np.all(p == 0)
    assert np.array_equal(c, a @ b.T)


@settings(max_examples=300, deadline=None)
@given(
    scale=st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False)),
    bias=st.one_of(st.just(0.0), st.floats(-1e4, 1e4, allow_nan=False, allow_subnormal=False)),
    span=st.integers(0, 300),
    offset=st.integers(-300, 300),
)
def test_threshold_folding_equals_sign_of_affine(scale, bias, span, offset):
    y_min, y_max = offset - span, offset + span
    t, d = golden.fold_threshold(np.array([scale]), np.array([bias]), y_min, y_max)
    ys = np.arange(y_min, y_max + 1, dtype=np.int64)
    folded = golden.apply_threshold(ys[:, None], t, d)[:, 0]
    reference = (scale * ys.astype(np.float64) + bias >= 0).astype(np.uint8)
    assert np.array_equal(folded, reference)


def test_threshold_folding_at_exact_boundaries():
    # root exactly on an integer, on a half, and float64 rounding near it
    scale = np.array([0.5, 0.5, -0.5, 0.1, -0.1, 3.0, 1.0, -1.0])
    bias = np.array([-1.0, -1.25, 1.0, -0.3, 0.3, 0.0, 1e-17, -1e-17])
    t, d = golden.fold_threshold(scale, bias, -50, 50)
    ys = np.arange(-50, 51, dtype=np.int64)[:, None]
    assert np.array_equal(golden.apply_threshold(ys, t, d), (scale * ys + bias >= 0).astype(np.uint8))


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 5000),
    ex=st.sampled_from(ENCODINGS),
    ey=st.sampled_from(ENCODINGS),
    coef=st.integers(-(2**17), 2**17 - 1),
)
def test_accumulator_width_holds_the_extremes(n, ex, ey, coef):
    enc_x, enc_y = Encoding.parse(ex), Encoding.parse(ey)
    bits = golden.layer_accumulator_bits(n, [enc_x], [enc_y], np.array([[coef]]))
    extreme = abs(coef) * n * enc_x.max_abs * enc_y.max_abs
    assert -(2 ** (bits - 1)) <= -extreme and extreme <= 2 ** (bits - 1) - 1
    # and it is the least such width
    assert extreme > 2 ** (bits - 2) - 1 or bits == 1 or extreme == 0


def test_superposed_layer_matches_float_reference():
    rng = np.random.default_rng(3)
    n = 37
    v = rng.normal(size=(5, n))
    groups_x = [Operand.from_values(np.where(v >= 0, 1, -1), "bipolar"),
                Operand.from_values(np.where(v > 1, 1, np.where(v < -1, -1, 0)), "ternary")]
    groups_y = [Operand.from_values(rng.integers(-8, 8, (4, n)), "int4")]
    scales = np.outer([0.3, 0.7], [0.05])
    fmt = FixedPoint.for_scales(scales)
    coefs = fmt.to_fixed(scales)
    y = golden.layer_output(groups_x, groups_y, coefs)
    exact = sum(
        coefs[g, 0] * (gx.to_values() @ groups_y[0].to_values().T) for g, gx in enumerate(groups_x)
    )
    assert np.array_equal(y, exact)
    real = fmt.to_real(y)
    reference = sum(scales[g, 0] * (gx.to_values() @ groups_y[0].to_values().T) for g, gx in enumerate(groups_x))
    assert np.allclose(real, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).max())
    assert np.abs(y).max() < 2 ** (golden.layer_accumulator_bits(n, [g.encoding for g in groups_x], [groups_y[0].encoding], coefs) - 1)


def test_fixed_point_rounding_rule_is_half_up():
    fmt = FixedPoint(frac_bits=1, total_bits=8)
    assert fmt.to_fixed(np.array([0.25, -0.25, 0.75, -0.75])).tolist() == [1, 0, 2, -1]
    with pytest.raises(ValueError, match="does not fit"):
        fmt.to_fixed(np.array([64.0]))


@pytest.mark.parametrize("scales", [[1e-6], [0.3, -0.9], [1000.0], [-(2.0**-20)]])
def test_fixed_point_for_scales_uses_the_range(scales):
    fmt = FixedPoint.for_scales(np.array(scales))
    q = fmt.to_fixed(np.array(scales))
    assert np.abs(q).max() > fmt.max_int // 2  # at least half the range is used


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_clear_errors():
    good = Operand.from_values(np.ones((2, 10), np.int64), "bipolar")
    with pytest.raises(ValueError, match="same length n"):
        golden.operand_product(good, Operand.from_values(np.ones((2, 11), np.int64), "bipolar"))
    with pytest.raises(ValueError, match="same word_bits"):
        golden.operand_product(good, Operand.from_values(np.ones((2, 10), np.int64), "bipolar", 32))
    with pytest.raises(TypeError, match="y must be an Operand"):
        golden.operand_product(good, np.ones((2, 10)))
    with pytest.raises(TypeError, match="bits must be a bool or integer array"):
        golden.pack_bits(np.ones(4, np.float32))
    with pytest.raises(TypeError, match="bits must be a numpy array"):
        golden.pack_bits([1, 0, 1])
    with pytest.raises(ValueError, match="bits must hold only 0 and 1"):
        golden.pack_bits(np.array([0, 2]))
    with pytest.raises(ValueError, match="word_bits must be one of"):
        golden.pack_bits(np.array([0, 1]), word_bits=48)
    with pytest.raises(TypeError, match="word_bits must be an int"):
        golden.pack_bits(np.array([0, 1]), word_bits=64.0)
    with pytest.raises(ValueError, match="must have 2 words"):
        golden.unpack_bits(np.zeros(1, np.uint64), 100)
    with pytest.raises(TypeError, match="words must have dtype uint64"):
        golden.unpack_bits(np.zeros(2, np.int64), 100)
    with pytest.raises(ValueError, match=r"values must lie in \[-8, 7\] for encoding int4"):
        Operand.from_values(np.array([[8]]), "int4")
    with pytest.raises(ValueError, match="only -1 and \\+1"):
        Operand.from_values(np.array([[0, 1]]), "bipolar")
    with pytest.raises(TypeError, match="values must be an integer array"):
        Operand.from_values(np.array([[0.5]]), "ternary")
    with pytest.raises(ValueError, match="values must be a non-empty 2-D array"):
        Operand.from_values(np.array([1, -1]), "bipolar")
    with pytest.raises(ValueError, match="encoding name must be one of"):
        Encoding.parse("quaternary")
    with pytest.raises(ValueError, match="int encoding bits must be in 2..16"):
        Encoding.parse("int40")
    with pytest.raises(ValueError, match="coefs must have shape"):
        golden.layer_output([good], [good], np.ones((2, 1), np.int64))
    with pytest.raises(TypeError, match="coefs must be an integer array"):
        golden.layer_output([good], [good], np.ones((1, 1)))
    with pytest.raises(ValueError, match="n must be >= 1"):
        golden.words_for(0)


def test_threshold_folding_with_a_scale_too_small_for_the_root():
    """-bias/scale overflows to infinity: the bit is constant over the range."""
    tiny = 2.2250738585072014e-308
    for scale, expect in ((tiny, 1), (-tiny, 1)):
        t, d = golden.fold_threshold(np.array([scale]), np.array([4.0]), -3, 3)
        ys = np.arange(-3, 4, dtype=np.int64)
        assert np.all(golden.apply_threshold(ys[:, None], t, d)[:, 0] == expect)
    t, d = golden.fold_threshold(np.array([tiny]), np.array([-4.0]), -3, 3)
    assert np.all(golden.apply_threshold(np.arange(-3, 4)[:, None], t, d)[:, 0] == 0)


# ---------------------------------------------------------------- malformed operands and layer arguments


def _replace_plane(op: Operand, k: int, **fields) -> Operand:
    planes = list(op.planes)
    planes[k] = dataclasses.replace(planes[k], **fields)
    return dataclasses.replace(op, planes=tuple(planes))


def malformed_operands() -> list[tuple[str, Operand, type, str]]:
    """Hand-built operands that break the packing, each with its error type and message."""
    rng = np.random.default_rng(5)
    x = Operand.from_values(rng.integers(-8, 8, (2, 10)), "int4", 8)   # 2 words per row, 6 tail bits
    t = Operand.from_values(rng.integers(-1, 2, (2, 10)), "ternary", 8)
    mask = x.planes[2].mask
    dirty = mask.copy()
    dirty[1, -1] |= 0x80
    dirty_sign = t.planes[0].sign.copy()
    dirty_sign[0, -1] |= 0x04
    extra = np.hstack([mask, np.zeros((2, 1), np.uint8)])
    return [
        ("bit past n in a mask", _replace_plane(x, 2, mask=dirty), ValueError,
         r"planes\[2\].mask has bits set past n=10 \(row 1, last word 0x"),
        ("bit past n in a sign", _replace_plane(t, 0, sign=dirty_sign), ValueError,
         r"planes\[0\].sign has bits set past n=10 \(row 0"),
        ("too few words", _replace_plane(x, 1, mask=mask[:, :1]), ValueError,
         r"planes\[1\].mask must have 2 words per row for n=10, got 1"),
        ("too many words", _replace_plane(x, 1, mask=extra), ValueError,
         r"planes\[1\].mask must have 2 words per row for n=10, got 3"),
        ("words wider than declared", _replace_plane(x, 0, mask=mask.astype(np.uint16)), TypeError,
         r"planes\[0\].mask must have dtype uint8 for word_bits=8, got uint16"),
        ("signed words", _replace_plane(x, 0, mask=mask.astype(np.int8)), TypeError,
         r"planes\[0\].mask must have dtype uint8 for word_bits=8, got int8"),
        ("a plane of another kind", dataclasses.replace(t, encoding=Encoding("bipolar")), ValueError,
         r"planes\[0\] is a ternary plane, encoding bipolar has bipolar planes"),
        ("a ternary plane without mask", _replace_plane(t, 0, mask=None), ValueError,
         r"planes\[0\] is a ternary plane and needs a mask array"),
        ("a unipolar plane with a sign", _replace_plane(x, 0, sign=mask), ValueError,
         r"planes\[0\] is a unipolar plane and has no sign array"),
        ("too few planes", dataclasses.replace(x, planes=x.planes[:3]), ValueError,
         r"must have a tuple of 4 planes for encoding int4, got 3"),
        ("a wrong plane weight", _replace_plane(x, 3, weight=8), ValueError,
         r"planes\[3\] has weight 8, encoding int4 gives it -8"),
        ("planes of different rows", _replace_plane(x, 3, mask=mask[:1]), ValueError,
         r"planes\[3\].mask must have 2 rows, got 1"),
    ]


@pytest.mark.parametrize("case", malformed_operands(), ids=lambda c: c[0])
def test_malformed_operands_are_refused(case):
    _, bad, error, message = case
    good = Operand.from_values(np.ones((3, 10), np.int64), "bipolar", 8)
    for call in (lambda: golden.operand_product(bad, good), lambda: golden.plane_products(good, bad),
                 lambda: golden.layer_output([bad], [good], np.ones((1, 1), np.int64))):
        with pytest.raises(error, match=message):
            call()


def test_coefficients_past_int64_are_refused_not_wrapped():
    x = Operand.from_values(np.ones((1, 4), np.int64), "bipolar")
    coefs = np.array([[1 << 63]], np.uint64)          # int64 would read it as -2^63
    with pytest.raises(ValueError, match=r"coefs\[0, 0\] = 9223372036854775808 does not fit int64"):
        golden.layer_output([x], [x], coefs)
    with pytest.raises(ValueError, match="does not fit int64"):
        golden.superpose(np.ones((1, 1, 2, 2), np.int64), coefs)
    with pytest.raises(TypeError, match="coefs must be an integer array, got dtype bool"):
        golden.superpose(np.ones((1, 1, 2, 2), np.int64), np.ones((1, 1), bool))
    assert golden.layer_output([x], [x], np.array([[3]], np.uint64)).tolist() == [[12]]


def test_sums_wider_than_the_limit_are_refused_not_wrapped():
    """int16 x int16 at -32768 over n = 8 with coefficient -2^31 is exactly -2^64: int64 would return 0."""
    x = Operand.from_values(np.full((1, 8), -32768, np.int64), "int16")
    coefs = np.array([[-(1 << 31)]], np.int64)
    with pytest.raises(ValueError, match="the sum needs a 66-bit accumulator .*at most 62 bits"):
        golden.layer_output([x], [x], coefs)
    with pytest.raises(ValueError, match="66-bit accumulator"):
        golden.superpose(golden.group_products([x], [x]), coefs)
    with pytest.raises(ValueError, match="66-bit accumulator"):
        golden.check_accumulator(8, [x.encoding], [x.encoding], coefs)
    # the widest sum allowed, 2^33 * (2^28 - 1) < 2^61, is computed exactly; one more and it is refused
    fits = np.array([[(1 << 28) - 1]], np.int64)
    assert golden.layer_accumulator_bits(8, [x.encoding], [x.encoding], fits) == golden.ACCUMULATOR_LIMIT_BITS
    assert int(golden.layer_output([x], [x], fits)[0, 0]) == 8 * 32768**2 * ((1 << 28) - 1)
    with pytest.raises(ValueError, match="63-bit accumulator"):
        golden.layer_output([x], [x], fits + 1)


def test_float_thresholds_and_bad_directions_are_refused():
    y = np.array([[0, 1], [2, -3]], np.int64)
    with pytest.raises(TypeError, match="thresholds must be an integer array, got dtype float64"):
        golden.apply_threshold(y, np.array([0.5, 0.5]), np.array([1, 1]))
    with pytest.raises(TypeError, match="thresholds must be a numpy array, got list"):
        golden.apply_threshold(y, [0, 0], np.array([1, 1]))
    with pytest.raises(ValueError, match="directions must be -1 or \\+1, got 0 at index 1"):
        golden.apply_threshold(y, np.array([0, 0]), np.array([1, 0]))
    with pytest.raises(ValueError, match=r"thresholds\[0\] = 9223372036854775808 does not fit int64"):
        golden.apply_threshold(y, np.array([1 << 63, 0], np.uint64), np.array([1, 1]))
    with pytest.raises(ValueError, match=r"one entry per y row, shape \(2,\), got \(3,\) and \(3,\)"):
        golden.check_thresholds(np.zeros(3, np.int64), np.ones(3, np.int64), columns=2)
    assert golden.apply_threshold(y, np.array([1, -2], np.int32), np.array([1, -1], np.int8)).tolist() == [[0, 1], [1, 1]]
