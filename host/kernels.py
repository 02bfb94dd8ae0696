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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from model.golden import (
    Operand,
    PackedPlane,
    check_length,
    check_pair,
    check_plane,
    check_word_bits,
    popcount,
    valid_mask,
    words_for,
)

# Output columns per tile: a tile's two output rows and its strip of y
# (words x 256 x 8 bytes) stay in L1/L2 while the word loop runs.
_TILE_COLS = 256
# Below this many y rows the columns are too few to fill the vector lanes,
# so the product is computed transposed when x has more rows.
_MIN_VECTOR_COLS = 64
# Chunks of tiles per pool thread, so that a thread slowed by other jobs on
# the machine leaves its share to the others; but no chunk under about 30 us
# of work (word pairs), where handing it to a thread would cost more.
_CHUNKS_PER_THREAD = 4
_MIN_CHUNK_WORD_PAIRS = 1 << 18


@intrinsic
def _ctpop(typingctx, word):
    """``llvm.ctpop.i64``: LLVM turns it into (vector) VPOPCNTQ where the CPU has it."""
    if word != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        fn = builder.module.declare_intrinsic("llvm.ctpop", [ir.IntType(64)])
        return builder.call(fn, args)

    return types.int64(types.uint64), codegen


@njit(nogil=True, cache=True)
def _tiles(x, yt, weight, bias_x, bias_y, out, first, stop):
    """Fill tiles ``first..stop-1`` of ``out``; x has an even number of rows.

    ``yt`` is y transposed, ``(words, cols)``.  A tile is two x rows by
    ``_TILE_COLS`` columns: every loaded y word serves both rows, and the
    innermost loop over columns is a plain vector loop (load, and, popcount,
    multiply-add) that LLVM vectorizes.
    """
    nwords = x.shape[1]
    col_tiles = (yt.shape[1] + _TILE_COLS - 1) // _TILE_COLS
    for tile in range(first, stop):
        i = 2 * (tile // col_tiles)
        j0 = (tile % col_tiles) * _TILE_COLS
        out0 = out[i, j0 : j0 + _TILE_COLS]
        out1 = out[i + 1, j0 : j0 + _TILE_COLS]
        by = bias_y[j0 : j0 + _TILE_COLS]
        for j in range(out0.shape[0]):
            out0[j] = bias_x[i] + by[j]
            out1[j] = bias_x[i + 1] + by[j]
        for k in range(nwords):
            a0 = x[i, k]
            a1 = x[i + 1, k]
            w = weight[k]
            yk = yt[k, j0 : j0 + _TILE_COLS]
            for j in range(out0.shape[0]):
                b = yk[j]
                out0[j] += w * _ctpop(a0 & b)
                out1[j] += w * _ctpop(a1 & b)


_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_THREADS, thread_name_prefix="gsbflow-kernel")


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
    if rows % 2:  # pad to whole row pairs; the extra output row is dropped
        x = np.vstack([x, np.zeros((1, x.shape[1]), np.uint64)])
        bias_x = np.append(bias_x, 0)
    yt = np.ascontiguousarray(y.T)
    out = np.empty((x.shape[0], yt.shape[1]), np.int64)
    tiles = x.shape[0] // 2 * -(-yt.shape[1] // _TILE_COLS)
    args = (np.ascontiguousarray(x), yt, weight, bias_x, bias_y, out)
    chunks = min(tiles, _CHUNKS_PER_THREAD * _THREADS, out.size * x.shape[1] // _MIN_CHUNK_WORD_PAIRS)
    if chunks < 2 or _THREADS < 2:
        _tiles(*args, 0, tiles)
    else:
        bounds = np.linspace(0, tiles, chunks + 1).astype(np.int64)
        list(_pool().map(lambda first, stop: _tiles(*args, first, stop), bounds[:-1], bounds[1:]))
    return out[:rows]


@lru_cache(maxsize=64)
def _valid64(n: int) -> np.ndarray:
    """:func:`model.golden.valid_mask` in 64-bit words, computed once per length."""
    mask = valid_mask(n, 64)
    mask.flags.writeable = False
    return mask


def _words64(words: np.ndarray, n: int, word_bits: int) -> np.ndarray:
    """A checked packed plane array (:func:`model.golden.check_plane`) as uint64 words ``(rows, words_for(n, 64))``."""
    if word_bits == 64:
        return np.ascontiguousarray(words)
    as_bytes = np.ascontiguousarray(words.astype(np.dtype(words.dtype).newbyteorder("<"))).view(np.uint8)
    padded = np.zeros((words.shape[0], 8 * words_for(n, 64)), np.uint8)
    padded[:, : as_bytes.shape[1]] = as_bytes
    return padded.view("<u8").astype(np.uint64)


class _PlaneWords:
    """One checked plane as uint64 words: explicit ``sign``/``mask`` (or None), and its ``pos``/``neg`` parts."""

    def __init__(self, plane: PackedPlane, n: int, word_bits: int) -> None:
        self.rows = (plane.sign if plane.sign is not None else plane.mask).shape[0]
        self.sign = None if plane.sign is None else _words64(plane.sign, n, word_bits)
        self.mask = None if plane.mask is None else _words64(plane.mask, n, word_bits)
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


@dataclass(frozen=True)
class _Form:
    """``bias_x[i] + bias_y[j] + sum_s weight_s * A(x_s, y_s)``, A the AND-popcount matrix."""

    bias_x: np.ndarray
    bias_y: np.ndarray
    segments: tuple[tuple[np.ndarray, np.ndarray, int], ...] = ()

    def __add__(self, other: _Form) -> _Form:
        return _Form(self.bias_x + other.bias_x, self.bias_y + other.bias_y, self.segments + other.segments)

    def scaled(self, factor: int) -> _Form:
        """The form times an integer."""
        return _Form(factor * self.bias_x, factor * self.bias_y, tuple((a, b, factor * w) for a, b, w in self.segments))

    def evaluate(self) -> np.ndarray:
        """The ``(rows_x, rows_y)`` int64 matrix, in one kernel call."""
        if not self.segments:
            return self.bias_x[:, None] + self.bias_y[None, :]
        weight = np.concatenate([np.full(a.shape[1], w, np.int64) for a, _, w in self.segments])
        x = np.hstack([a for a, _, _ in self.segments])
        y = np.hstack([b for _, b, _ in self.segments])
        return weighted_and_popcount(x, y, weight, self.bias_x, self.bias_y)


def _terms(x: _PlaneWords, y: _PlaneWords, n: int) -> tuple[_Form, _Form]:
    """The forms of ``P`` and ``C`` for one plane pair."""
    zx = np.zeros(x.rows, np.int64)
    zy = np.zeros(y.rows, np.int64)
    if x.mask is None and y.mask is None:  # bipolar x bipolar
        p = _Form(popcount(x.sign), popcount(y.sign), ((x.sign, y.sign, -2),))
        return p, _Form(zx + n, zy)
    halves = tuple((a, b, 1) for a, b in ((x.pos, y.neg), (x.neg, y.pos)) if a is not None and b is not None)
    p = _Form(zx, zy, halves)
    if x.mask is None:
        c = _Form(zx, popcount(y.mask))
    elif y.mask is None:
        c = _Form(popcount(x.mask), zy)
    else:
        c = _Form(zx, zy, ((x.mask, y.mask, 1),))
    return p, c


def _dot_form(x: _PlaneWords, y: _PlaneWords, n: int) -> _Form:
    """The form of ``D = C - 2P`` (:func:`model.golden.correct`)."""
    p, c = _terms(x, y, n)
    return c + p.scaled(-2)


def _operand_words(op: Operand) -> list[_PlaneWords]:
    return [_PlaneWords(p, op.n, op.word_bits) for p in op.planes]


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


def fast_operand_product(x: Operand, y: Operand) -> np.ndarray:
    """Same as :func:`model.golden.operand_product`: exact int64 ``x @ y.T``.

    The superposition ``sum w_k w_j D_kj`` is one form, evaluated in a single
    kernel call.
    """
    check_pair(x, y)
    wy = _operand_words(y)
    forms = [
        _dot_form(px, py, x.n).scaled(x.planes[k].weight * y.planes[j].weight)
        for k, px in enumerate(_operand_words(x))
        for j, py in enumerate(wy)
    ]
    return sum(forms[1:], start=forms[0]).evaluate()
