"""Compiled kernels of the whole integer program on a CPU (:mod:`host.compiled_program`).

:mod:`host.kernels` computes one engine product at a time behind the
Backend interface: operands come packed in the contract's planes, are
checked, re-read and combined in Python for every call.  This module holds
the kernels that :class:`host.compiled_program.CompiledProgram` chains to
run a whole batch of images: codes made by a threshold (or softmax) kernel
and packed in the same pass, products, requantizers and residual adds,
all in numba, no Python between elements.

**Operands.**  A product operand is one of two forms:

* *planes*, ``uint64``: every group of a single-plane encoding (bipolar,
  unipolar, ternary) as a sign word (bit = value > 0; a unipolar plane's is
  every valid position) and a mask word (bit = value != 0; a bipolar
  plane's is every valid position); bit ``i`` of word ``w`` is element
  ``64 w + i``, tails zero;
* *codes*, ``int64``: the integers themselves, for products with a
  multi-bit encoding (int<b>, uint<b>) on either side.

A product of planes sums, per group pair ``(g, h)`` with coefficient
``c_gh``, ``D = C - 2 P`` over the words, ``C = popcount(m_x & m_y)`` and
``P = popcount(m_x & m_y & (s_x ^ s_y))`` (:mod:`model.golden`'s
primitive), with the two cases the hardware also has: both bipolar,
``D = n - 2 popcount(s_x ^ s_y)``; both unipolar, ``D = popcount(m_x & m_y)``.
A product of codes is the integer dot product.  Both are the exact integers
of :func:`model.golden.layer_output`.

**Layouts.**  A linear layer's input is ``(rows, groups, 2, words)`` (or
``(rows, groups, n)``) with its weights transposed, ``(groups, 2, words,
out)``, so the innermost loop runs over the output columns.  The attention
products are short (T tokens by a head's channels), so their operands keep
the batch innermost: ``(rows, groups, 2, words, heads, images)``, every
loop a vector loop over the images of the batch.  Activations enter a
threshold kernel as ``(images, tokens, heads, head_dim)`` views of any
strides; a linear layer's input is the one-head case of the same kernel.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from host.intkernels import _isqrt, _layer_norm
from host.kernels import _ctpop

#: product modes of a group pair (``modes`` arrays)
BIPOLAR_PAIR, UNIPOLAR_PAIR, SIGNED_PAIR = 0, 1, 2
#: plane kinds of a group (``kind`` arguments)
BIPOLAR, UNIPOLAR, TERNARY = 0, 1, 2


@njit(nogil=True, cache=True, inline="always")
def _row_codes(y, b, t, base, hi_t, lo_t, values, codes):
    """``codes[c] = base + #{k: y >= hi_t[k, c]} + #{k: y <= lo_t[k, c]}`` of row ``(b, t)`` of ``y`` (B, T, H, hd).

    The row is copied first: ``y`` may be any view, the compares then run
    as vector loops over contiguous channels.
    """
    heads, head_dim = y.shape[2], y.shape[3]
    for h in range(heads):
        for cc in range(head_dim):
            values[h * head_dim + cc] = y[b, t, h, cc]
    for c in range(codes.shape[0]):
        codes[c] = base
    for k in range(hi_t.shape[0]):
        for c in range(codes.shape[0]):
            codes[c] += np.int64(values[c] >= hi_t[k, c]) + np.int64(values[c] <= lo_t[k, c])


@njit(nogil=True, cache=True, inline="always")
def _row_shape(y, heads):
    """``(images, tokens, channels, channels a head)`` of ``y`` (B, T, H, hd) split among ``heads``."""
    channels = y.shape[2] * y.shape[3]
    return y.shape[0], y.shape[1], channels, channels // heads


@njit(nogil=True, cache=True)
def threshold_planes(y, base, hi_t, lo_t, kind, group, transposed, out):
    """Multi-threshold codes of ``y`` (B, T, H, hd), packed into planes ``out`` (rows, groups, 2, words, heads, B).

    The codes are :func:`model.intops.multithreshold`'s (``hi_t``, ``lo_t``
    (K, H*hd)); group ``group`` of ``out`` gets them as planes of ``kind``.
    The channels split evenly among ``out``'s heads (one head: a linear
    layer's input, whatever the heads of ``y``): row ``t`` with bits over
    the head's channels, or (``transposed``, the ``V`` of ``A V``) row ``c``
    with bits over the tokens.  Returns the number of codes outside the
    kind's values (the caller refuses them).
    """
    heads = out.shape[4]
    images, tokens, channels, per_head = _row_shape(y, heads)
    values, codes = np.empty(channels, np.int64), np.empty(channels, np.int64)
    signs = np.zeros(channels, np.uint64)
    masks = np.zeros(channels, np.uint64)
    # a code's bits: sign = v > 0 (always 1 for unipolar), mask = v != 0 (always 1 for bipolar)
    sign_always, mask_always = np.uint64(kind == UNIPOLAR), np.uint64(kind == BIPOLAR)
    low, zero_bad = np.int64(-1) + np.int64(kind == UNIPOLAR), np.int64(kind == BIPOLAR)  # the kind's values
    bad = 0
    for b in range(images):
        for t in range(tokens):
            _row_codes(y, b, t, base, hi_t, lo_t, values, codes)
            for c in range(channels):
                v = codes[c]
                bad += np.int64(v > 1) + np.int64(v < low) + (np.int64(v == 0) & zero_bad)
            if transposed:  # one bit of each channel's row; a word is stored when full
                bit = np.uint64(t % 64)
                for c in range(channels):
                    signs[c] |= (np.uint64(codes[c] > 0) | sign_always) << bit
                    masks[c] |= (np.uint64(codes[c] != 0) | mask_always) << bit
                if t % 64 == 63 or t == tokens - 1:
                    for h in range(heads):
                        for cc in range(per_head):
                            c = h * per_head + cc
                            out[cc, group, 0, t // 64, h, b] = signs[c]
                            out[cc, group, 1, t // 64, h, b] = masks[c]
                            signs[c] = 0
                            masks[c] = 0
                continue
            for h in range(heads):
                for w in range(out.shape[3]):
                    sign = np.uint64(0)
                    mask = np.uint64(0)
                    first = h * per_head + 64 * w
                    for i in range(min(64, per_head - 64 * w)):
                        sign |= (np.uint64(codes[first + i] > 0) | sign_always) << np.uint64(i)
                        mask |= (np.uint64(codes[first + i] != 0) | mask_always) << np.uint64(i)
                    out[t, group, 0, w, h, b] = sign
                    out[t, group, 1, w, h, b] = mask
    return bad


@njit(nogil=True, cache=True, inline="always")
def _valid_word(n, w):
    """The valid positions of word ``w`` of an ``n``-long row."""
    used = min(64, n - 64 * w)
    return np.uint64(0xFFFFFFFFFFFFFFFF) if used >= 64 else (np.uint64(1) << np.uint64(used)) - np.uint64(1)


@njit(nogil=True, cache=True, inline="always")
def _bits_at(words, start, count):
    """Bits ``start .. start + count - 1`` (count <= 64) of a row of words, as one word."""
    w, offset = start // 64, np.uint64(start % 64)
    v = words[w] >> offset
    if offset and w + 1 < words.shape[0]:
        v |= words[w + 1] << (np.uint64(64) - offset)
    return v & _valid_word(count, 0)


def _word_compare(op: str, scaled: bool = False):
    """An intrinsic ``(a, a0, b, b0) -> uint64``: bit ``i`` is ``a[a0 + i] op b[b0 + i]``, for i < 64.

    ``a`` and ``b`` are contiguous 1-d integer arrays with 64 entries from
    the offsets (the callers pad to whole words).  The 64 compares are one
    LLVM vector compare whose 64 result bits are the word itself: on
    AVX-512 a few compares into mask registers, where a loop of shifts and
    ORs costs several instructions an element.  Of equal widths the vectors
    hold the most lanes; a narrower side is sign-extended.  ``scaled``:
    ``(a, a0, b, b0, s)`` compares ``a`` with ``b * s`` (int64: the
    LayerNorm's bounds times sigma, :func:`_norm_words`).

    A vector load of values stored just before can stall (the stores are
    not forwarded to it): the LayerNorm kernels fill a block of rows, then
    compare them (10% faster here than row by row).
    """
    def typed(a, b):
        arrays = (a, b)
        if not all(isinstance(t, types.Array) and t.ndim == 1 and t.layout == "C" and isinstance(t.dtype, types.Integer)
                   and t.dtype.signed for t in arrays):
            return None
        width = 64 if scaled else max(t.dtype.bitwidth for t in arrays)

        def codegen(context, builder, signature, args):
            lanes = ir.VectorType(ir.IntType(width), 64)

            def vector(array_type, array, offset):
                data = context.make_array(array_type)(context, builder, array).data
                bits = array_type.dtype.bitwidth
                pointer = builder.bitcast(builder.gep(data, [offset]), ir.VectorType(ir.IntType(bits), 64).as_pointer())
                v = builder.load(pointer, align=bits // 8)
                return v if bits == width else builder.sext(v, lanes)

            x, y = vector(signature.args[0], args[0], args[1]), vector(signature.args[2], args[2], args[3])
            if scaled:
                one = builder.insert_element(ir.Constant(lanes, ir.Undefined), args[4], ir.Constant(ir.IntType(32), 0))
                y = builder.mul(y, builder.shuffle_vector(one, ir.Constant(lanes, ir.Undefined),
                                                          ir.Constant(ir.VectorType(ir.IntType(32), 64), [0] * 64)))
            return builder.bitcast(builder.icmp_signed(op, x, y), ir.IntType(64))

        return codegen

    if scaled:
        @intrinsic
        def compare(typingctx, a, a0, b, b0, s):
            codegen = typed(a, b)
            return None if codegen is None else (types.uint64(a, a0, b, b0, types.int64), codegen)
    else:
        @intrinsic
        def compare(typingctx, a, a0, b, b0):
            codegen = typed(a, b)
            return None if codegen is None else (types.uint64(a, a0, b, b0), codegen)

    return compare


_ge_bits, _lt_bits = _word_compare(">="), _word_compare("<")
_ge_scaled_bits, _lt_scaled_bits = _word_compare(">=", scaled=True), _word_compare("<", scaled=True)
#: rows a LayerNorm kernel fills before it compares them (:func:`_word_compare`)
_BLOCK = 16


@njit(nogil=True, cache=True, inline="always")
def _compare_words(src, above, below, channels, kind, signs, masks):
    """Sign and mask words of one row ``src`` (padded to whole words) of a monotone threshold set; see :func:`compare_rows`.

    ``src`` takes the bounds' dtype where it can (:func:`compare_bounds`): then the compares fill the most vector lanes.
    """
    sign_always, mask_always = np.uint64(kind == UNIPOLAR), np.uint64(kind == BIPOLAR)
    for w in range(signs.shape[0]):
        up = _ge_bits(src, 64 * w, above, 64 * w)
        valid = _valid_word(channels, w)
        signs[w] = up | (valid * sign_always)
        masks[w] = up | _lt_bits(src, 64 * w, below, 64 * w) | (valid * mask_always)


@njit(nogil=True, cache=True, inline="always")
def _store_heads(signs, masks, b, t, channels, group, out):
    """A row's words split among ``out``'s heads: row ``t`` of image ``b``, bits over each head's channels."""
    heads, words = out.shape[4], out.shape[3]
    per_head = channels // heads
    if heads == 1:
        for w in range(words):
            out[t, group, 0, w, 0, b] = signs[w]
            out[t, group, 1, w, 0, b] = masks[w]
        return
    if 64 % per_head == 0:  # whole heads a word (16 or 32 channels): shifts
        per_word = 64 // per_head
        keep = _valid_word(per_head, 0)
        for h in range(heads):
            shift = np.uint64((h % per_word) * per_head)
            out[t, group, 0, 0, h, b] = (signs[h // per_word] >> shift) & keep
            out[t, group, 1, 0, h, b] = (masks[h // per_word] >> shift) & keep
        return
    for h in range(heads):
        for w in range(words):
            count = min(64, per_head - 64 * w)
            out[t, group, 0, w, h, b] = _bits_at(signs, h * per_head + 64 * w, count)
            out[t, group, 1, w, h, b] = _bits_at(masks, h * per_head + 64 * w, count)


@njit(nogil=True, cache=True, inline="always")
def _row_order(k, tokens, out):
    """``(image, token)`` of the ``k``-th row a compare kernel visits for ``out``.

    Rows in memory order for a linear layer's input (one head: ``out`` is
    ``(images, tokens, ...)`` underneath, the source rows too); tokens
    outer, images inner for the attention operands, whose images are
    innermost: then consecutive stores are neighbours.
    """
    if out.shape[4] == 1:
        return k // tokens, k % tokens
    images = out.shape[5]
    return k % images, k // images


@njit(nogil=True, cache=True)
def compare_rows(y, col0, channels, tokens, above, below, kind, group, out):
    """:func:`threshold_planes` of a monotone threshold set whose ``lo`` never counts, by compares.

    Such a code is ``base + #{k: y >= hi_k}``, so its plane bits are
    ``sign = y >= above`` (code > 0) and ``mask = y < below or y >= above``
    (code != 0); ``above`` and ``below`` come from :func:`compare_bounds`,
    padded to whole words where they never pass, so the bit loops have a
    fixed length and vectorize.  ``y`` holds rows (B*T, C), the set's
    ``channels`` from ``col0``; the bits go to row ``t`` of ``out``.  Each
    row is copied into a padded row of the bounds' dtype first.
    """
    src = np.zeros(above.shape[0], above.dtype)
    signs = np.empty(above.shape[0] // 64, np.uint64)
    masks = np.empty(above.shape[0] // 64, np.uint64)
    for k in range(y.shape[0]):
        b, t = _row_order(k, tokens, out)
        r = b * tokens + t
        for c in range(channels):
            src[c] = y[r, col0 + c]
        _compare_words(src, above, below, channels, kind, signs, masks)
        _store_heads(signs, masks, b, t, channels, group, out)


@njit(nogil=True, cache=True)
def norm_compare(x, gain, eps, tokens, above, below, kind, group, out):
    """:func:`compare_rows` of the LayerNorm of rows ``x`` (B*T, d), folded into integer compares.

    With ``u = d x - S``, ``sigma = isqrt(sum u**2 + eps)`` and LayerNorm
    ``floor(u g / sigma) + bias`` (:func:`model.intops.layer_norm`),
    ``out >= A`` holds exactly when ``u g >= (A - bias) sigma`` (``sigma >
    0``, ``A`` an integer), so no division and no float is needed:
    ``above`` and ``below`` here are the bounds less the bias, clipped to
    ``±(max|g| + 1)`` (:func:`norm_bounds`); the padding never passes.
    """
    lhs, sigmas, signs, masks = _norm_work(above)
    for k0 in range(0, x.shape[0], _BLOCK):
        rows = min(_BLOCK, x.shape[0] - k0)
        for q in range(rows):
            b, t = _row_order(k0 + q, tokens, out)
            sigmas[q] = _norm_stats(x[b * tokens + t], gain, eps, lhs[q])
        _norm_block_words(lhs, sigmas, rows, k0, tokens, above, below, kind, group, x.shape[1], signs, masks, out)


@njit(nogil=True, cache=True)
def residual_norm_compare(r, y, multiplier, shift, bias, low, high, gain, eps, tokens, above, below, kind, group, out):
    """:func:`residual_add` then :func:`norm_compare`, row by row: each row of ``r`` is normalized while still in the caches."""
    lhs, sigmas, signs, masks = _norm_work(above)
    for k0 in range(0, r.shape[0], _BLOCK):
        rows = min(_BLOCK, r.shape[0] - k0)
        for q in range(rows):
            b, t = _row_order(k0 + q, tokens, out)
            row, added = r[b * tokens + t], y[b * tokens + t]
            for c in range(r.shape[1]):
                row[c] = min(max(row[c] + _requantized(np.int64(added[c]), multiplier, shift) + bias[c], low), high)
            sigmas[q] = _norm_stats(row, gain, eps, lhs[q])
        _norm_block_words(lhs, sigmas, rows, k0, tokens, above, below, kind, group, r.shape[1], signs, masks, out)


@njit(nogil=True, cache=True, inline="always")
def _norm_work(above):
    """The work arrays of the LayerNorm compares: a block's ``u g`` rows and sigmas, a row's sign and mask words."""
    return (np.zeros((_BLOCK, above.shape[0]), np.int64), np.empty(_BLOCK, np.int64),
            np.empty(above.shape[0] // 64, np.uint64), np.empty(above.shape[0] // 64, np.uint64))


@njit(nogil=True, cache=True, inline="always")
def _norm_stats(row, gain, eps, lhs):
    """One row's LayerNorm terms: ``u g`` into ``lhs``, and ``sigma`` returned (see :func:`norm_compare`)."""
    d = row.shape[0]
    total = np.int64(0)
    for c in range(d):
        total += row[c]
    v = np.int64(eps)
    for c in range(d):
        u = d * row[c] - total
        lhs[c] = u * gain[c]
        v += u * u
    return _isqrt(v)


@njit(nogil=True, cache=True, inline="always")
def _norm_block_words(lhs, sigmas, rows, k0, tokens, above, below, kind, group, d, signs, masks, out):
    """The bits of a block's rows: ``u g >= above sigma`` and ``u g < below sigma``, stored like :func:`compare_rows`'s."""
    sign_always, mask_always = np.uint64(kind == UNIPOLAR), np.uint64(kind == BIPOLAR)
    for q in range(rows):
        b, t = _row_order(k0 + q, tokens, out)
        for w in range(signs.shape[0]):
            up = _ge_scaled_bits(lhs[q], 64 * w, above, 64 * w, sigmas[q])
            valid = _valid_word(d, w)
            signs[w] = up | (valid * sign_always)
            masks[w] = up | _lt_scaled_bits(lhs[q], 64 * w, below, 64 * w, sigmas[q]) | (valid * mask_always)
        _store_heads(signs, masks, b, t, d, group, out)


def norm_bounds(above: np.ndarray, below: np.ndarray, gain: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`compare_bounds` of a LayerNorm's output as :func:`norm_compare` takes them, or None when they could overflow.

    ``|u g / sigma| <= max|g| = G``, so a bound past ``G + 1`` (after the
    bias) decides nothing more: clipped there, ``(G + 1) sigma`` stays below
    2**62 while ``G + 1 < 2**31`` (``sigma < 2**31``: the program's bounds
    keep ``sum u**2 + eps`` below 2**62).
    """
    top = int(np.abs(gain).max(initial=0)) + 1
    if top >= 1 << 31:
        return None
    d = len(bias)
    pad = np.zeros(len(above), np.int64)
    pad[:d] = bias
    clip = (lambda v: np.clip(v.astype(object) - pad.astype(object), -top, top).astype(np.int64))  # noqa: E731 - no int64 wrap
    return clip(above), clip(below)


@njit(nogil=True, cache=True)
def compare_tokens(y, above, below, kind, group, out):
    """:func:`compare_rows` of an ``A V`` output ``y`` (T, head_dim, H, B), the batch innermost.

    The compares run in ``y``'s own layout, a vector loop over the images
    per channel, each channel's bit ORed into its word of every image; the
    words go to row ``t`` of ``out`` once the token's channels are done.
    """
    tokens, head_dim, heads, images = y.shape
    out_heads, words = out.shape[4], out.shape[3]
    per_head = heads * head_dim // out_heads
    sign_always, mask_always = np.uint64(kind == UNIPOLAR), np.uint64(kind == BIPOLAR)
    signs = np.empty((out_heads, words, images), np.uint64)
    masks = np.empty((out_heads, words, images), np.uint64)
    for t in range(tokens):
        for hh in range(out_heads):
            for w in range(words):
                valid = _valid_word(per_head, w)
                signs[hh, w] = valid * sign_always
                masks[hh, w] = valid * mask_always
        for h in range(heads):
            for cc in range(head_dim):
                c = h * head_dim + cc
                hh, at = c // per_head, c % per_head
                bit, a, low = np.uint64(at % 64), above[c], below[c]
                row, s, m = y[t, cc, h], signs[hh, at // 64], masks[hh, at // 64]
                for b in range(images):
                    up = np.uint64(row[b] >= a)
                    s[b] |= up << bit
                    m[b] |= (up | np.uint64(row[b] < low)) << bit
        for hh in range(out_heads):
            for w in range(words):
                for b in range(images):
                    out[t, group, 0, w, hh, b] = signs[hh, w, b]
                    out[t, group, 1, w, hh, b] = masks[hh, w, b]


@njit(nogil=True, cache=True)
def compare_columns(y, col0, channels, tokens, above, below, kinds, out):
    """:func:`compare_rows` with the bits over the tokens (the ``V`` of ``A V``), every group at once.

    Group ``g`` has ``above[g]``, ``below[g]`` and plane kind ``kinds[g]``;
    channel ``c`` of head ``h`` becomes row ``c`` of ``out``'s head ``h``,
    token ``t`` its bit ``t``.  The words fill per image, channels
    innermost, and go out once full, images innermost.
    """
    groups, images = kinds.shape[0], y.shape[0] // tokens
    heads = out.shape[4]
    per_head = channels // heads
    signs = np.zeros((images, groups, channels), np.uint64)
    masks = np.zeros((images, groups, channels), np.uint64)
    for t in range(tokens):
        bit = np.uint64(t % 64)
        for b in range(images):
            row = y[b * tokens + t, col0:col0 + channels]
            for g in range(groups):
                sign_always, mask_always = np.uint64(kinds[g] == UNIPOLAR), np.uint64(kinds[g] == BIPOLAR)
                for c in range(channels):
                    v = row[c]
                    up = np.uint64(v >= above[g, c])
                    signs[b, g, c] |= (up | sign_always) << bit
                    masks[b, g, c] |= (up | np.uint64(v < below[g, c]) | mask_always) << bit
        if t % 64 == 63 or t == tokens - 1:
            for g in range(groups):
                for h in range(heads):
                    for cc in range(per_head):
                        for b in range(images):
                            out[cc, g, 0, t // 64, h, b] = signs[b, g, h * per_head + cc]
                            out[cc, g, 1, t // 64, h, b] = masks[b, g, h * per_head + cc]
            signs[:] = 0
            masks[:] = 0


def compare_bounds(base: int, hi: np.ndarray, lo: np.ndarray, y_bound: int, kind: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(above, below)`` of :func:`compare_rows` for thresholds ``hi``, ``lo`` (channels, K) on ``|y| <= y_bound``, or None.

    None unless the set is monotone there (every channel's ``hi`` sorted,
    every ``lo`` below ``-y_bound``: never counted) and every code it can
    give is a value of plane ``kind`` (so nothing is left to refuse); the
    general kernels compute the others.  Both are clipped to ``[-y_bound,
    y_bound + 1]``, which decides every ``y`` alike, and padded to whole
    64-entry words with ``y_bound + 1`` (above: never reached) and
    ``-y_bound`` (below: never passed); int32 when that range fits, the
    dtype of a product's int32 outputs (:func:`_compare_words`).
    """
    channels, k = hi.shape
    if (k and np.any(np.diff(hi, axis=1) < 0)) or (lo.size and lo.max() >= -y_bound):
        return None
    top, bottom = y_bound + 1, -y_bound
    padded = 64 * -(-channels // 64)

    def column(j: int) -> np.ndarray:
        return np.clip(hi[:, j], bottom, top) if 0 <= j < k else np.full(channels, top if j >= k else bottom, np.int64)

    above, below = np.full(padded, top, np.int64), np.full(padded, bottom, np.int64)
    above[:channels], below[:channels] = column(-base), column(-base - 1)
    low = 0 if kind == UNIPOLAR else -1
    if base < low or base + k > 1 or (kind == BIPOLAR and np.any(below[:channels] < above[:channels])):  # a code outside the kind's values
        return None
    dtype = np.int32 if top < 2**31 else np.int64
    return above.astype(dtype), below.astype(dtype)


@njit(nogil=True, cache=True)
def threshold_codes(y, base, hi_t, lo_t, group, transposed, out):
    """:func:`threshold_planes`'s codes unpacked, into ``out`` (rows, groups, n, heads, B)."""
    heads = out.shape[3]
    images, tokens, channels, per_head = _row_shape(y, heads)
    values, codes = np.empty(channels, np.int64), np.empty(channels, np.int64)
    for b in range(images):
        for t in range(tokens):
            _row_codes(y, b, t, base, hi_t, lo_t, values, codes)
            for h in range(heads):
                for cc in range(per_head):
                    if transposed:
                        out[cc, group, t, h, b] = codes[h * per_head + cc]
                    else:
                        out[t, group, cc, h, b] = codes[h * per_head + cc]


@njit(nogil=True, cache=True, inline="always")
def _softmax_exps(scores, h, i, multiplier, shift, table, frac_bits, e, z):
    """Row ``i`` of head ``h`` of ``scores`` (T, T, H, B): ``e[j, b]`` its exps shifted by ``frac_bits``, ``z[b]`` their sum.

    The scores are requantized (round half up) once, into ``e``; the exps
    come from the table at the distance to the row's largest score.
    """
    last = table.shape[0] - 1
    half = np.int64(1) << (shift - 1) if shift > 0 else np.int64(0)
    cols, images = scores.shape[1], scores.shape[3]
    for j in range(cols):
        for b in range(images):
            e[j, b] = (scores[i, j, h, b] * multiplier + half) >> shift
    for b in range(images):
        z[b] = e[0, b]  # the row's largest score, first
    for j in range(1, cols):
        for b in range(images):
            z[b] = max(z[b], e[j, b])
    for j in range(cols):
        for b in range(images):
            e[j, b] = table[min(z[b] - e[j, b], last)]
    for b in range(images):
        z[b] = 0
    for j in range(cols):
        for b in range(images):
            z[b] += e[j, b]
            e[j, b] <<= frac_bits


@njit(nogil=True, cache=True)
def attention_planes(scores, multiplier, shift, table, thresholds, frac_bits, out):
    """The attention map of ``Q K^T`` (T, T, H, B) as unipolar planes ``out`` (T, levels, 2, words, H, B).

    Per row: requantize (round half up), the integer softmax's exps ``e`` and
    their sum ``Z``, then level ``g``'s bit ``e << frac_bits >= A_g * Z``
    (:func:`model.intops.attention_codes` with one level a group).
    """
    rows, cols, heads, images = scores.shape
    e = np.empty((cols, images), np.int64)
    z = np.empty(images, np.int64)
    word = np.empty(images, np.uint64)
    for h in range(heads):
        for i in range(rows):
            _softmax_exps(scores, h, i, multiplier, shift, table, frac_bits, e, z)
            for g in range(thresholds.shape[0]):
                for w in range(out.shape[3]):
                    valid = np.uint64(0)
                    for b in range(images):
                        word[b] = 0
                    for j in range(64 * w, min(cols, 64 * w + 64)):
                        a = thresholds[g, h, i, j]
                        valid |= np.uint64(1) << np.uint64(j % 64)
                        for b in range(images):
                            word[b] |= np.uint64(e[j, b] >= a * z[b]) << np.uint64(j % 64)
                    for b in range(images):
                        out[i, g, 0, w, h, b] = valid
                        out[i, g, 1, w, h, b] = word[b]


@njit(nogil=True, cache=True)
def attention_codes(scores, multiplier, shift, table, thresholds, frac_bits, group_of_level, out):
    """:func:`attention_planes` as codes ``out`` (T, groups, T, H, B): group ``g`` counts its levels passed."""
    rows, cols, heads, images = scores.shape
    e = np.empty((cols, images), np.int64)
    z = np.empty(images, np.int64)
    for h in range(heads):
        for i in range(rows):
            _softmax_exps(scores, h, i, multiplier, shift, table, frac_bits, e, z)
            for g in range(out.shape[1]):
                for j in range(cols):
                    for b in range(images):
                        out[i, g, j, h, b] = 0
            for level in range(thresholds.shape[0]):
                g = group_of_level[level]
                for j in range(cols):
                    a = thresholds[level, h, i, j]
                    for b in range(images):
                        out[i, g, j, h, b] += np.int64(e[j, b] >= a * z[b])


@njit(nogil=True, cache=True, inline="always")
def _pair_terms(coefs, modes, n, out):
    """``(weight, offset)`` of every group pair: ``D = offset + weight * count`` summed over words, times the coefficient.

    A bipolar pair counts ``s ^ s`` (``D = n - 2 count``), a unipolar pair
    ``m & m`` (``D = count``), any other ``C - 2P`` (``D = count``).  The
    weights take ``out``'s dtype: int32 outputs bound every partial sum
    (:class:`host.compiled_program._Product`), and int32 arithmetic fills
    twice the vector lanes.
    """
    weight = np.empty(coefs.shape, out.dtype)
    offset = np.int64(0)
    for g in range(coefs.shape[0]):
        for k in range(coefs.shape[1]):
            bipolar = modes[g, k] == BIPOLAR_PAIR
            weight[g, k] = coefs[g, k] * (-2 if bipolar else 1)
            offset += coefs[g, k] * n if bipolar else 0
    return weight, offset


@njit(nogil=True, cache=True, inline="always")
def _count(mode, sx, mx, sy, my):
    """One word's count of a plane pair: ``s ^ s`` (bipolar), ``m & m`` (unipolar), else ``C - 2P``.

    In the words' width (int32 counts of uint32 words): no widening in the vector loops.
    """
    if mode == BIPOLAR_PAIR:
        return _ctpop(sx ^ sy)
    if mode == UNIPOLAR_PAIR:
        return _ctpop(mx & my)
    m = mx & my
    p = _ctpop(m & (sx ^ sy))
    return _ctpop(m) - p - p


@njit(nogil=True, cache=True)
def linear_planes(x, w_t, coefs, modes, n, out):
    """``out[i, j] = sum_gh coefs[g, h] D_gh(x[i], w[j])``: x (rows, Gx, 2, words), w_t (Gy, 2, words, out).

    Two rows a pass, so that every weight word loaded serves both (an odd
    last row is computed twice, its twin into a spare row); the first group
    pair and word set the outputs, the others add to them (:func:`_pair_terms`).
    """
    rows, cols = x.shape[0], w_t.shape[3]
    weight, offset = _pair_terms(coefs, modes, n, out)
    spare = np.empty(cols, out.dtype)
    for i0 in range(0, rows, 2):
        i1 = min(i0 + 1, rows - 1)
        o0, o1 = out[i0], (out[i1] if i1 != i0 else spare)
        first = True
        for g in range(x.shape[1]):
            for h in range(w_t.shape[0]):
                mode, c = modes[g, h], weight[g, h]
                for w in range(x.shape[3]):
                    sx0, mx0, sx1, mx1 = x[i0, g, 0, w], x[i0, g, 1, w], x[i1, g, 0, w], x[i1, g, 1, w]
                    sy, my = w_t[h, 0, w], w_t[h, 1, w]
                    if first:
                        for j in range(cols):
                            o0[j] = offset + c * _count(mode, sx0, mx0, sy[j], my[j])
                            o1[j] = offset + c * _count(mode, sx1, mx1, sy[j], my[j])
                        first = False
                    else:
                        for j in range(cols):
                            o0[j] += c * _count(mode, sx0, mx0, sy[j], my[j])
                            o1[j] += c * _count(mode, sx1, mx1, sy[j], my[j])


@njit(nogil=True, cache=True)
def linear_codes(x, w_t, coefs, out):
    """``out[i, j] = sum_gh coefs[g, h] sum_t x[i, g, t] w_t[h, t, j]``: x (rows, Gx, n), w_t (Gy, n, out)."""
    cols = w_t.shape[2]
    for i in range(x.shape[0]):
        o = out[i]
        for j in range(cols):
            o[j] = 0
        for g in range(x.shape[1]):
            for h in range(w_t.shape[0]):
                c = coefs[g, h]
                for t in range(x.shape[2]):
                    v = c * x[i, g, t]
                    row = w_t[h, t]
                    for j in range(cols):
                        o[j] += v * row[j]


@njit(nogil=True, cache=True)
def matmul_planes(x, y, coefs, modes, n, out):
    """``out[i, j, l] = sum_gk coefs[g, k] D_gk(x[i, ..., l], y[j, ..., l])``, batch innermost.

    ``x`` (rows_x, Gx, 2, words, L), ``y`` (rows_y, Gy, 2, words, L),
    ``out`` (rows_x, rows_y, L): ``L`` is heads x images.  One pass over
    the items per group pair and word (:func:`_pair_terms`).
    """
    items = x.shape[4]
    weight, offset = _pair_terms(coefs, modes, n, out)
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            o = out[i, j]
            for l in range(items):
                o[l] = offset
            for g in range(x.shape[1]):
                for k in range(y.shape[1]):
                    mode, c = modes[g, k], weight[g, k]
                    for w in range(x.shape[3]):
                        sx, mx, sy, my = x[i, g, 0, w], x[i, g, 1, w], y[j, k, 0, w], y[j, k, 1, w]
                        for l in range(items):
                            o[l] += c * _count(mode, sx[l], mx[l], sy[l], my[l])


@njit(nogil=True, cache=True)
def matmul_codes(x, y, coefs, out):
    """:func:`matmul_planes` of codes: ``x`` (rows_x, Gx, n, L), ``y`` (rows_y, Gy, n, L)."""
    items = x.shape[3]
    for i in range(x.shape[0]):
        for j in range(y.shape[0]):
            o = out[i, j]
            for l in range(items):
                o[l] = 0
            for g in range(x.shape[1]):
                for k in range(y.shape[1]):
                    c = coefs[g, k]
                    for t in range(x.shape[2]):
                        for l in range(items):
                            o[l] += c * x[i, g, t, l] * y[j, k, t, l]


@njit(nogil=True, cache=True, inline="always")
def _requantized(v, multiplier, shift):
    """:func:`model.intops.requantize` of one value: round half up of ``v * multiplier / 2**shift``."""
    half = np.int64(1) << (shift - 1) if shift > 0 else np.int64(0)
    return (v * multiplier + half) >> shift


@njit(nogil=True, cache=True)
def residual_add(r, y, multiplier, shift, bias, low, high):
    """``r = clip(r + requantize(y, multiplier, shift) + bias, low, high)`` in place; ``r``, ``y`` (rows, d)."""
    for i in range(r.shape[0]):
        for c in range(r.shape[1]):
            v = r[i, c] + _requantized(np.int64(y[i, c]), multiplier, shift) + bias[c]
            r[i, c] = min(max(v, low), high)


@njit(nogil=True, cache=True)
def embed_tokens(raw, patch, weights, coefs, multipliers, shifts, bias, tokens, low, high, out):
    """The residual stream's first value, ``out`` (B*T, d), from raw pixels ``raw`` (B, C, H, W) in one pass.

    Every row starts as its token's constant row (``tokens`` (T, d): the
    class and distillation tokens, the position embedding); the last rows
    of an image, one a patch (row-major, flattened as (C, p, p)), add the
    embedding's bias and, per channel ``ch``, the requantized product of
    the patch's codes with ``weights[ch]`` (Gy, p*p, d) and ``coefs[ch]``
    (Gy,); every row saturates to ``[low, high]`` (what the program's
    ``patch_embed.c*`` and ``embed`` steps compute).
    """
    images, channels, height, width = raw.shape
    across, per = width // patch, patch * patch
    rows, d = tokens.shape
    first = rows - (height // patch) * across
    codes = np.empty(per, np.int64)
    acc = np.empty(d, np.int64)
    for b in range(images):
        for t in range(rows):
            row = out[b * rows + t]
            for c in range(d):
                row[c] = tokens[t, c]
            if t >= first:
                top, left = (t - first) // across * patch, (t - first) % across * patch
                for c in range(d):
                    row[c] += bias[c]
                for ch in range(channels):
                    for i in range(patch):
                        for j in range(patch):
                            codes[i * patch + j] = raw[b, ch, top + i, left + j]
                    acc[:] = 0
                    for h in range(weights.shape[1]):
                        for k in range(per):
                            v = coefs[ch, h] * codes[k]
                            w = weights[ch, h, k]
                            for c in range(d):
                                acc[c] += v * w[c]
                    for c in range(d):
                        row[c] += _requantized(acc[c], multipliers[ch], shifts[ch])
            for c in range(d):
                row[c] = min(max(row[c], low), high)


@njit(nogil=True, cache=True)
def head_logits(r, tokens, token_of_head, gain, norm_bias, eps, weights, coefs, multipliers, shifts, biases, out):
    """Integer logits ``out`` (B, classes) from the residual stream ``r`` (B*T, d) in one pass.

    Head ``k`` reads token ``token_of_head[k]``'s row, normalized by the
    final LayerNorm (``gain``, ``norm_bias``, ``eps``:
    :func:`host.intkernels._layer_norm`), multiplies it with ``weights[k]``
    (Gy, d, classes) and ``coefs[k]`` (Gy,), requantizes it and adds its
    bias; the heads' sums are the logits (the program's ``*.norm``, head
    and ``logits`` steps).
    """
    normalized = np.empty((1, r.shape[1]), np.int64)
    classes = out.shape[1]
    acc = np.empty(classes, np.int64)
    for b in range(out.shape[0]):
        for c in range(classes):
            out[b, c] = 0
        for k in range(token_of_head.shape[0]):
            row = b * tokens + token_of_head[k]
            _layer_norm(r[row:row + 1], gain, norm_bias, eps, normalized)
            acc[:] = 0
            for h in range(weights.shape[1]):
                for i in range(r.shape[1]):
                    v = coefs[k, h] * normalized[0, i]
                    w = weights[k, h, i]
                    for c in range(classes):
                        acc[c] += v * w[c]
            for c in range(classes):
                out[b, c] += _requantized(acc[c], multipliers[k], shifts[k]) + biases[k, c]
