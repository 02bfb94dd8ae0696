"""Run a model's integer program (:mod:`model.intvit`) with its products on a Backend.

Every engine product of the program (the 8-bit patch embedding and heads,
the binary block layers, ``Q K^T`` and ``A V``) is packed into operand
planes and computed by the Backend; every other step is an integer operation
of :mod:`model.intops` on the host.  Nothing between the raw pixels and the
class index is a float: :attr:`IntegerRuntime.float_steps` counts the steps
whose result was not an integer array (it is 0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from host.backend import Backend, OperandStack
from host import intkernels
from model import intops, intvit
from model.golden import Encoding, Operand
from model.intvit import INT8
from model.layers import EngineLinear


class BackendEngine:
    """An :class:`model.intvit.Engine` whose products run on a Backend.

    Weights are loaded once (slot ``<layer>.w``); each call loads the
    activations (``<layer>.x``, and ``<layer>.y`` for a matmul).  A linear
    layer is one backend layer over the rows of every image; a matmul is one
    :meth:`Backend.layers` call over every leading index (image and head),
    which the EmulatorBackend computes at once and a device item by item.
    """

    def __init__(self, prog: intvit.IntegerProgram, backend: Backend):
        self.prog, self.backend = prog, backend
        self.word_bits = prog.model.word_bits
        self._layers: dict[str, tuple] = {}
        for name in intvit.linear_names(prog.model.architecture, prog.head_names):
            layer = prog.model.layers.get(name)
            if isinstance(layer, EngineLinear):
                weights = [w.operand for w in layer.weights]
            else:  # the 8-bit patch embedding (one product per channel) and heads
                weights = [Operand.from_values(prog.engine_layer(name)[1][0], INT8, self.word_bits)]
            backend.load(f"{name}.w", weights)

    def _pack(self, codes: Sequence[np.ndarray], encodings: Sequence[Encoding]) -> list[Operand]:
        """Operands of 2-D codes, packed by the compiled packer (equal to :meth:`Operand.from_values`)."""
        return [OperandStack.from_values(c, e, self.word_bits).item(()) for c, e in zip(codes, encodings)]

    def _layer(self, name: str) -> tuple:
        """``(x encodings, y encodings or weights, coefficients)`` of a layer, computed once."""
        if name not in self._layers:
            self._layers[name] = self.prog.engine_layer(name)
        return self._layers[name]

    def linear(self, name: str, xs: Sequence[np.ndarray]) -> np.ndarray:
        x_enc, _, coefs = self._layer(name)
        self.backend.load(f"{name}.x", self._pack(xs, x_enc))
        return self.backend.layer(f"{name}.x", f"{name}.w", coefs)

    def matmul(self, name: str, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> np.ndarray:
        x_enc, y_enc, coefs = self._layer(name)

        def stack(codes: Sequence[np.ndarray], encs: Sequence[Encoding]) -> list[OperandStack]:
            return [OperandStack.from_values(c, e, self.word_bits) for c, e in zip(codes, encs)]

        return self.backend.layers(f"{name}.x", stack(xs, x_enc), f"{name}.y", stack(ys, y_enc), coefs)


class IntegerRuntime:
    """Executes an integer program on a Backend, image batch by image batch.

    ``trace``, when true, keeps every step's integers of the last batch in
    :attr:`last_trace` (``model.intvit.Trace.values``).
    """

    def __init__(self, prog: intvit.IntegerProgram, backend: Backend, trace: bool = False):
        self.prog, self.backend = prog, backend
        self.engine = BackendEngine(prog, backend)
        self.keep = trace
        self.steps = 0
        self.float_steps = 0
        self.last_trace: dict[str, np.ndarray] | None = None

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Integer logits (B, classes) of raw pixel images (B, C, H, W)."""
        trace = intvit.Trace(keep=self.keep)
        logits = intvit.forward(self.prog, images, self.engine, trace, ops=intkernels)
        self.steps += trace.steps
        self.float_steps += trace.float_steps
        self.last_trace = trace.values
        return logits

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class indices (B,) of raw pixel images: the lowest index of the largest integer logit."""
        return intops.argmax(self.logits(images))
