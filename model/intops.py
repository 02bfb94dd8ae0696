"""The integer operations of the whole-model contract, in plain numpy int64.

:mod:`model.golden` defines the engine's products; this module defines every
other operation of an integer-only ViT (:mod:`model.intvit`): the requantizer
that moves an engine output into the residual stream, saturation, the
multi-threshold that turns an integer into a quantizer's codes, the integer
LayerNorm and the integer softmax-to-attention-levels.  Every function takes
and returns int64 arrays; nothing here touches a float.  The rounding of each
step is stated where it happens, and ``docs/numeric-contract.md`` works an
example of each.

The bounds that make int64 safe are checked when a program is compiled
(:mod:`model.intvit`): each function here documents the bound it needs.
"""

from __future__ import annotations

import numpy as np

INT64_SAFE_BITS = 62  #: every intermediate stays below 2**62 in magnitude


def int_array(x: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray) or x.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer numpy array, got {getattr(x, 'dtype', type(x).__name__)}")
    return x.astype(np.int64, copy=False)


def signed_range(bits: int) -> tuple[int, int]:
    """The two's complement range of a ``bits``-wide signed integer."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def saturate(x: np.ndarray, bits: int) -> np.ndarray:
    """Clip to the signed ``bits``-wide range (the residual stream saturates, it never wraps)."""
    lo, hi = signed_range(bits)
    return np.clip(int_array(x, "x"), lo, hi)


def requantize(y: np.ndarray, multiplier: np.ndarray | int, shift: int) -> np.ndarray:
    """``round(y * multiplier / 2**shift)``, half rounded up: ``(y*m + 2**(shift-1)) >> shift``.

    ``>>`` is numpy's arithmetic shift, so the division floors; adding half
    first makes it round half up (towards +inf), for negative values too.
    ``multiplier`` broadcasts against the last axis (one per channel) or is a
    scalar; ``shift`` >= 0.  Needs ``|y * multiplier| < 2**62``.
    """
    y = int_array(y, "y")
    m = np.asarray(multiplier, dtype=np.int64)
    if shift < 0:
        raise ValueError(f"shift must be >= 0, got {shift}")
    if shift == 0:
        return y * m
    return (y * m + (1 << (shift - 1))) >> shift


def multithreshold(y: np.ndarray, base: int, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Codes ``base + #{k: y >= hi[c, k]} + #{k: y <= lo[c, k]}`` per channel ``c`` (the last axis).

    Every quantizer rule of the contract on an integer input is one of these
    (FINN's MultiThreshold, with a second set of thresholds counted from
    below so that a non-monotone function such as GELU folds exactly):
    a sign is ``base=-1`` with the same ``hi`` twice, a step ``base=0`` with
    one ``hi``, a ternary ``base=-1`` with two ``hi``.  A ``lo`` below the
    input's range (or a ``hi`` above it) never counts.  ``hi`` and ``lo``
    have shape (channels, K) with the same K.
    """
    y = int_array(y, "y")
    hi, lo = int_array(hi, "hi"), int_array(lo, "lo")
    codes = np.full(y.shape, base, dtype=np.int64)
    for k in range(hi.shape[-1]):  # one compare per level: memory stays the input's size
        codes += y >= hi[:, k]
        codes += y <= lo[:, k]
    return codes


def isqrt(v: np.ndarray) -> np.ndarray:
    """``floor(sqrt(v))`` of non-negative int64 values below 2**62, exactly.

    The digit-by-digit (restoring) square root: 31 steps of compare and
    subtract, one result bit per step, integers only, as a gateware unit
    would compute it.
    """
    v = int_array(v, "v").copy()
    if v.size and (v.min() < 0 or v.max() >= 1 << INT64_SAFE_BITS):
        raise ValueError("isqrt needs 0 <= v < 2**62")
    root = np.zeros_like(v)
    bit = np.int64(1 << (INT64_SAFE_BITS - 2))  # the largest power of four below 2**62
    while bit:
        trial = root + bit
        take = v >= trial
        v = np.where(take, v - trial, v)
        root = np.where(take, (root >> 1) + bit, root >> 1)
        bit >>= 2
    return root


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: int) -> np.ndarray:
    """Integer LayerNorm over the last axis (``d`` channels) with its affine part.

    With ``S = sum_c x_c``, ``u_c = d*x_c - S`` (d times the centred value),
    ``V = sum_c u_c**2 + eps`` and ``sigma = isqrt(V)`` (floor):
    ``out_c = floor(u_c * gain_c / sigma) + bias_c``.

    Why this equals LayerNorm: ``u_c / sqrt(V/d)`` is the normalised value
    ``(x_c - mean) / sqrt(var + eps')``, so a gain ``gamma_c * sqrt(d) * 2**F``
    and a bias ``beta_c * 2**F`` give the affine output with F fraction bits.
    ``eps`` (>= 1) is the float epsilon in these units (``eps' * d**3`` times
    the input's scale squared), so ``sigma`` is never 0, even for a token of
    identical values.  Needs ``sum u**2 + eps < 2**62`` and
    ``|u * gain| < 2**62``.
    """
    x = int_array(x, "x")
    gain, bias = int_array(gain, "gain"), int_array(bias, "bias")
    if eps < 1:
        raise ValueError(f"eps must be >= 1, got {eps}")
    d = x.shape[-1]
    u = d * x - x.sum(axis=-1, keepdims=True)
    sigma = isqrt((u * u).sum(axis=-1, keepdims=True) + eps)
    return (u * gain) // sigma + bias


def exp_table(score_frac_bits: int, exp_frac_bits: int, max_len: int = 4096) -> np.ndarray:
    """The integer exp table: ``round(2**E * exp(-k / 2**S))`` for k = 0 .. until it rounds to 0.

    Computed once (float64, at compile time) and stored as integers; the last
    entry is 0, so a clamped index past the end reads 0.  Rounding half up.
    """
    k = np.arange(max_len, dtype=np.float64)
    table = np.floor(np.exp(-k / 2.0**score_frac_bits) * 2.0**exp_frac_bits + 0.5).astype(np.int64)
    zeros = np.flatnonzero(table == 0)
    if not zeros.size:
        raise ValueError(f"exp table longer than {max_len} entries for score_frac_bits={score_frac_bits}")
    return table[: zeros[0] + 1]


def softmax_exp(scores: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The integer exps of a softmax over the last axis and their row sums ``(e, Z)``.

    ``scores`` are integers with the table's fraction bits.  Per row:
    ``k_j = min(max_j s - s_j, len(table) - 1)``, ``e_j = table[k_j]``, so
    ``e_j / Z`` is the softmax; ``Z = sum_j e_j`` keeps its axis.
    """
    s = int_array(scores, "scores")
    table = int_array(table, "table")
    k = np.minimum(s.max(axis=-1, keepdims=True) - s, len(table) - 1)
    e = table[k]
    return e, e.sum(axis=-1, keepdims=True)


def softmax_level(e: np.ndarray, z: np.ndarray, threshold: np.ndarray, frac_bits: int) -> np.ndarray:
    """One attention level: ``[e * 2**frac_bits >= A * Z]`` (0/1), i.e. ``softmax >= A / 2**frac_bits``.

    ``threshold`` ``A`` broadcasts against ``e``: with ``A = ceil((t - offset) *
    2**frac_bits)`` the bit says ``softmax + offset >= t``.  Needs
    ``e * 2**frac_bits`` and ``|A| * Z`` below 2**62.
    """
    return (int_array(e, "e") << frac_bits >= int_array(threshold, "threshold") * int_array(z, "z")).astype(np.int64)


def softmax_levels(scores: np.ndarray, table: np.ndarray, level_thresholds: np.ndarray, frac_bits: int) -> np.ndarray:
    """Softmax over the last axis followed by the unipolar level compares of :func:`softmax_level`.

    ``level_thresholds`` (levels, ...) holds one threshold array per level;
    returns the bits (levels, ..., rows, cols).
    """
    e, z = softmax_exp(scores, table)
    return np.stack([softmax_level(e, z, a, frac_bits) for a in int_array(level_thresholds, "level_thresholds")])


def attention_codes(scores: np.ndarray, table: np.ndarray, level_thresholds: np.ndarray, frac_bits: int,
                    counts: list[int] | tuple[int, ...]) -> np.ndarray:
    """The attention map's codes per group ``(groups, ..., rows, cols)``: the levels of :func:`softmax_levels` summed by group.

    Group ``g`` owns the next ``counts[g]`` thresholds, and its code counts
    those passed: 0/1 for a GSB step, ``0..2**b - 1`` for a ``uint<b>`` map.
    """
    if sum(counts) != len(level_thresholds) or min(counts, default=0) < 1:
        raise ValueError(f"counts {list(counts)} must be >= 1 each and sum to the {len(level_thresholds)} level thresholds")
    levels = softmax_levels(scores, table, level_thresholds, frac_bits)
    ends = np.cumsum(counts)
    return np.stack([levels[end - count:end].sum(axis=0) for count, end in zip(counts, ends)])


def argmax(logits: np.ndarray) -> np.ndarray:
    """Index of the largest integer logit on the last axis; the lowest index wins a tie."""
    return np.argmax(int_array(logits, "logits"), axis=-1)
