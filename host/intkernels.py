"""Compiled integer steps of the integer-only ViT, equal to :mod:`model.intops`.

:func:`model.intvit.forward` takes its non-product steps from an
:class:`~model.intvit.IntegerOps`; :mod:`model.intops` is the contract's
definition, written as whole-array numpy expressions that are easy to check
against their docstrings.  On a batch of small tokens those expressions pay
numpy's per-call cost many times over (the multi-threshold one compare per
level, the square root 31 passes), so this module computes the same integers
with one numba loop per step, row by row, everything in registers.  The
tests compare every function here with its :mod:`model.intops` twin on
random and extreme inputs.

``saturate`` and ``requantize`` are :mod:`model.intops`'s own: single numpy
expressions already.  Inputs are checked as :mod:`model.intops` checks them
(integer arrays); the value bounds are the program's, checked when it was
compiled (:func:`model.intvit.check_bounds`).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from numba import njit

from model import intops
from model.intops import int_array, requantize, saturate

__all__ = ["attention_codes", "code_dtype", "layer_norm", "multithreshold", "requantize", "saturate"]


@njit(nogil=True, cache=True)
def _multithreshold(y, base, hi_t, lo_t, out):
    """``out[r, c] = base + #{k: y[r, c] >= hi_t[k, c]} + #{k: y[r, c] <= lo_t[k, c]}``.

    The innermost loop runs over channels with the compares cast to int64,
    a loop LLVM vectorizes (on bools and with row views it did not: 6x slower).
    """
    channels = y.shape[1]
    for r in range(y.shape[0]):
        for c in range(channels):
            out[r, c] = base
        for k in range(hi_t.shape[0]):
            for c in range(channels):
                v = y[r, c]
                out[r, c] += np.int8(v >= hi_t[k, c]) + np.int8(v <= lo_t[k, c])


def code_dtype(low: int, high: int) -> type[np.signedinteger]:
    """int8 for codes in ``low..high`` that fit it, else int64.

    Codes are only packed into operand planes: an eighth of the bytes to
    write and to read again, which matters more than any arithmetic here.
    """
    return np.int8 if -128 <= low and high <= 127 else np.int64


def multithreshold(y: np.ndarray, base: int, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """:func:`model.intops.multithreshold`, the codes as :func:`code_dtype` of their range."""
    y, hi, lo = int_array(y, "y"), int_array(hi, "hi"), int_array(lo, "lo")
    if hi.ndim != 2 or hi.shape != lo.shape or hi.shape[0] != y.shape[-1]:
        raise ValueError(f"hi and lo must both be (channels={y.shape[-1]}, K), got {hi.shape} and {lo.shape}")
    out = np.empty(y.shape, code_dtype(base, base + 2 * hi.shape[1]))
    _multithreshold(np.ascontiguousarray(y).reshape(-1, y.shape[-1]), np.int64(base), np.ascontiguousarray(hi.T), np.ascontiguousarray(lo.T),
                    out.reshape(-1, y.shape[-1]))
    return out


@njit(nogil=True, cache=True)
def _isqrt(v):
    """``floor(sqrt(v))`` for 0 <= v < 2**62: the float root, then corrected to the exact one."""
    r = np.int64(math.sqrt(np.float64(v)))
    while r * r > v:
        r -= 1
    while (r + 1) * (r + 1) <= v:
        r += 1
    return r


@njit(nogil=True, cache=True)
def _layer_norm(x, gain, bias, eps, out):
    """Row by row: the sums, the exact root, then ``floor(u * gain / sigma)`` without an integer division.

    ``|u| <= sigma`` (sigma is the root of a sum that holds ``u**2``), so the
    quotient is at most ``|gain|``: for gains below 2**50 its float estimate
    is off by at most one, and two integer compares correct it (an integer division costs tens
    of cycles and does not vectorize).
    """
    d = x.shape[1]
    for r in range(x.shape[0]):
        s = np.int64(0)
        for c in range(d):
            s += x[r, c]
        v = np.int64(eps)
        for c in range(d):
            u = d * x[r, c] - s
            v += u * u
        sigma = _isqrt(v)
        inverse = 1.0 / np.float64(sigma)
        for c in range(d):
            num = (d * x[r, c] - s) * gain[c]
            q = np.int64(math.floor(np.float64(num) * inverse))
            q += np.int64((q + 1) * sigma <= num) - np.int64(q * sigma > num)
            out[r, c] = q + bias[c]


def layer_norm(x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: int) -> np.ndarray:
    """:func:`model.intops.layer_norm`."""
    x, gain, bias = int_array(x, "x"), int_array(gain, "gain"), int_array(bias, "bias")
    if eps < 1:
        raise ValueError(f"eps must be >= 1, got {eps}")
    d = x.shape[-1]
    if gain.shape != (d,) or bias.shape != (d,):
        raise ValueError(f"gain and bias must be ({d},), got {gain.shape} and {bias.shape}")
    if gain.size and np.abs(gain).max() >= 1 << 50:  # past the float estimate's one-off bound: the definition
        return intops.layer_norm(x, gain, bias, eps)
    out = np.empty(x.shape, np.int64)
    _layer_norm(np.ascontiguousarray(x).reshape(-1, d), np.ascontiguousarray(gain), np.ascontiguousarray(bias),
                np.int64(eps), out.reshape(-1, d))
    return out


@njit(nogil=True, cache=True)
def _attention_codes(scores, table, thresholds, frac_bits, group_of_level, out):
    """Per row of scores (B, H, T, T): the integer softmax's exps, then the level compares summed per group."""
    last = table.shape[0] - 1
    cols = scores.shape[3]
    e = np.empty(cols, np.int64)
    for b in range(scores.shape[0]):
        for h in range(scores.shape[1]):
            for i in range(scores.shape[2]):
                top = scores[b, h, i, 0]
                for j in range(1, cols):
                    top = max(top, scores[b, h, i, j])
                z = np.int64(0)
                for j in range(cols):
                    e[j] = table[min(top - scores[b, h, i, j], last)] << frac_bits
                    z += table[min(top - scores[b, h, i, j], last)]
                for g in range(out.shape[0]):
                    for j in range(cols):
                        out[g, b, h, i, j] = 0
                for level in range(thresholds.shape[0]):
                    g = group_of_level[level]
                    for j in range(cols):
                        out[g, b, h, i, j] += e[j] >= thresholds[level, h, i, j] * z


def attention_codes(scores: np.ndarray, table: np.ndarray, level_thresholds: np.ndarray, frac_bits: int,
                    counts: Sequence[int]) -> np.ndarray:
    """:func:`model.intops.attention_codes` for thresholds ``(levels, *scores.shape[-3:])`` (heads, rows, cols), as :func:`code_dtype`."""
    s, table, thresholds = int_array(scores, "scores"), int_array(table, "table"), int_array(level_thresholds, "level_thresholds")
    if s.ndim < 3 or thresholds.shape[1:] != s.shape[-3:]:
        raise ValueError(f"level_thresholds must be (levels, {', '.join(map(str, s.shape[-3:]))}), got {thresholds.shape}")
    if sum(counts) != len(thresholds) or min(counts, default=0) < 1:
        raise ValueError(f"counts {list(counts)} must be >= 1 each and sum to the {len(thresholds)} level thresholds")
    group_of_level = np.repeat(np.arange(len(counts)), counts)
    out = np.empty((len(counts), *s.shape), code_dtype(0, max(counts)))
    flat = (-1, *s.shape[-3:])
    _attention_codes(np.ascontiguousarray(s).reshape(flat), np.ascontiguousarray(table), np.ascontiguousarray(thresholds),
                     np.int64(frac_bits), group_of_level, out.reshape(len(counts), *flat))
    return out
