"""The numeric contract of gsbflow, as a bit-exact numpy golden model.

Everything that computes a binary matrix product in this project (the torch
deployment forward, the emulator's fast kernels, the Amaranth accelerator and
its cocotb testbenches) is checked against this module, and every width,
rounding rule and plane layout is defined here once.  It is written to be
read: plain numpy, no tricks.  ``docs/numeric-contract.md`` walks through it
with a worked example.

The contract, in short:

* **Plane kinds.**  An elementary bit-plane is *bipolar* (bit 1 = +1, bit 0 =
  -1), *unipolar* (bit 1 = 1, bit 0 = 0) or *ternary* (a sign plane and a
  mask plane: value ``mask * (2*sign - 1)``).  Every kind is seen as a pair
  ``(sign, mask)``: a bipolar plane has the implicit mask "all valid
  positions", a unipolar plane has the implicit sign "all ones" and its bits
  as mask.
* **Encodings.**  An integer operand is one or more weighted elementary
  planes: ``bipolar``, ``unipolar``, ``ternary`` (one plane, weight 1),
  ``int``/b (b unipolar planes, two's complement: weights 1, 2, ..,
  2^(b-2), -2^(b-1)) and ``uint``/b (weights 1, .., 2^(b-1)).
* **Packing.**  Bit i of word j is element ``word_bits*j + i`` (little
  endian), the tail of the last word is zero.
* **The primitive.**  ``P = popcount(m & (a ^ b))`` summed over words.  For
  planes x, y with ``m = mask_x & mask_y`` (implicit masks are the valid
  positions), ``a = sign_x``, ``b = sign_y``:
  ``D = C - 2*P`` with ``C = popcount(m)``.  ``C`` is the same primitive with
  ``a = 0, b = ~0``; for bipolar x bipolar it is simply ``n``, and when only
  one plane is masked it is that plane's own popcount.
* **Superposition.**  ``D_int = sum_k sum_j w_k w_j D_kj`` over the weighted
  planes of one encoding pair (exact integers: power-of-two weights are
  shifts).  A layer's operands may each be several *groups* (an encoding with
  a real scale, e.g. GSB's three Value groups); the layer output is
  ``Y = sum_g sum_h c_gh * D_int_gh`` with integer coefficients
  ``c_gh = to_fixed(s_g * t_h)`` in a :class:`FixedPoint` format, and the
  real value is ``Y * 2**-frac_bits`` rounded once to float32.
* **Thresholds.**  Where a layer's output is binary, ``[scale*Y + bias >= 0]``
  (evaluated in float64, ``sign(0) = +1``) folds into an integer threshold
  and a direction per channel: ``bit = direction*Y >= threshold``.
* **Widths.**  Counters and accumulators get exactly the width that the
  largest possible value needs (:func:`count_bits`, :func:`signed_bits`,
  :func:`layer_accumulator_bits`); overflow is impossible by construction.
  A layer needing more than :data:`ACCUMULATOR_LIMIT_BITS` is refused.
* **Checks.**  Every backend accepts exactly what :func:`check_groups` (the
  operands, hand-built ones included) and :func:`check_layer` (coefficients,
  thresholds, widths) accept, and refuses the rest with the same error.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

DEFAULT_WORD_BITS = 64
WORD_BITS_CHOICES = (8, 16, 32, 64)
_WORD_DTYPES = {8: np.uint8, 16: np.uint16, 32: np.uint32, 64: np.uint64}


# --------------------------------------------------------------------------
# argument checks shared by every public function


def check_word_bits(word_bits: int) -> int:
    """Return ``word_bits`` or raise if it is not a supported word width."""
    if isinstance(word_bits, bool) or not isinstance(word_bits, (int, np.integer)):
        raise TypeError(f"word_bits must be an int, got {type(word_bits).__name__}")
    if int(word_bits) not in WORD_BITS_CHOICES:
        raise ValueError(f"word_bits must be one of {WORD_BITS_CHOICES}, got {word_bits}")
    return int(word_bits)


def check_length(n: int, name: str = "n") -> int:
    """Return the vector length ``n`` or raise if it is not a positive int."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"{name} must be >= 1, got {n}")
    return int(n)


def _check_array(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    return x


def word_dtype(word_bits: int) -> type:
    """The unsigned numpy dtype that holds one packed word."""
    return _WORD_DTYPES[check_word_bits(word_bits)]


def words_for(n: int, word_bits: int = DEFAULT_WORD_BITS) -> int:
    """Number of words that hold ``n`` bits."""
    return -(-check_length(n) // check_word_bits(word_bits))


# --------------------------------------------------------------------------
# packing


def pack_bits(bits: np.ndarray, word_bits: int = DEFAULT_WORD_BITS) -> np.ndarray:
    """Pack the last axis of a 0/1 array into little-endian words.

    Bit ``i`` of word ``j`` is element ``word_bits*j + i``; the tail of the
    last word is zero.  ``bits`` may be bool or any integer dtype holding only
    0 and 1.
    """
    bits = _check_array(bits, "bits")
    word_bits = check_word_bits(word_bits)
    if bits.dtype != np.bool_ and not np.issubdtype(bits.dtype, np.integer):
        raise TypeError(f"bits must be a bool or integer array, got dtype {bits.dtype}")
    if bits.ndim < 1 or bits.shape[-1] < 1:
        raise ValueError(f"bits must have a non-empty last axis, got shape {bits.shape}")
    if bits.dtype != np.bool_ and bits.size and (bits.min() < 0 or bits.max() > 1):
        raise ValueError("bits must hold only 0 and 1")
    n = bits.shape[-1]
    nwords = words_for(n, word_bits)
    padded = np.zeros(bits.shape[:-1] + (nwords * word_bits,), dtype=np.uint8)
    padded[..., :n] = bits
    # np.packbits with bitorder="little" packs element 8*k+i into bit i of
    # byte k; little-endian bytes then form little-endian words.
    packed_bytes = np.packbits(padded, axis=-1, bitorder="little")
    words = packed_bytes.view(np.dtype(word_dtype(word_bits)).newbyteorder("<"))
    return words.astype(word_dtype(word_bits))


def unpack_bits(words: np.ndarray, n: int, word_bits: int = DEFAULT_WORD_BITS) -> np.ndarray:
    """Inverse of :func:`pack_bits`: the first ``n`` bits of each row, as uint8."""
    words = _check_array(words, "words")
    word_bits = check_word_bits(word_bits)
    n = check_length(n)
    if words.dtype != word_dtype(word_bits):
        raise TypeError(f"words must have dtype {np.dtype(word_dtype(word_bits))}, got {words.dtype}")
    if words.ndim < 1 or words.shape[-1] != words_for(n, word_bits):
        raise ValueError(
            f"words must have {words_for(n, word_bits)} words on the last axis for n={n}, "
            f"got shape {words.shape}"
        )
    little = np.ascontiguousarray(words.astype(np.dtype(word_dtype(word_bits)).newbyteorder("<")))
    as_bytes = little.view(np.uint8).reshape(words.shape[:-1] + (-1,))
    return np.unpackbits(as_bytes, axis=-1, bitorder="little")[..., :n]


def valid_mask(n: int, word_bits: int = DEFAULT_WORD_BITS) -> np.ndarray:
    """The packed mask of the ``n`` valid positions (ones, then zero padding)."""
    return pack_bits(np.ones(check_length(n), dtype=np.uint8), word_bits)


# --------------------------------------------------------------------------
# plane kinds and encodings


class PlaneKind(enum.Enum):
    """The three kinds of elementary bit-plane."""

    BIPOLAR = "bipolar"
    UNIPOLAR = "unipolar"
    TERNARY = "ternary"

    @property
    def has_sign(self) -> bool:
        """Whether planes of this kind store a sign plane."""
        return self is not PlaneKind.UNIPOLAR

    @property
    def has_mask(self) -> bool:
        """Whether planes of this kind store a mask plane."""
        return self is not PlaneKind.BIPOLAR


ENCODING_NAMES = ("bipolar", "unipolar", "ternary", "int", "uint")


@dataclass(frozen=True)
class Encoding:
    """How an integer operand decomposes into weighted elementary planes.

    ``name`` is one of :data:`ENCODING_NAMES`; ``bits`` is 1 for the
    single-plane encodings and the bit-width for ``int`` and ``uint``.
    """

    name: str
    bits: int = 1

    def __post_init__(self) -> None:
        if self.name not in ENCODING_NAMES:
            raise ValueError(f"encoding name must be one of {ENCODING_NAMES}, got {self.name!r}")
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)):
            raise TypeError(f"encoding bits must be an int, got {type(self.bits).__name__}")
        if self.name in ("int", "uint"):
            if not 2 <= self.bits <= 16:
                raise ValueError(f"{self.name} encoding bits must be in 2..16, got {self.bits}")
        elif self.bits != 1:
            raise ValueError(f"{self.name} encoding has exactly 1 bit, got bits={self.bits}")

    @classmethod
    def parse(cls, text: str) -> "Encoding":
        """Parse ``"bipolar"``, ``"ternary"``, ``"int8"``, ``"uint4"`` and so on."""
        if not isinstance(text, str):
            raise TypeError(f"encoding must be a str, got {type(text).__name__}")
        for prefix in ("uint", "int"):
            if text.startswith(prefix) and text[len(prefix):].isdigit():
                return cls(prefix, int(text[len(prefix):]))
        return cls(text)

    def __str__(self) -> str:
        return f"{self.name}{self.bits}" if self.name in ("int", "uint") else self.name

    @property
    def plane_kind(self) -> PlaneKind:
        """Kind of every plane of this encoding (int and uint are unipolar)."""
        return PlaneKind(self.name) if self.name in ("bipolar", "unipolar", "ternary") else PlaneKind.UNIPOLAR

    @property
    def plane_weights(self) -> tuple[int, ...]:
        """Integer weight of each plane, least significant first."""
        if self.name == "int":
            return tuple(1 << i for i in range(self.bits - 1)) + (-(1 << (self.bits - 1)),)
        if self.name == "uint":
            return tuple(1 << i for i in range(self.bits))
        return (1,)

    @property
    def value_range(self) -> tuple[int, int]:
        """Smallest and largest value the encoding represents."""
        ranges = {
            "bipolar": (-1, 1),
            "unipolar": (0, 1),
            "ternary": (-1, 1),
            "int": (-(1 << (self.bits - 1)), (1 << (self.bits - 1)) - 1),
            "uint": (0, (1 << self.bits) - 1),
        }
        return ranges[self.name]

    @property
    def max_abs(self) -> int:
        """Largest magnitude of a value."""
        lo, hi = self.value_range
        return max(-lo, hi)

    def check_values(self, values: np.ndarray, name: str = "values") -> np.ndarray:
        """Return ``values`` as int64 or raise if any is not representable."""
        values = _check_array(values, name)
        if values.dtype != np.bool_ and not np.issubdtype(values.dtype, np.integer):
            raise TypeError(f"{name} must be an integer array, got dtype {values.dtype}")
        values = values.astype(np.int64)
        lo, hi = self.value_range
        if values.size and (values.min() < lo or values.max() > hi):
            raise ValueError(f"{name} must lie in [{lo}, {hi}] for encoding {self}")
        if self.name == "bipolar" and values.size and np.any(values == 0):
            raise ValueError(f"{name} must hold only -1 and +1 for encoding bipolar")
        return values


@dataclass(frozen=True)
class PackedPlane:
    """One weighted elementary plane of a matrix operand, packed.

    ``sign`` and ``mask`` are ``(rows, words)`` arrays; ``sign`` is None for
    unipolar planes (implicitly all ones), ``mask`` is None for bipolar
    planes (implicitly the valid positions).
    """

    kind: PlaneKind
    weight: int
    sign: np.ndarray | None
    mask: np.ndarray | None


def pack_planes(values: np.ndarray, encoding: Encoding, word_bits: int) -> tuple[PackedPlane, ...]:
    """The packed planes of checked int64 ``values`` (..., n) in ``encoding`` (planes (..., words))."""
    kind = encoding.plane_kind
    if encoding.name in ("int", "uint"):
        unsigned = values & ((1 << encoding.bits) - 1)  # two's complement bits
        return tuple(
            PackedPlane(kind, w, None, pack_bits((unsigned >> i) & 1, word_bits))
            for i, w in enumerate(encoding.plane_weights)
        )
    sign = pack_bits(values > 0, word_bits) if kind.has_sign else None
    mask = pack_bits(values != 0, word_bits) if kind.has_mask else None
    return (PackedPlane(kind, 1, sign, mask),)


@dataclass(frozen=True)
class Operand:
    """An integer matrix of shape ``(rows, n)`` as packed weighted planes."""

    encoding: Encoding
    n: int
    word_bits: int
    planes: tuple[PackedPlane, ...]

    @property
    def rows(self) -> int:
        """Number of rows (vectors) in the operand."""
        first = self.planes[0]
        return (first.sign if first.sign is not None else first.mask).shape[0]

    @classmethod
    def from_values(
        cls, values: np.ndarray, encoding: Encoding | str, word_bits: int = DEFAULT_WORD_BITS
    ) -> "Operand":
        """Encode and pack a 2-D integer array row by row."""
        if isinstance(encoding, str):
            encoding = Encoding.parse(encoding)
        if not isinstance(encoding, Encoding):
            raise TypeError(f"encoding must be an Encoding or str, got {type(encoding).__name__}")
        values = encoding.check_values(values)
        if values.ndim != 2 or values.shape[0] < 1 or values.shape[1] < 1:
            raise ValueError(f"values must be a non-empty 2-D array (rows, n), got shape {values.shape}")
        return cls(encoding, values.shape[1], word_bits, pack_planes(values, encoding, check_word_bits(word_bits)))

    def to_values(self) -> np.ndarray:
        """Decode back to the ``(rows, n)`` int64 matrix."""
        total = np.zeros((self.rows, self.n), dtype=np.int64)
        for plane in self.planes:
            sign = np.ones((self.rows, self.n), np.int64) if plane.sign is None else unpack_bits(plane.sign, self.n, self.word_bits).astype(np.int64)
            mask = np.ones((self.rows, self.n), np.int64) if plane.mask is None else unpack_bits(plane.mask, self.n, self.word_bits).astype(np.int64)
            total += plane.weight * mask * (2 * sign - 1)
        return total


# --------------------------------------------------------------------------
# operand checks: what every backend accepts (hand-built Operands included)


def _tail_mask(n: int, word_bits: int) -> int:
    """The bits of the last word that lie past ``n`` (0 when ``n`` fills it)."""
    used = n % word_bits
    return 0 if used == 0 else ((1 << word_bits) - 1) ^ ((1 << used) - 1)


def _check_words(words: object, n: int, word_bits: int, rows: int | None, name: str) -> int:
    """Check one packed ``(rows, words)`` array; return its row count."""
    if not isinstance(words, np.ndarray) or words.ndim != 2:
        raise TypeError(f"{name} must be a 2-D numpy array of packed words")
    dtype = np.dtype(word_dtype(word_bits))
    if words.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} for word_bits={word_bits}, got {words.dtype}")
    nwords = words_for(n, word_bits)
    if words.shape[1] != nwords:
        raise ValueError(f"{name} must have {nwords} words per row for n={n}, got {words.shape[1]}")
    if words.shape[0] < 1 or (rows is not None and words.shape[0] != rows):
        raise ValueError(f"{name} must have {rows or 'at least 1'} rows, got {words.shape[0]}")
    tail = _tail_mask(n, word_bits)
    if tail:
        dirty = np.flatnonzero(words[:, -1] & dtype.type(tail))
        if dirty.size:
            row = int(dirty[0])
            raise ValueError(
                f"{name} has bits set past n={n} (row {row}, last word {int(words[row, -1]):#x}); "
                "packed tails must be zero"
            )
    return words.shape[0]


def check_plane(plane: PackedPlane, n: int, word_bits: int, name: str = "plane", rows: int | None = None) -> int:
    """Raise unless ``plane`` is a well-formed packed plane of length ``n``; return its rows.

    Its arrays are present exactly as its kind needs them, of the word
    width's dtype, ``words_for(n)`` words wide, ``rows`` rows (any number
    when None) and zero past ``n``: the kernels and the hardware rely on it.
    """
    if not isinstance(plane, PackedPlane):
        raise TypeError(f"{name} must be a PackedPlane, got {type(plane).__name__}")
    if not isinstance(plane.kind, PlaneKind):
        raise TypeError(f"{name}.kind must be a PlaneKind, got {type(plane.kind).__name__}")
    for part, needed in (("sign", plane.kind.has_sign), ("mask", plane.kind.has_mask)):
        words = getattr(plane, part)
        if needed and words is None:
            raise ValueError(f"{name} is a {plane.kind.value} plane and needs a {part} array, got None")
        if not needed and words is not None:
            raise ValueError(f"{name} is a {plane.kind.value} plane and has no {part} array, got one")
        if words is not None:
            rows = _check_words(words, n, word_bits, rows, f"{name}.{part}")
    return rows


def check_operand(op: Operand, name: str = "operand") -> Operand:
    """Return ``op`` or raise unless its planes are exactly those its encoding packs.

    A hand-built Operand must have one plane per weight of its encoding, of
    the encoding's kind and weight, every plane as :func:`check_plane`
    accepts it, with the same rows.
    """
    if not isinstance(op, Operand):
        raise TypeError(f"{name} must be an Operand, got {type(op).__name__}")
    if not isinstance(op.encoding, Encoding):
        raise TypeError(f"{name}.encoding must be an Encoding, got {type(op.encoding).__name__}")
    n, word_bits = check_length(op.n, f"{name}.n"), check_word_bits(op.word_bits)
    weights, kind = op.encoding.plane_weights, op.encoding.plane_kind
    if not isinstance(op.planes, tuple) or len(op.planes) != len(weights):
        raise ValueError(f"{name} must have a tuple of {len(weights)} planes for encoding {op.encoding}, "
                         f"got {len(op.planes) if isinstance(op.planes, tuple) else type(op.planes).__name__}")
    rows = None
    for k, (plane, weight) in enumerate(zip(op.planes, weights)):
        label = f"{name}.planes[{k}]"
        rows = check_plane(plane, n, word_bits, label, rows)
        if plane.kind is not kind:
            raise ValueError(f"{label} is a {plane.kind.value} plane, encoding {op.encoding} has {kind.value} planes")
        if isinstance(plane.weight, bool) or not isinstance(plane.weight, (int, np.integer)) or plane.weight != weight:
            raise ValueError(f"{label} has weight {plane.weight!r}, encoding {op.encoding} gives it {weight}")
    return op


# --------------------------------------------------------------------------
# the primitive and the plane product


def popcount(words: np.ndarray) -> np.ndarray:
    """Population count of each word, summed over the last axis, as int64."""
    return np.bitwise_count(words).sum(axis=-1, dtype=np.int64)


def primitive(m: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The contract's one primitive: ``popcount(m & (a ^ b))`` summed over words.

    The three arrays broadcast against each other; the last axis is words.
    """
    return popcount(m & (a ^ b))


def _ones_like_words(rows: int, n: int, word_bits: int) -> np.ndarray:
    return np.broadcast_to(valid_mask(n, word_bits), (rows, words_for(n, word_bits)))


def plane_terms(x: PackedPlane, y: PackedPlane, n: int, word_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(P, C)`` for every row pair of two planes: shapes ``(rows_x, rows_y)``.

    ``m = mask_x & mask_y``, ``P = popcount(m & (sign_x ^ sign_y))``,
    ``C = popcount(m)``.  Implicit masks are the valid positions, implicit
    signs all ones.
    """
    rx = (x.sign if x.sign is not None else x.mask).shape[0]
    ry = (y.sign if y.sign is not None else y.mask).shape[0]
    mx = _ones_like_words(rx, n, word_bits) if x.mask is None else x.mask
    my = _ones_like_words(ry, n, word_bits) if y.mask is None else y.mask
    sx = _ones_like_words(rx, n, word_bits) if x.sign is None else x.sign
    sy = _ones_like_words(ry, n, word_bits) if y.sign is None else y.sign
    m = mx[:, None, :] & my[None, :, :]
    p = primitive(m, sx[:, None, :], sy[None, :, :])
    if x.kind is PlaneKind.BIPOLAR and y.kind is PlaneKind.BIPOLAR:
        c = np.full((rx, ry), n, dtype=np.int64)
    else:
        zero = np.zeros((1, 1, m.shape[-1]), dtype=m.dtype)
        c = primitive(m, zero, ~zero)
    return p, c


def correct(p: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The affine correction from the primitive to the signed dot product."""
    return c - 2 * p


def check_pair(x: Operand, y: Operand) -> None:
    """Raise unless x and y are well-formed Operands of the same length and word width."""
    check_operand(x, "x")
    check_operand(y, "y")
    if x.n != y.n:
        raise ValueError(f"x and y must have the same length n, got x.n={x.n} and y.n={y.n}")
    if x.word_bits != y.word_bits:
        raise ValueError(f"x and y must use the same word_bits, got {x.word_bits} and {y.word_bits}")


def plane_products(x: Operand, y: Operand) -> np.ndarray:
    """Every plane-pair dot product ``D_kj``: shape ``(Kx, Ky, rows_x, rows_y)``."""
    check_pair(x, y)
    return np.stack(
        [np.stack([correct(*plane_terms(px, py, x.n, x.word_bits)) for py in y.planes]) for px in x.planes]
    )


def operand_product(x: Operand, y: Operand) -> np.ndarray:
    """Exact integer ``x @ y.T`` as the superposition ``sum w_k w_j D_kj``."""
    d = plane_products(x, y)
    wx = np.array([p.weight for p in x.planes], dtype=np.int64)
    wy = np.array([p.weight for p in y.planes], dtype=np.int64)
    return np.einsum("k,j,kjab->ab", wx, wy, d)


# --------------------------------------------------------------------------
# widths


def count_bits(n: int) -> int:
    """Bits of an unsigned counter for a popcount over ``n`` positions (0..n)."""
    return check_length(n).bit_length()


def signed_bits(max_abs: int) -> int:
    """Bits of a two's complement register holding every value in [-max_abs, max_abs]."""
    if max_abs < 0:
        raise ValueError(f"max_abs must be >= 0, got {max_abs}")
    return int(max_abs).bit_length() + 1


def dot_bits(n: int) -> int:
    """Bits of the signed plane dot product ``D`` in [-n, n]."""
    return signed_bits(check_length(n))


def product_max_abs(n: int, ex: Encoding, ey: Encoding) -> int:
    """Largest ``|D_int|`` of one encoding pair over length ``n``."""
    return check_length(n) * ex.max_abs * ey.max_abs


def layer_accumulator_bits(
    n: int, groups_x: Sequence[Encoding], groups_y: Sequence[Encoding], coefs: np.ndarray
) -> int:
    """Bits of the layer accumulator ``Y = sum c_gh D_int_gh``."""
    coefs = _check_array(coefs, "coefs")
    if coefs.shape != (len(groups_x), len(groups_y)):
        raise ValueError(f"coefs must have shape ({len(groups_x)}, {len(groups_y)}), got {coefs.shape}")
    total = sum(
        abs(int(coefs[g, h])) * product_max_abs(n, ex, ey)
        for g, ex in enumerate(groups_x)
        for h, ey in enumerate(groups_y)
    )
    return signed_bits(total)


# --------------------------------------------------------------------------
# layer arguments: what every backend accepts

#: The widest accumulator a layer may need.  Sums are int64; the partial sums
#: of a product reach up to 4x its final bound (the two's complement planes'
#: weights add up to almost twice the largest value, on each side), and 62
#: bits leave exactly that headroom below 2^63.
ACCUMULATOR_LIMIT_BITS = 62

_INT64 = np.iinfo(np.int64)


def _check_int64(values: object, name: str) -> np.ndarray:
    """``values`` as int64, or raise: an integer numpy array whose values fit int64."""
    values = _check_array(values, name)
    if not np.issubdtype(values.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {values.dtype}")
    if values.dtype.kind == "u" and values.size and values.max() > _INT64.max:
        index = np.unravel_index(np.argmax(values), values.shape)
        raise ValueError(f"{name}[{', '.join(map(str, index))}] = {values[index]} does not fit int64")
    return values.astype(np.int64, copy=False)


def check_coefs(coefs: np.ndarray, groups_x: int, groups_y: int) -> np.ndarray:
    """The layer coefficients as int64, or raise: an integer ``(groups_x, groups_y)`` array."""
    coefs = _check_int64(coefs, "coefs")
    if coefs.shape != (groups_x, groups_y):
        raise ValueError(f"coefs must have shape ({groups_x}, {groups_y}), got {coefs.shape}")
    return coefs


def check_thresholds(
    thresholds: np.ndarray, directions: np.ndarray, columns: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Thresholds and directions as int64, or raise.

    Both are integer arrays (a float threshold has no bit-exact compare),
    of shape ``(columns,)`` when ``columns`` is given; every direction is -1
    or +1.
    """
    thresholds, directions = _check_int64(thresholds, "thresholds"), _check_int64(directions, "directions")
    if columns is not None and not thresholds.shape == directions.shape == (columns,):
        raise ValueError(f"thresholds and directions must have one entry per y row, shape ({columns},), "
                         f"got {thresholds.shape} and {directions.shape}")
    bad = np.flatnonzero((directions != 1) & (directions != -1))
    if bad.size:
        raise ValueError(f"directions must be -1 or +1, got {directions.flat[bad[0]]} at index {bad[0]}")
    return thresholds, directions


def check_accumulator(
    n: int, groups_x: Sequence[Encoding], groups_y: Sequence[Encoding], coefs: np.ndarray
) -> None:
    """Raise unless the layer and each of its products fit :data:`ACCUMULATOR_LIMIT_BITS`.

    Every product ``D_int`` is computed, even one whose coefficient is 0, so
    each must fit as well as ``Y``.
    """
    products = max(signed_bits(product_max_abs(n, ex, ey)) for ex in groups_x for ey in groups_y)
    bits = max(products, layer_accumulator_bits(n, groups_x, groups_y, coefs))
    if bits > ACCUMULATOR_LIMIT_BITS:
        largest = max(abs(int(c)) for c in coefs.flat)
        _refuse_width(bits, f"n={n}, encodings {[str(e) for e in groups_x]} x {[str(e) for e in groups_y]}, "
                            f"largest |coef| {largest}")


def _refuse_width(bits: int, what: str) -> None:
    raise ValueError(f"coefs: the sum needs a {bits}-bit accumulator ({what}); "
                     f"at most {ACCUMULATOR_LIMIT_BITS} bits are computed exactly")


def check_groups(groups: Sequence[Operand], name: str = "groups") -> tuple[Operand, ...]:
    """The groups as a tuple, or raise: well-formed Operands of one length, word width and row count."""
    if not isinstance(groups, Sequence) or not groups:
        raise TypeError(f"{name} must be a non-empty sequence of Operand")
    groups = tuple(check_operand(g, f"{name}[{i}]") for i, g in enumerate(groups))
    first = groups[0]
    for i, g in enumerate(groups[1:], 1):
        if (g.n, g.word_bits, g.rows) != (first.n, first.word_bits, first.rows):
            raise ValueError(
                f"{name}[{i}] has n={g.n}, word_bits={g.word_bits}, {g.rows} rows; "
                f"{name}[0] has n={first.n}, word_bits={first.word_bits}, {first.rows} rows"
            )
    return groups


def check_layer(
    groups_x: Sequence[Operand],
    groups_y: Sequence[Operand],
    coefs: np.ndarray,
    thresholds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """A layer's coefficients and thresholds as int64, or raise; every backend runs this check.

    ``groups_x`` and ``groups_y`` are as :func:`check_groups` returned them
    (a backend checks them when they are loaded); here they must agree with
    each other.  ``thresholds`` is ``(thresholds, directions)``, one per y
    row.  The same inputs are thus refused, with the same error, by the
    emulator and by the accelerator.
    """
    x, y = groups_x[0], groups_y[0]
    if x.n != y.n:
        raise ValueError(f"x and y must have the same length n, got x.n={x.n} and y.n={y.n}")
    if x.word_bits != y.word_bits:
        raise ValueError(f"x and y must use the same word_bits, got {x.word_bits} and {y.word_bits}")
    coefs = check_coefs(coefs, len(groups_x), len(groups_y))
    check_accumulator(x.n, [g.encoding for g in groups_x], [g.encoding for g in groups_y], coefs)
    if thresholds is not None:
        thresholds = check_thresholds(*thresholds, columns=y.rows)
    return coefs, thresholds


# --------------------------------------------------------------------------
# fixed-point scales and superposition over groups


@dataclass(frozen=True)
class FixedPoint:
    """Signed fixed point: ``value = integer * 2**-frac_bits``, ``total_bits`` wide.

    Rounding rule: ``floor(x * 2**frac_bits + 0.5)`` in float64 (round half
    up), then a range check: a value that does not fit raises ValueError.
    """

    frac_bits: int
    total_bits: int = 18

    def __post_init__(self) -> None:
        for field in ("frac_bits", "total_bits"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{field} must be an int, got {type(value).__name__}")
        if not 2 <= self.total_bits <= 32:
            raise ValueError(f"total_bits must be in 2..32, got {self.total_bits}")
        if not -64 <= self.frac_bits <= 64:
            raise ValueError(f"frac_bits must be in -64..64, got {self.frac_bits}")

    @property
    def max_int(self) -> int:
        """Largest representable integer."""
        return (1 << (self.total_bits - 1)) - 1

    def to_fixed(self, x: np.ndarray | float) -> np.ndarray:
        """Round real values to the format's integers (int64)."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("scale values must be finite")
        q = np.floor(x * 2.0**self.frac_bits + 0.5).astype(np.int64)
        if q.size and (q.max() > self.max_int or q.min() < -self.max_int - 1):
            raise ValueError(
                f"scale value {x.flat[np.argmax(np.abs(q))]:g} does not fit {self.total_bits}-bit "
                f"fixed point with {self.frac_bits} fraction bits"
            )
        return q

    def to_real(self, y: np.ndarray) -> np.ndarray:
        """``y * 2**-frac_bits`` computed in float64, rounded once to float32."""
        y = _check_array(y, "y")
        if not np.issubdtype(y.dtype, np.integer):
            raise TypeError(f"y must be an integer array, got dtype {y.dtype}")
        return (y.astype(np.float64) * 2.0**-self.frac_bits).astype(np.float32)

    @classmethod
    def for_scales(cls, scales: np.ndarray, total_bits: int = 18) -> "FixedPoint":
        """The format with the most fraction bits in which every scale fits."""
        scales = np.asarray(scales, dtype=np.float64)
        peak = float(np.max(np.abs(scales))) if scales.size else 0.0
        if not math.isfinite(peak):
            raise ValueError("scale values must be finite")
        if peak == 0.0:
            return cls(0, total_bits)
        frac = total_bits - 1 - math.frexp(peak)[1]
        frac = min(frac, 64)
        fmt = cls(frac, total_bits)
        while np.floor(peak * 2.0**fmt.frac_bits + 0.5) > fmt.max_int:
            fmt = cls(fmt.frac_bits - 1, total_bits)
        return fmt


def superpose(d_int: np.ndarray, coefs: np.ndarray) -> np.ndarray:
    """``Y = sum_g sum_h coefs[g, h] * d_int[g, h]`` for ``d_int`` of shape (G, H, ...).

    Refuses a sum that ``d_int``'s values could carry past
    :data:`ACCUMULATOR_LIMIT_BITS` rather than let int64 wrap.
    """
    d_int = _check_int64(d_int, "d_int")
    if d_int.ndim < 2:
        raise ValueError(f"d_int must have shape (G, H, ...), got {d_int.shape}")
    coefs = check_coefs(coefs, *d_int.shape[:2])
    if d_int.size:
        axes = tuple(range(2, d_int.ndim))
        hi, lo = d_int.max(axis=axes), d_int.min(axis=axes)
        bound = sum(abs(int(c)) * max(int(h), -int(l)) for c, h, l in zip(coefs.flat, hi.flat, lo.flat))
        if signed_bits(bound) > ACCUMULATOR_LIMIT_BITS:
            _refuse_width(signed_bits(bound), f"largest |Y| up to {bound}")
    return np.einsum("gh,gh...->...", coefs, d_int)


def group_products(groups_x: Sequence[Operand], groups_y: Sequence[Operand]) -> np.ndarray:
    """``D_int`` of every group pair: shape ``(G, H, rows_x, rows_y)``."""
    if not groups_x or not groups_y:
        raise ValueError("groups_x and groups_y must each hold at least one Operand")
    return np.stack([np.stack([operand_product(gx, gy) for gy in groups_y]) for gx in groups_x])


def layer_output(
    groups_x: Sequence[Operand], groups_y: Sequence[Operand], coefs: np.ndarray
) -> np.ndarray:
    """The integer layer output ``Y`` of two superposed operands (checked by :func:`check_layer`)."""
    groups_x, groups_y = check_groups(groups_x, "groups_x"), check_groups(groups_y, "groups_y")
    coefs, _ = check_layer(groups_x, groups_y, coefs)
    return superpose(group_products(groups_x, groups_y), coefs)


# --------------------------------------------------------------------------
# thresholds for binary outputs


def fold_threshold(
    scale: np.ndarray, bias: np.ndarray, y_min: int, y_max: int
) -> tuple[np.ndarray, np.ndarray]:
    """Fold ``[scale*Y + bias >= 0]`` into ``[direction*Y >= threshold]``.

    ``scale`` and ``bias`` are per output channel (broadcast to one shape);
    the predicate is evaluated in float64 and ``Y`` ranges over the integers
    ``y_min..y_max`` (the accumulator's range).  Returns int64 thresholds and
    int8 directions (+1 or -1).  For ``scale == 0`` the bit is constant: the
    threshold is ``y_min`` (always 1) or ``y_max + 1`` (always 0).
    """
    scale, bias = np.broadcast_arrays(np.asarray(scale, np.float64), np.asarray(bias, np.float64))
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(bias))):
        raise ValueError("scale and bias must be finite")
    if y_min > y_max:
        raise ValueError(f"y_min must be <= y_max, got {y_min} > {y_max}")
    thresholds = np.empty(scale.shape, dtype=np.int64)
    directions = np.empty(scale.shape, dtype=np.int8)
    for idx in np.ndindex(scale.shape):
        s, b = float(scale[idx]), float(bias[idx])
        holds = lambda y: s * float(y) + b >= 0.0  # noqa: E731 - the reference predicate
        if s == 0.0:
            directions[idx], thresholds[idx] = 1, (y_min if b >= 0.0 else y_max + 1)
            continue
        # The predicate is monotone in Y; start from the real root and step to
        # the exact boundary of the float64 predicate.
        # (clamped to the range first: a tiny scale puts the root at infinity)
        root = min(max(-b / s, y_min - 1.0), y_max + 1.0)
        if s > 0:
            t = int(min(max(math.ceil(root), y_min), y_max + 1))
            while t > y_min and holds(t - 1):
                t -= 1
            while t <= y_max and not holds(t):
                t += 1
            directions[idx], thresholds[idx] = 1, t
        else:
            last = int(min(max(math.floor(root), y_min - 1), y_max))  # largest Y that holds
            while last < y_max and holds(last + 1):
                last += 1
            while last >= y_min and not holds(last):
                last -= 1
            directions[idx], thresholds[idx] = -1, -last
    return thresholds, directions


def apply_threshold(y: np.ndarray, thresholds: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """The hardware's compare: ``bit = direction*Y >= threshold`` (uint8), checked by :func:`check_thresholds`."""
    y = _check_int64(y, "y")
    thresholds, directions = check_thresholds(thresholds, directions)
    return (directions * y >= thresholds).astype(np.uint8)
