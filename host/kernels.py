"""Fast compiled plane products, bit-exact with :mod:`model.golden`.

One numba kernel does all the work, a weighted AND-popcount matrix with
rank-1 biases::

    out[i, j] = bias_x[i] + bias_y[j] + sum_k weight[k] * popcount(x[i, k] & y[j, k])

Every term of the contract is such a linear form (``|v|`` is a row's
popcount):

* bipolar x bipolar: ``popcount(a ^ b) = |a| + |b| - 2 popcount(a & b)``,
  so ``P`` is one AND-popcount plus biases, and ``C = n``;
* otherwise, with ``pos = m & s`` and ``neg = m & ~s`` per plane (implicit
  masks are the valid positions, implicit signs all ones, so a unipolar
  plane has no ``neg`` part), the two disjoint halves of
  ``m_x & m_y & (s_x ^ s_y)`` give ``P = A(pos_x, neg_y) + A(neg_x, pos_y)``;
  ``C = A(m_x, m_y)``, or a row popcount as a bias when one mask is implicit.

Forms add up, so a whole operand product ``sum w_k w_j (C_kj - 2 P_kj)`` is a
single kernel call over the word-concatenated plane pairs: no
``(rows_x, rows_y)`` temporaries besides the result.

Operands of any word width are re-read as 64-bit words: the packing is
little endian, so the bytes of narrower words in order are the bytes of the
64-bit packing (zero padded).  Tails past ``n`` must be zero, as
:func:`model.golden.pack_bits` writes them; the kernel relies on it, so the
operands are checked first (:func:`model.golden.check_operand`).

The kernel releases the GIL and runs on a small thread pool rather than
numba's ``parallel=True``: on a machine shared with other jobs, numba's
default OpenMP layer spins at its barriers and ran 5-50x slower in our
measurements (2 cores, one busy with another job), while pool threads block.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from model.golden import (
    Encoding,
    Operand,
    PackedPlane,
    check_length,
    check_pair,
    check_plane,
    check_word_bits,
    valid_mask,
    word_dtype,
    words_for,
)

# Output columns per tile: a tile's two output rows and its strip of y
# (words x 256 x 8 bytes) stay in L1/L2 while the word loop runs.
_TILE_COLS = 256
# Below this many y rows the columns are too few to fill the vector lanes,
# so the product is computed transposed when x has more rows.
_MIN_VECTOR_COLS = 64
# Chunks of tiles per thread, so that a thread slowed by other jobs on the
# machine leaves its share to the others; but no chunk under 2**22 word
# pairs (0.3-0.6 ms on a core).  Handing work to a second thread cost 0.1-0.3
# ms on the 2-core virtual machine we measured (waking an idle virtual CPU):
# products of 1.4M and 4.2M word pairs ran slower on two threads than on one
# with 2**18-word-pair chunks, 8.4M and more ran faster (docs/host.md).
_CHUNKS_PER_THREAD = 4
_MIN_CHUNK_WORD_PAIRS = 1 << 22


@intrinsic
def _ctpop(typingctx, word):
    """``llvm.ctpop`` of a uint64 (an int64) or a uint32 word (an int32).

    LLVM turns it into (vector) VPOPCNTQ or VPOPCNTD where the CPU has
    them: a vector of 32-bit words holds twice the lanes.
    """
    if word not in (types.uint64, types.uint32):
        return None
    bits = word.bitwidth

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(bits)])
        return builder.call(fn, args)

    return (types.int64 if bits == 64 else types.int32)(word), codegen


@njit(nogil=True, cache=True)
def _tiles(x, yt, weight, bias_x, bias_y, out, first, stop):
    """Fill tiles ``first..stop-1`` of ``out``, which has ``x``'s rows rounded up to even.

    ``yt`` is y transposed, ``(words, cols)``.  A tile is two x rows by
    ``_TILE_COLS`` columns: every loaded y word serves both rows, and the
    innermost loop over columns is a plain vector loop (load, and, popcount,
    add) that LLVM vectorizes.  The words of a run of equal weight (a
    segment: a whole plane pair) are counted unweighted, four words a pass:
    their popcounts are summed before the one read-modify-write of the
    tile's counters, and the run's weight multiplies once at its end (a
    64-bit vector multiply is several micro-ops, and the counters' loads and
    stores compete with the popcounts for the core's ports).
    """
    nwords = x.shape[1]
    last_row = x.shape[0] - 1
    col_tiles = (yt.shape[1] + _TILE_COLS - 1) // _TILE_COLS
    acc0 = np.empty(_TILE_COLS, np.int64)
    acc1 = np.empty(_TILE_COLS, np.int64)
    for tile in range(first, stop):
        i = 2 * (tile // col_tiles)
        i1 = min(i + 1, last_row)  # an odd x's last pair computes its row twice
        j0 = (tile % col_tiles) * _TILE_COLS
        out0 = out[i, j0 : j0 + _TILE_COLS]
        out1 = out[i + 1, j0 : j0 + _TILE_COLS]
        by = bias_y[j0 : j0 + _TILE_COLS]
        cols = out0.shape[0]
        bx0, bx1 = bias_x[i], bias_x[i1]
        started = False  # the biases go in with the first run's last pass
        k = 0
        while k < nwords:
            w = weight[k]
            end = k + 1
            while end < nwords and weight[end] == w:
                end += 1
            if end - k < 4:  # a short run: weighted straight into the output
                if not started:
                    for j in range(cols):
                        out0[j] = bx0 + by[j]
                        out1[j] = bx1 + by[j]
                    started = True
                for kk in range(k, end):
                    a0 = x[i, kk]
                    a1 = x[i1, kk]
                    yk = yt[kk, j0 : j0 + _TILE_COLS]
                    for j in range(cols):
                        b = yk[j]
                        out0[j] += w * _ctpop(a0 & b)
                        out1[j] += w * _ctpop(a1 & b)
                k = end
                continue
            # the run's first pass sets the counters, the next ones add to them
            first_pass = True
            while k < end:
                step = 4 if k + 4 <= end else (2 if k + 2 <= end else 1)
                a00, a10 = x[i, k], x[i1, k]
                y0 = yt[k, j0 : j0 + _TILE_COLS]
                if step == 4:
                    a01, a02, a03 = x[i, k + 1], x[i, k + 2], x[i, k + 3]
                    a11, a12, a13 = x[i1, k + 1], x[i1, k + 2], x[i1, k + 3]
                    y1 = yt[k + 1, j0 : j0 + _TILE_COLS]
                    y2 = yt[k + 2, j0 : j0 + _TILE_COLS]
                    y3 = yt[k + 3, j0 : j0 + _TILE_COLS]
                    if first_pass:
                        for j in range(cols):
                            b0, b1, b2, b3 = y0[j], y1[j], y2[j], y3[j]
                            acc0[j] = _ctpop(a00 & b0) + _ctpop(a01 & b1) + _ctpop(a02 & b2) + _ctpop(a03 & b3)
                            acc1[j] = _ctpop(a10 & b0) + _ctpop(a11 & b1) + _ctpop(a12 & b2) + _ctpop(a13 & b3)
                    else:
                        for j in range(cols):
                            b0, b1, b2, b3 = y0[j], y1[j], y2[j], y3[j]
                            acc0[j] += _ctpop(a00 & b0) + _ctpop(a01 & b1) + _ctpop(a02 & b2) + _ctpop(a03 & b3)
                            acc1[j] += _ctpop(a10 & b0) + _ctpop(a11 & b1) + _ctpop(a12 & b2) + _ctpop(a13 & b3)
                elif step == 2:  # never the first pass: a run here has at least four words
                    a01, a11 = x[i, k + 1], x[i1, k + 1]
                    y1 = yt[k + 1, j0 : j0 + _TILE_COLS]
                    for j in range(cols):
                        b0, b1 = y0[j], y1[j]
                        acc0[j] += _ctpop(a00 & b0) + _ctpop(a01 & b1)
                        acc1[j] += _ctpop(a10 & b0) + _ctpop(a11 & b1)
                else:
                    for j in range(cols):
                        b0 = y0[j]
                        acc0[j] += _ctpop(a00 & b0)
                        acc1[j] += _ctpop(a10 & b0)
                first_pass = False
                k += step
            if started:
                for j in range(cols):
                    out0[j] += w * acc0[j]
                    out1[j] += w * acc1[j]
            else:
                for j in range(cols):
                    out0[j] = bx0 + by[j] + w * acc0[j]
                    out1[j] = bx1 + by[j] + w * acc1[j]
                started = True


@njit(nogil=True, cache=True)
def _stacked(x, yt, weight, bias_x, bias_y, out, first, stop):
    """Fill items ``first..stop-1`` of a stack of small products.

    ``x`` (L, rows_x, words), ``yt`` (L, words, rows_y) (y transposed per
    item), biases (L, rows), ``out`` (L, rows_x, rows_y).  The innermost
    loop runs over an item's columns, contiguous in ``yt`` and ``out``.
    """
    nwords = x.shape[2]
    for item in range(first, stop):
        for i in range(x.shape[1]):
            o = out[item, i]
            by = bias_y[item]
            bx = bias_x[item, i]
            for j in range(o.shape[0]):
                o[j] = bx + by[j]
            for k in range(nwords):
                a = x[item, i, k]
                w = weight[k]
                yk = yt[item, k]
                for j in range(o.shape[0]):
                    o[j] += w * _ctpop(a & yk[j])


@njit(nogil=True, cache=True)
def _row_ones(words, out):
    """``out[r]`` = the set bits of row ``r`` of the 2-D uint64 ``words``."""
    for r in range(words.shape[0]):
        total = 0
        for k in range(words.shape[1]):
            total += _ctpop(words[r, k])
        out[r] = total


def _ones(words: np.ndarray) -> np.ndarray:
    """Set bits of each row of a ``(*lead, rows, words)`` uint64 array, int64 ``(*lead, rows)``.

    :func:`model.golden.popcount` in one compiled loop: numpy's per-word
    counts and their sum cost 10-15 us a plane at the DeiT-S shape, a
    tenth of that product's kernel time.
    """
    out = np.empty(words.shape[:-1], np.int64)
    _row_ones(words.reshape(-1, words.shape[-1]), out.reshape(-1))
    return out


_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    """The threads that work beside the calling one."""
    return ThreadPoolExecutor(max(_THREADS - 1, 1), thread_name_prefix="gsbflow-kernel")


def set_threads(threads: int) -> None:
    """Use at most ``threads`` threads per kernel call (default: the CPUs this process may run on)."""
    global _THREADS
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    _THREADS = threads
    _pool.cache_clear()


def get_threads() -> int:
    """The threads a kernel call may use."""
    return _THREADS


def _run_chunks(kernel, args: tuple, items: int, work: int) -> None:
    """``kernel(*args, first, stop)`` over ``0..items-1``, split among threads when ``work`` is large.

    The calling thread works too: it and ``threads - 1`` pool threads take
    the chunks in turn from one shared iterator (``next`` on it holds the
    GIL; the kernel releases it), so a thread slowed by another job on the
    machine takes fewer, and a call pays one hand-off to the pool (tens of
    microseconds) rather than two.
    """
    chunks = min(items, _CHUNKS_PER_THREAD * _THREADS, work // _MIN_CHUNK_WORD_PAIRS)
    if chunks < 2 or _THREADS < 2:
        kernel(*args, 0, items)
        return
    bounds = np.linspace(0, items, chunks + 1).astype(np.int64)
    todo = iter(range(chunks))

    def drain() -> None:
        for c in todo:
            kernel(*args, bounds[c], bounds[c + 1])

    helpers = [_pool().submit(drain) for _ in range(min(_THREADS, chunks) - 1)]
    drain()
    for done in helpers:
        done.result()


def weighted_and_popcount(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias_x: np.ndarray, bias_y: np.ndarray
) -> np.ndarray:
    """``bias_x[i] + bias_y[j] + sum_k weight[k] * popcount(x[i, k] & y[j, k])``, int64.

    ``x`` (rows_x, words) and ``y`` (rows_y, words) are uint64 word matrices,
    ``weight`` has one integer per word, the biases one per row.
    """
    for name, words in (("x", x), ("y", y)):
        if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 2:
            raise TypeError(f"{name} must be a 2-D uint64 numpy array")
    weight, bias_x, bias_y = (np.ascontiguousarray(v, dtype=np.int64) for v in (weight, bias_x, bias_y))
    if y.shape[1] != x.shape[1] or weight.shape != (x.shape[1],):
        raise ValueError(f"x, y and weight must agree on the words: {x.shape}, {y.shape}, {weight.shape}")
    if bias_x.shape != (x.shape[0],) or bias_y.shape != (y.shape[0],):
        raise ValueError(f"bias_x and bias_y must have one entry per row, got {bias_x.shape} and {bias_y.shape}")
    if y.shape[0] < _MIN_VECTOR_COLS and x.shape[0] > y.shape[0]:
        return np.ascontiguousarray(weighted_and_popcount(y, x, weight, bias_y, bias_x).T)
    rows = x.shape[0]
    yt = np.ascontiguousarray(y.T)
    out = np.empty((rows + rows % 2, yt.shape[1]), np.int64)  # whole row pairs; an odd one's extra row is dropped
    tiles = out.shape[0] // 2 * -(-yt.shape[1] // _TILE_COLS)
    args = (np.ascontiguousarray(x), yt, weight, bias_x, bias_y, out)
    _run_chunks(_tiles, args, tiles, out.size * x.shape[1])
    return out[:rows]


def stacked_weighted_and_popcount(
    x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias_x: np.ndarray, bias_y: np.ndarray
) -> np.ndarray:
    """:func:`weighted_and_popcount` of every item of a stack: ``(L, rows_x, rows_y)`` int64.

    ``x`` (L, rows_x, words) and ``y`` (L, rows_y, words) are uint64, the
    biases (L, rows_x) and (L, rows_y); ``weight`` is shared by all items.
    """
    for name, words in (("x", x), ("y", y)):
        if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 3:
            raise TypeError(f"{name} must be a 3-D uint64 numpy array")
    weight, bias_x, bias_y = (np.ascontiguousarray(v, dtype=np.int64) for v in (weight, bias_x, bias_y))
    if y.shape[0] != x.shape[0] or y.shape[2] != x.shape[2] or weight.shape != (x.shape[2],):
        raise ValueError(f"x, y and weight must agree on the items and words: {x.shape}, {y.shape}, {weight.shape}")
    if bias_x.shape != x.shape[:2] or bias_y.shape != y.shape[:2]:
        raise ValueError(f"bias_x and bias_y must have one entry per item and row, got {bias_x.shape} and {bias_y.shape}")
    out = np.empty((x.shape[0], x.shape[1], y.shape[1]), np.int64)
    args = (np.ascontiguousarray(x), np.ascontiguousarray(y.transpose(0, 2, 1)), weight, bias_x, bias_y, out)
    _run_chunks(_stacked, args, x.shape[0], out.size * x.shape[2])
    return out


def _pack_bits(bits: np.ndarray, words: int) -> np.ndarray:
    """Bools ``(*lead, n)`` packed little endian into uint64 words ``(*lead, words)``, tails zero.

    The rows are padded with zeros to whole 64-bit words and packed as one
    flat run by ``np.packbits`` (eight bools a byte, vector code; row by
    row it pays a per-row cost that dominates rows of 16 or 18 bools): the
    bytes of a row in order are those of its little-endian 64-bit words.
    """
    lead, n = bits.shape[:-1], bits.shape[-1]
    if n != 64 * words or not bits.flags.c_contiguous:
        padded = np.zeros(lead + (64 * words,), np.bool_)
        padded[..., :n] = bits
        bits = padded
    packed = np.packbits(bits.reshape(-1), bitorder="little")
    return packed.view("<u8").astype(np.uint64, copy=False).reshape(lead + (words,))


def fast_pack(values: np.ndarray, encoding: Encoding, word_bits: int) -> tuple[PackedPlane, ...] | None:
    """The planes :meth:`model.golden.Operand.from_values` makes, for values ``(*lead, rows, n)``, vectorized.

    Plane arrays are ``(*lead, rows, words_for(n, word_bits))`` in
    ``word_bits`` words, bit for bit :func:`model.golden.pack_bits` of the
    same bits (tested); out-of-range values raise as
    :meth:`~model.golden.Encoding.check_values` does.  ``values`` must be a
    non-empty integer (or bool) array, of any strides.  None on a big-endian
    machine, where the word re-reading below does not hold: pack with
    :mod:`model.golden`.
    """
    if sys.byteorder != "little":
        return None
    word_bits = check_word_bits(word_bits)
    low, high = encoding.value_range
    if values.min() < low or values.max() > high or (encoding.name == "bipolar" and not values.all()):
        encoding.check_values(values)  # raises the contract's error
        raise AssertionError("unreachable: check_values accepted what the packer refused")
    n = values.shape[-1]
    words = words_for(n, 64)
    kind = encoding.plane_kind
    if encoding.name in ("int", "uint"):  # plane p: bit p of the two's complement
        bits = (values.astype(np.int64, copy=False)[..., None, :] >> np.arange(encoding.bits)[:, None]) & 1 != 0
        arrays = list(np.ascontiguousarray(np.moveaxis(_pack_bits(bits, words), -2, 0)))
    else:
        arrays = [_pack_bits(values > 0, words)] if encoding.name in ("bipolar", "ternary") else []
        arrays += [_pack_bits(values != 0, words)] if encoding.name in ("unipolar", "ternary") else []
    if word_bits != 64:  # the bytes of 64-bit little-endian words are those of narrower words, zero padded
        arrays = [np.ascontiguousarray(a.view(np.dtype("<u8")).view(np.dtype(f"<u{word_bits // 8}"))[..., : words_for(n, word_bits)])
                  .astype(word_dtype(word_bits), copy=False) for a in arrays]
    if encoding.name in ("int", "uint"):
        return tuple(PackedPlane(kind, w, None, arrays[i]) for i, w in enumerate(encoding.plane_weights))
    if encoding.name == "ternary":
        return (PackedPlane(kind, 1, arrays[0], arrays[1]),)
    if encoding.name == "bipolar":
        return (PackedPlane(kind, 1, arrays[0], None),)
    return (PackedPlane(kind, 1, None, arrays[0]),)


@lru_cache(maxsize=64)
def _valid64(n: int) -> np.ndarray:
    """:func:`model.golden.valid_mask` in 64-bit words, computed once per length."""
    mask = valid_mask(n, 64)
    mask.flags.writeable = False
    return mask


def _words64(words: np.ndarray, n: int, word_bits: int, name: str = "plane") -> np.ndarray:
    """Check a packed plane array and re-read it as uint64 words ``(*lead, rows, words_for(n, 64))``."""
    if not isinstance(words, np.ndarray) or words.ndim < 2:
        raise TypeError(f"{name} must be a numpy array of packed words (*lead, rows, words)")
    if words.dtype != word_dtype(word_bits):
        raise TypeError(f"{name} must have dtype {np.dtype(word_dtype(word_bits))}, got {words.dtype}")
    if words.shape[-1] != words_for(n, word_bits):
        raise ValueError(f"{name} must have {words_for(n, word_bits)} words per row for n={n}, got {words.shape[-1]}")
    if word_bits == 64:
        out = np.ascontiguousarray(words)
    else:
        as_bytes = np.ascontiguousarray(words.astype(np.dtype(words.dtype).newbyteorder("<"))).view(np.uint8)
        padded = np.zeros(words.shape[:-1] + (8 * words_for(n, 64),), np.uint8)
        padded[..., : as_bytes.shape[-1]] = as_bytes
        out = padded.view("<u8").astype(np.uint64)
    if np.any(out[..., -1] & ~_valid64(n)[-1]):
        raise ValueError(f"{name} has bits set past n={n}; packed tails must be zero")
    return out


class _PlaneWords:
    """One plane as uint64 words: explicit ``sign``/``mask`` (or None), and its ``pos``/``neg`` parts.

    The arrays are ``(*lead, rows, words)``: one plane, or a stack of them.
    """

    def __init__(self, plane: PackedPlane, n: int, word_bits: int, name: str = "plane") -> None:
        self.shape = (plane.sign if plane.sign is not None else plane.mask).shape[:-1]
        self.sign = None if plane.sign is None else _words64(plane.sign, n, word_bits, f"{name}.sign")
        self.mask = None if plane.mask is None else _words64(plane.mask, n, word_bits, f"{name}.mask")
        self._valid = _valid64(n)

    @cached_property
    def pos(self) -> np.ndarray:
        """``m & s``: the +1 positions."""
        if self.sign is None:
            return self.mask
        return (self._valid if self.mask is None else self.mask) & self.sign

    @cached_property
    def neg(self) -> np.ndarray | None:
        """``m & ~s``: the -1 positions; None for unipolar, which has none."""
        if self.sign is None:
            return None
        return (self._valid if self.mask is None else self.mask) & ~self.sign

    @cached_property
    def sign_ones(self) -> np.ndarray:
        """Set bits of each row's sign words (a prepared operand counts them once)."""
        return _ones(self.sign)

    @cached_property
    def mask_ones(self) -> np.ndarray:
        """Set bits of each row's mask words."""
        return _ones(self.mask)


@dataclass(frozen=True)
class _Form:
    """``bias_x[i] + bias_y[j] + sum_s weight_s * A(x_s, y_s)``, A the AND-popcount matrix."""

    bias_x: np.ndarray
    bias_y: np.ndarray
    #: ``(x words, y words, weight)``: the weight one int, or one int per word
    segments: tuple[tuple[np.ndarray, np.ndarray, int | np.ndarray], ...] = ()

    def __add__(self, other: _Form) -> _Form:
        return _Form(self.bias_x + other.bias_x, self.bias_y + other.bias_y, self.segments + other.segments)

    def scaled(self, factor: int) -> _Form:
        """The form times an integer."""
        return _Form(factor * self.bias_x, factor * self.bias_y, tuple((a, b, factor * w) for a, b, w in self.segments))

    def evaluate(self) -> np.ndarray:
        """The ``(*lead, rows_x, rows_y)`` int64 matrix, in one kernel call."""
        if not self.segments:
            return self.bias_x[..., :, None] + self.bias_y[..., None, :]
        weight = np.concatenate([np.broadcast_to(np.asarray(w, np.int64), a.shape[-1:]) for a, _, w in self.segments])
        if len(self.segments) == 1:  # no copy
            x, y = self.segments[0][:2]
        else:
            x = np.concatenate([a for a, _, _ in self.segments], axis=-1)
            y = np.concatenate([b for _, b, _ in self.segments], axis=-1)
        if x.ndim == 2:
            return weighted_and_popcount(x, y, weight, self.bias_x, self.bias_y)
        lead = x.shape[:-2]
        out = stacked_weighted_and_popcount(
            x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:]), weight,
            self.bias_x.reshape(-1, x.shape[-2]), self.bias_y.reshape(-1, y.shape[-2]),
        )
        return out.reshape(lead + out.shape[1:])


def _terms(x: _PlaneWords, y: _PlaneWords, n: int) -> tuple[_Form, _Form]:
    """The forms of ``P`` and ``C`` for one plane pair."""
    zx = np.zeros(x.shape, np.int64)
    zy = np.zeros(y.shape, np.int64)
    if x.mask is None and y.mask is None:  # bipolar x bipolar
        p = _Form(x.sign_ones, y.sign_ones, ((x.sign, y.sign, -2),))
        return p, _Form(zx + n, zy)
    halves = tuple((a, b, 1) for a, b in ((x.pos, y.neg), (x.neg, y.pos)) if a is not None and b is not None)
    p = _Form(zx, zy, halves)
    if x.mask is None:
        c = _Form(zx, y.mask_ones)
    elif y.mask is None:
        c = _Form(x.mask_ones, zy)
    else:
        c = _Form(zx, zy, ((x.mask, y.mask, 1),))
    return p, c


def _dot_form(x: _PlaneWords, y: _PlaneWords, n: int) -> _Form:
    """The form of ``D = C - 2P`` (:func:`model.golden.correct`)."""
    p, c = _terms(x, y, n)
    return c + p.scaled(-2)


def _mask_pairs_form(x: list[_PlaneWords], y: list[_PlaneWords], weights_x: list[int], weights_y: list[int]) -> _Form:
    """The form of ``sum_kj wx_k wy_j D_kj`` when every plane is a mask alone (int, uint, unipolar).

    Such planes have no -1 positions, so ``D_kj = A(m_x_k, m_y_j)``: every
    plane pair is one segment, and all of them are built at once by
    repeating the planes along the words (a 16 x 8-bit product is 128
    pairs: one form each costs more than the kernel).
    """
    mx = np.stack([p.mask for p in x], axis=-2)  # (*lead, rows_x, Kx, words)
    my = np.stack([p.mask for p in y], axis=-2)
    lead_x, lead_y = mx.shape[:-2], my.shape[:-2]
    kx, ky, words = mx.shape[-2], my.shape[-2], mx.shape[-1]
    xs = np.broadcast_to(mx[..., :, None, :], lead_x + (kx, ky, words)).reshape(lead_x + (-1,))
    ys = np.broadcast_to(my[..., None, :, :], lead_y + (kx, ky, words)).reshape(lead_y + (-1,))
    weight = np.repeat(np.outer(weights_x, weights_y).reshape(-1), words)
    return _Form(np.zeros(lead_x, np.int64), np.zeros(lead_y, np.int64), ((xs, ys, weight),))


@dataclass(frozen=True)
class PreparedOperand:
    """An operand with its planes checked and re-read as 64-bit words once: a resident weight's.

    :func:`fast_layer_output` takes it where it takes an
    :class:`~model.golden.Operand` and skips the work every call would
    repeat (the EmulatorBackend prepares what it loads).
    """

    operand: Operand
    words: tuple[_PlaneWords, ...]

    @property
    def n(self) -> int:
        return self.operand.n

    @property
    def word_bits(self) -> int:
        return self.operand.word_bits

    @property
    def planes(self) -> tuple[PackedPlane, ...]:
        return self.operand.planes


def prepare(op: Operand, name: str = "operand") -> PreparedOperand:
    """``op`` checked and re-read as 64-bit words, for repeated products."""
    return PreparedOperand(op, tuple(_operand_words(op, name)))


def _operand_words(op, name: str = "operand") -> list[_PlaneWords]:
    if isinstance(op, PreparedOperand):
        return list(op.words)
    return [_PlaneWords(p, op.n, op.word_bits, f"{name}.planes[{k}]") for k, p in enumerate(op.planes)]


def fast_plane_terms(x: PackedPlane, y: PackedPlane, n: int, word_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Same as :func:`model.golden.plane_terms`: ``(P, C)``, int64, shapes ``(rows_x, rows_y)``."""
    n, word_bits = check_length(n), check_word_bits(word_bits)
    check_plane(x, n, word_bits, "x")
    check_plane(y, n, word_bits, "y")
    p, c = _terms(_PlaneWords(x, n, word_bits), _PlaneWords(y, n, word_bits), n)
    return p.evaluate(), c.evaluate()


def fast_plane_products(x: Operand, y: Operand) -> np.ndarray:
    """Same as :func:`model.golden.plane_products`: ``D_kj``, int64 ``(Kx, Ky, rows_x, rows_y)``."""
    check_pair(x, y)
    wy = _operand_words(y)
    return np.stack([np.stack([_dot_form(px, py, x.n).evaluate() for py in wy]) for px in _operand_words(x)])


def fast_operand_product(x: Operand | PreparedOperand, y: Operand | PreparedOperand) -> np.ndarray:
    """Same as :func:`model.golden.operand_product`: exact int64 ``x @ y.T``.

    The superposition ``sum w_k w_j D_kj`` is one form, evaluated in a single
    kernel call.  Either operand may be prepared (:func:`prepare`): a
    resident weight's words and row counts are then not redone every call.
    """
    check_pair(*(op.operand if isinstance(op, PreparedOperand) else op for op in (x, y)))
    wy = _operand_words(y)
    forms = [
        _dot_form(px, py, x.n).scaled(x.planes[k].weight * y.planes[j].weight)
        for k, px in enumerate(_operand_words(x))
        for j, py in enumerate(wy)
    ]
    return sum(forms[1:], start=forms[0]).evaluate()


def fast_stacked_product(x, y) -> np.ndarray:
    """:func:`fast_operand_product` of every item of two operand stacks: ``(*lead, rows_x, rows_y)``.

    ``x`` and ``y`` are :class:`host.backend.OperandStack` (or any object
    with ``n``, ``word_bits`` and ``planes`` whose arrays are ``(*lead,
    rows, words)``) with the same leading axes; the whole stack is one
    kernel call.
    """
    if x.n != y.n or x.word_bits != y.word_bits:
        raise ValueError(f"x and y must have the same n and word_bits, got {x.n}/{x.word_bits} and {y.n}/{y.word_bits}")
    wx, wy = _operand_words(x, "x"), _operand_words(y, "y")
    if wx[0].shape[:-1] != wy[0].shape[:-1]:
        raise ValueError(f"x and y must share their leading axes, got {wx[0].shape[:-1]} and {wy[0].shape[:-1]}")
    forms = [
        _dot_form(px, py, x.n).scaled(x.planes[k].weight * y.planes[j].weight)
        for k, px in enumerate(wx)
        for j, py in enumerate(wy)
    ]
    return sum(forms[1:], start=forms[0]).evaluate()


def fast_layer_output(groups_x, groups_y, coefs: np.ndarray) -> np.ndarray:
    """Same as :func:`model.golden.layer_output`: ``Y = sum_gh coefs[g, h] * x_g @ y_h^T``, int64.

    Every plane pair of every group pair, weighted by ``coefs[g, h]`` and the
    plane weights, is one form: the whole layer is a single kernel call.
    The groups are :class:`~model.golden.Operand` (result ``(rows_x,
    rows_y)``) or operand stacks with the same leading axes (result
    ``(*lead, rows_x, rows_y)``, see :func:`fast_stacked_product`).
    """
    if not groups_x or not groups_y:
        raise ValueError("groups_x and groups_y must each hold at least one operand")
    coefs = np.asarray(coefs)
    if not np.issubdtype(coefs.dtype, np.integer):
        raise TypeError(f"coefs must be an integer array, got dtype {coefs.dtype}")
    if coefs.shape != (len(groups_x), len(groups_y)):
        raise ValueError(f"coefs must have shape {(len(groups_x), len(groups_y))}, got {coefs.shape}")
    first = groups_x[0]
    for op in (*groups_x, *groups_y):
        if op.n != first.n or op.word_bits != first.word_bits:
            raise ValueError(f"every group must have the same n and word_bits, got {op.n}/{op.word_bits} and {first.n}/{first.word_bits}")
    words_y = [_operand_words(y, f"y[{h}]") for h, y in enumerate(groups_y)]
    shapes = {w[0].shape[:-1] for w in words_y}
    forms = []
    for g, x in enumerate(groups_x):
        words_x = _operand_words(x, f"x[{g}]")
        shapes.add(words_x[0].shape[:-1])
        for h, y in enumerate(groups_y):
            c = int(coefs[g, h])
            if all(p.sign is None for p in words_x + words_y[h]):
                forms.append(_mask_pairs_form(words_x, words_y[h], [c * p.weight for p in x.planes], [p.weight for p in y.planes]))
                continue
            forms += [
                _dot_form(px, py, x.n).scaled(c * x.planes[k].weight * y.planes[j].weight)
                for k, px in enumerate(words_x)
                for j, py in enumerate(words_y[h])
            ]
    if len(shapes) > 1:
        raise ValueError(f"stacked groups must share their leading axes, got {sorted(shapes)}")
    return sum(forms[1:], start=forms[0]).evaluate()
