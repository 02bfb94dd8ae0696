"""The EmulatorBackend: the accelerator's operations computed by the golden model.

Its numbers are the numeric contract's by construction.  ``kernel="fast"``
computes the plane products with the compiled packed kernel
(:mod:`host.kernels`, tested equal to the reference); ``"reference"`` uses
:mod:`model.golden` itself.  The cycle counter counts the lane work of the
accelerator's cycle model (:func:`hw.cycles.ideal_cycles`) for ``lanes``
lanes, by default the default configuration's (:data:`hw.config.DEFAULT`).

:meth:`EmulatorBackend.layers` (the batched entry of :class:`~host.backend.Backend`)
computes a whole stack of layers in one kernel call per group pair with the
fast kernel; with the reference kernel it runs them one by one.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from host.backend import Backend, OperandStack, Thresholds, check_stacks, threshold_arrays
from hw.config import DEFAULT
from hw.cycles import ideal_cycles
from model import golden
from model.golden import Operand


def fast_layer_output(groups_x, groups_y, coefs: np.ndarray) -> np.ndarray:
    """:func:`host.kernels.fast_layer_output`, imported when first used (numba loads then)."""
    from host.kernels import fast_layer_output as layer_output

    return layer_output(groups_x, groups_y, coefs)


def prepare(groups: Sequence[Operand], slot: str) -> tuple:
    """:func:`host.kernels.prepare` of every group, imported when first used."""
    from host.kernels import prepare as prepare_operand

    return tuple(prepare_operand(op, f"slot {slot!r}[{g}]") for g, op in enumerate(groups))


def _kernel(name: str) -> Callable[[Operand, Operand], np.ndarray]:
    if name == "reference":
        return golden.operand_product
    if name == "fast":
        from host.kernels import fast_operand_product

        return fast_operand_product
    raise ValueError(f"kernel must be 'fast' or 'reference', got {name!r}")


class EmulatorBackend(Backend):
    """A Backend computed in numpy by the numeric contract."""

    def __init__(self, kernel: str = "fast", lanes: int = DEFAULT.lanes):
        if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
            raise ValueError(f"lanes must be a positive int, got {lanes!r}")
        self._product = _kernel(kernel)
        self.kernel = kernel
        self.lanes = lanes
        self._slots: dict[str, tuple[Operand, ...]] = {}
        #: the fast kernel's words of each slot, prepared when it is loaded
        self._prepared: dict[str, tuple] = {}
        self._result: np.ndarray | None = None
        self._cycles = 0

    def load(self, slot: str, groups: Sequence[Operand]) -> None:
        self._slots[slot] = golden.check_groups(groups, f"slot {slot!r}")
        if self.kernel == "fast":
            self._prepared[slot] = prepare(self._slots[slot], slot)

    def _slot(self, slot: str) -> tuple[Operand, ...]:
        if slot not in self._slots:
            raise KeyError(f"slot {slot!r} was never loaded")
        return self._slots[slot]

    def run(self, x_slot: str, y_slot: str, coefs: np.ndarray, thresholds: Thresholds | None = None) -> None:
        gx, gy = self._slot(x_slot), self._slot(y_slot)
        coefs, thr = golden.check_layer(gx, gy, coefs, threshold_arrays(thresholds))
        if self.kernel == "fast":
            y = fast_layer_output(self._prepared[x_slot], self._prepared[y_slot], coefs)
        else:
            y = golden.superpose(np.stack([np.stack([self._product(x, w) for w in gy]) for x in gx]), coefs)
        if thr is not None:
            y = golden.apply_threshold(y, *thr)
        self._result = y
        self._cycles += ideal_cycles(gx, gy, self.lanes)

    def layers(
        self,
        x_slot: str,
        xs: Sequence[OperandStack],
        y_slot: str,
        ys: Sequence[OperandStack] | None,
        coefs: np.ndarray,
        thresholds: Thresholds | None = None,
    ) -> np.ndarray:
        if self.kernel != "fast":
            return super().layers(x_slot, xs, y_slot, ys, coefs, thresholds)
        lead = check_stacks(xs, ys)
        first = tuple(0 for _ in lead)
        gy = self._slot(y_slot) if ys is None else [g.item(first) for g in ys]
        coefs, thr = golden.check_layer([g.item(first) for g in xs], gy, coefs, threshold_arrays(thresholds))
        if ys is None:  # resident y: the stacked x rows are the rows of one operand
            flat = [Operand(g.encoding, g.n, g.word_bits, tuple(
                golden.PackedPlane(p.kind, p.weight, *(None if a is None else a.reshape(-1, a.shape[-1]) for a in (p.sign, p.mask)))
                for p in g.planes)) for g in xs]
            y = fast_layer_output(flat, self._prepared[y_slot], coefs).reshape(lead + (xs[0].rows, -1))
        else:
            gy = ys
            y = fast_layer_output(xs, ys, coefs)
        if thr is not None:
            y = golden.apply_threshold(y, *thr)
        self._result = y[tuple(d - 1 for d in lead)]
        self._cycles += math.prod(lead) * ideal_cycles(xs, gy, self.lanes)
        return y

    def reset(self) -> None:
        self._slots.clear()
        self._prepared.clear()
        self._result = None
        self._cycles = 0
