"""The operations the accelerator offers, as one interface for every backend.

A backend holds named operand *slots*.  The host loads operand planes into a
slot (weights once, they stay resident; activations with every image), runs a
layer, the superposed product of two slots, and reads the result and the
cycle counter.  The numbers are the numeric contract's
(:mod:`model.golden`): a layer's result is the integer ``Y = sum_g sum_h
coefs[g, h] * D_int_gh`` of shape ``(rows_x, rows_y)``, or the bits
``direction*Y >= threshold`` when thresholds are given (one per column).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from model.golden import Operand


@dataclass(frozen=True)
class Thresholds:
    """Per-output-column integer thresholds and directions for binary outputs."""

    thresholds: np.ndarray
    directions: np.ndarray


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
