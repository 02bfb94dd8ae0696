"""The engine layers of the default model, as the host runtime calls them.

The RTL's workload is :func:`model.random_model.random_model`: ViT-shaped
with seeded random planes (TINY architecture, 18 tokens, dim 32, 2 heads),
so the testbenches and ``bench.rtl_cycles`` need no trained model and every
run measures the same layers.  :func:`model_layers` runs one random image
through :class:`host.runtime.Runtime` on a recording
:class:`host.emulator.EmulatorBackend` and returns every engine call with its
operands, coefficients and the emulator's result, which is the reference the
RTL must equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from host.backend import Thresholds
from host.emulator import EmulatorBackend
from host.runtime import Runtime
from model.golden import Operand
from model.random_model import TINY, random_model


@dataclass(frozen=True)
class LayerCall:
    """One backend ``run``: ``name`` is the layer (``#k`` for its k-th call, e.g. a head)."""

    name: str
    groups_x: tuple[Operand, ...]
    groups_y: tuple[Operand, ...]
    coefs: np.ndarray
    thresholds: Thresholds | None
    result: np.ndarray


class _Recorder(EmulatorBackend):
    def __init__(self) -> None:
        super().__init__(kernel="reference")
        self.calls: list[LayerCall] = []

    def run(self, x_slot: str, y_slot: str, coefs: np.ndarray, thresholds: Thresholds | None = None) -> None:
        super().run(x_slot, y_slot, coefs, thresholds)
        layer = x_slot.removesuffix(".x")
        index = sum(c.name.split("#")[0] == layer for c in self.calls)
        self.calls.append(LayerCall(
            f"{layer}#{index}", self._slot(x_slot), self._slot(y_slot), np.array(coefs), thresholds, self.read(),
        ))


def model_layers(word_bits: int, seed: int = 0) -> dict[str, LayerCall]:
    """Every engine call of one forward pass of the default model, by name."""
    model = random_model(TINY, seed=seed, word_bits=word_bits)
    backend = _Recorder()
    image = np.random.default_rng(seed).integers(0, 17, (TINY.in_channels, TINY.image_size, TINY.image_size))
    Runtime(model, backend).forward(image.astype(np.float32))
    return {call.name: call for call in backend.calls}
