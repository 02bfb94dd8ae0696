"""The EmulatorBackend: slots, layers, thresholds, cycles, errors."""

from __future__ import annotations

import numpy as np
import pytest

from host.backend import Thresholds
from host.emulator import EmulatorBackend, ideal_cycles
from model import golden
from model.golden import Operand


def test_layer_with_thresholds_equals_folded_reference():
    rng = np.random.default_rng(0)
    x = Operand.from_values(np.where(rng.random((6, 100)) < 0.5, 1, -1), "bipolar")
    w = Operand.from_values(np.where(rng.random((5, 100)) < 0.5, 1, -1), "bipolar")
    backend = EmulatorBackend("reference")
    backend.load("x", [x])
    backend.load("w", [w])
    coefs = np.array([[3]])
    y = backend.layer("x", "w", coefs)
    assert np.array_equal(y, 3 * (x.to_values() @ w.to_values().T))
    scale, bias = rng.normal(size=5), rng.normal(size=5) * 20
    t, d = golden.fold_threshold(scale, bias, -300, 300)
    bits = backend.layer("x", "w", coefs, Thresholds(t, d))
    assert np.array_equal(bits, (scale * y + bias >= 0).astype(np.uint8))


def test_cycles_follow_the_ideal_model_and_reset():
    x = Operand.from_values(np.ones((3, 130), np.int64), "int4")
    w = Operand.from_values(np.ones((20, 130), np.int64), "bipolar")
    backend = EmulatorBackend("reference", lanes=8)
    backend.load("x", [x])
    backend.load("w", [w])
    backend.run("x", "w", np.array([[1]]))
    assert backend.cycles() == ideal_cycles([x], [w], 8) == 4 * 3 * 3 * 3
    backend.reset()
    assert backend.cycles() == 0
    with pytest.raises(KeyError, match="slot 'x' was never loaded"):
        backend.run("x", "w", np.array([[1]]))
    with pytest.raises(RuntimeError, match="no layer has run"):
        backend.read()


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel must be"):
        EmulatorBackend("gpu")
    with pytest.raises(ValueError, match="lanes must be a positive int"):
        EmulatorBackend(lanes=0)
    with pytest.raises(TypeError, match="slot 'x'"):
        EmulatorBackend("reference").load("x", [np.ones((2, 2))])
