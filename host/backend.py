"""The operations the accelerator offers, as one interface for every backend.

A backend holds named operand *slots*.  The host loads operand planes into a
slot (weights once, they stay resident; activations with every image), runs a
layer, the superposed product of two slots, and reads the result and the
cycle counter.  The numbers are the numeric contract's
(:mod:`model.golden`): a layer's result is the integer ``Y = sum_g sum_h
coefs[g, h] * D_int_gh`` of shape ``(rows_x, rows_y)``, or the bits
``direction*Y >= threshold`` when thresholds are given (one per column).

:meth:`Backend.layers` is the batched entry: many layers of one shape at
once, operands stacked on leading axes (:class:`OperandStack`), e.g. every
head of every image of an attention product.  By default it loads and runs
the items one by one, which is what a device does; the EmulatorBackend
computes the whole stack in one kernel call.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from model.golden import (
    DEFAULT_WORD_BITS,
    Encoding,
    Operand,
    PackedPlane,
    check_word_bits,
    pack_planes,
)


@dataclass(frozen=True)
class Thresholds:
    """Per-output-column integer thresholds and directions for binary outputs."""

    thresholds: np.ndarray
    directions: np.ndarray


@dataclass(frozen=True)
class OperandStack:
    """Operands of one encoding, length and row count, stacked on leading axes.

    Every plane array has shape ``(*lead, rows, words)``; item ``idx`` of the
    leading axes (:meth:`item`) is the :class:`~model.golden.Operand` that
    :meth:`Operand.from_values` gives for the values at ``idx``.
    """

    encoding: Encoding
    n: int
    word_bits: int
    planes: tuple[PackedPlane, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        """``(*lead, rows)``."""
        first = self.planes[0]
        return (first.sign if first.sign is not None else first.mask).shape[:-1]

    @property
    def lead(self) -> tuple[int, ...]:
        """The leading (stack) axes."""
        return self.shape[:-1]

    @property
    def rows(self) -> int:
        """Rows of each stacked operand."""
        return self.shape[-1]

    @classmethod
    def from_values(cls, values: np.ndarray, encoding: Encoding | str, word_bits: int = DEFAULT_WORD_BITS) -> OperandStack:
        """Encode and pack integer values ``(*lead, rows, n)``, as :meth:`Operand.from_values` per item.

        The vectorized packer (:func:`host.kernels.fast_pack`) does it in a
        few passes over the values; the numpy code below is the same rule, for
        a big-endian machine.
        """
        if isinstance(encoding, str):
            encoding = Encoding.parse(encoding)
        if not isinstance(encoding, Encoding):
            raise TypeError(f"encoding must be an Encoding or str, got {type(encoding).__name__}")
        if not isinstance(values, np.ndarray) or values.dtype.kind not in "biu":
            encoding.check_values(values)  # raises the contract's TypeError
        if values.ndim < 2 or 0 in values.shape:
            raise ValueError(f"values must be a non-empty array (*lead, rows, n), got shape {values.shape}")
        word_bits = check_word_bits(word_bits)
        # one compiled pass; numba loads on first use
        from host.kernels import fast_pack

        planes = fast_pack(values, encoding, word_bits)
        if planes is not None:
            return cls(encoding, values.shape[-1], word_bits, planes)
        return cls(encoding, values.shape[-1], word_bits, pack_planes(encoding.check_values(values), encoding, word_bits))

    def item(self, idx: tuple[int, ...]) -> Operand:
        """The operand at leading index ``idx``."""
        if len(idx) != len(self.lead):
            raise IndexError(f"an item needs {len(self.lead)} leading indices, got {idx}")
        planes = tuple(
            PackedPlane(p.kind, p.weight, None if p.sign is None else p.sign[idx], None if p.mask is None else p.mask[idx])
            for p in self.planes
        )
        return Operand(self.encoding, self.n, self.word_bits, planes)


def check_stacks(xs: Sequence[OperandStack], ys: Sequence[OperandStack] | None) -> tuple[int, ...]:
    """The common leading axes of stacked operand groups, or a TypeError/ValueError."""
    groups = list(xs) + list(ys or [])
    if not xs or (ys is not None and not ys) or not all(isinstance(g, OperandStack) for g in groups):
        raise TypeError("xs (and ys when given) must be non-empty sequences of OperandStack")
    lead = xs[0].lead
    if any(g.lead != lead for g in groups):
        raise ValueError(f"stacked groups must share their leading axes, got {[g.lead for g in groups]}")
    return lead


def threshold_arrays(thresholds: Thresholds | None) -> tuple[np.ndarray, np.ndarray] | None:
    """A run's ``(thresholds, directions)`` for :func:`model.golden.check_layer`, or None."""
    if thresholds is None:
        return None
    if not isinstance(thresholds, Thresholds):
        raise TypeError(f"thresholds must be a Thresholds or None, got {type(thresholds).__name__}")
    return thresholds.thresholds, thresholds.directions


class Backend(abc.ABC):
    """What the host runtime asks of an accelerator (emulated, simulated or real).

    A subclass keeps the last layer's result in ``_result`` and its cycle
    count in ``_cycles``, which :meth:`read` and :meth:`cycles` return.
    """

    _result: np.ndarray | None = None
    _cycles: int = 0

    @abc.abstractmethod
    def load(self, slot: str, groups: Sequence[Operand]) -> None:
        """Store the operand groups in ``slot``, replacing what it held."""

    @abc.abstractmethod
    def run(
        self, x_slot: str, y_slot: str, coefs: np.ndarray, thresholds: Thresholds | None = None
    ) -> None:
        """Compute the layer ``x_slot`` x ``y_slot`` with integer ``coefs`` (G, H)."""

    def read(self) -> np.ndarray:
        """The last layer's result: int64 ``Y`` or uint8 bits, ``(rows_x, rows_y)``."""
        if self._result is None:
            raise RuntimeError("no layer has run since the last reset")
        return self._result

    def cycles(self) -> int:
        """Cycles the backend has counted since the last :meth:`reset`."""
        return self._cycles

    @abc.abstractmethod
    def reset(self) -> None:
        """Clear every slot, the result and the cycle counter."""

    def layer(
        self,
        x_slot: str,
        y_slot: str,
        coefs: np.ndarray,
        thresholds: Thresholds | None = None,
    ) -> np.ndarray:
        """Run a layer and read its result."""
        self.run(x_slot, y_slot, coefs, thresholds)
        return self.read()

    def layers(
        self,
        x_slot: str,
        xs: Sequence[OperandStack],
        y_slot: str,
        ys: Sequence[OperandStack] | None,
        coefs: np.ndarray,
        thresholds: Thresholds | None = None,
    ) -> np.ndarray:
        """A layer for every leading index of stacked groups: results ``(*lead, rows_x, rows_y)``.

        Item ``idx`` is the layer of ``[g.item(idx) for g in xs]`` loaded into
        ``x_slot`` times, with ``ys``, ``[g.item(idx) for g in ys]`` loaded
        into ``y_slot`` (same leading axes), or without, what ``y_slot``
        holds (resident weights).  The results equal those item by item,
        and so do the cycles counted.  This default does exactly that, one
        ``load``/``layer`` per item, so every backend offers it; a backend
        may compute the stack at once.  Afterwards ``read`` gives the last
        item's result, and what ``x_slot`` (and ``y_slot`` when ``ys`` is
        given) hold is unspecified.
        """
        lead = check_stacks(xs, ys)
        out = None
        for idx in np.ndindex(lead):
            self.load(x_slot, [g.item(idx) for g in xs])
            if ys is not None:
                self.load(y_slot, [g.item(idx) for g in ys])
            result = self.layer(x_slot, y_slot, coefs, thresholds)
            if out is None:
                out = np.empty(lead + result.shape, result.dtype)
            out[idx] = result
        assert out is not None
        return out
