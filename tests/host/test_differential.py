"""Differential fuzz: random layers on the EmulatorBackend and on the simulated RTL (SimBackend).

Every encoding, odd lengths, several groups, signed coefficients, with and
without thresholds: the two backends give identical integers (or bits), and
malformed inputs get identical refusals (the same exception type).  In
``make sim`` (about 15 s here).
"""

from __future__ import annotations

import numpy as np
import pytest

from host.backend import Thresholds
from host.emulator import EmulatorBackend
from host.sim_backend import SIM_CONFIG, SimBackend
from sim.ops import random_operand

ENCODINGS = ("bipolar", "unipolar", "ternary", "int2", "int3", "uint2", "uint3")
LAYERS = 60


def random_layer(rng: np.random.Generator, word_bits: int) -> tuple[list, list, np.ndarray, Thresholds | None]:
    """A random layer small enough for ``SIM_CONFIG``: groups, operands, coefficients and maybe thresholds."""
    n = int(rng.integers(1, 3 * word_bits))
    rows_x, rows_y = int(rng.integers(1, 5)), int(rng.integers(1, 2 * SIM_CONFIG.lanes + 1))
    xs = [random_operand(rng, str(rng.choice(ENCODINGS)), rows_x, n, word_bits) for _ in range(int(rng.integers(1, 3)))]
    ys = [random_operand(rng, str(rng.choice(ENCODINGS)), rows_y, n, word_bits) for _ in range(int(rng.integers(1, 3)))]
    coefs = rng.integers(-200, 201, size=(len(xs), len(ys)))
    thresholds = None
    if rng.random() < 0.4:
        thresholds = Thresholds(rng.integers(-40, 41, size=rows_y), rng.choice(np.array([-1, 1], np.int8), size=rows_y))
    return xs, ys, coefs, thresholds


def outcome(backend, xs, ys, coefs, thresholds) -> tuple[str, object]:
    """``("ok", result)`` or ``("refused", exception type)`` of one layer on a backend."""
    try:
        backend.load("x", xs)
        backend.load("y", ys)
        return "ok", backend.layer("x", "y", coefs, thresholds)
    except (TypeError, ValueError) as exc:
        return "refused", type(exc)


@pytest.mark.sim
def test_random_layers_are_identical_on_the_emulator_and_the_rtl():
    rng = np.random.default_rng(20261202)
    emulator, sim = EmulatorBackend(lanes=SIM_CONFIG.lanes), SimBackend()
    refused = 0
    for k in range(LAYERS):
        xs, ys, coefs, thresholds = random_layer(rng, SIM_CONFIG.word_bits)
        if k % 6 == 5:  # malformed: float coefficients, or thresholds for one column too many
            if k % 12 == 5:
                coefs = coefs.astype(np.float64)
            else:
                thresholds = Thresholds(np.zeros(ys[0].rows + 1, np.int64), np.ones(ys[0].rows + 1, np.int8))
        a, b = outcome(emulator, xs, ys, coefs, thresholds), outcome(sim, xs, ys, coefs, thresholds)
        assert a[0] == b[0], f"layer {k}: emulator {a}, rtl {b}"
        if a[0] == "ok":
            assert np.array_equal(a[1], b[1]), f"layer {k}"
        else:
            assert a[1] is b[1], f"layer {k}: emulator refused with {a[1]}, rtl with {b[1]}"
            refused += 1
    assert refused >= 2 and not sim.host_layers, sim.host_layers
