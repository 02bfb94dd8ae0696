"""The EmulatorBackend: slots, layers, thresholds, cycles, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from host.backend import OperandStack, Thresholds
from host.emulator import EmulatorBackend
from hw.cycles import ideal_cycles
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


def _stack(rng, encoding, shape):
    lo, hi = golden.Encoding.parse(encoding).value_range
    values = rng.choice(np.array([-1, 1]), size=shape) if encoding == "bipolar" else rng.integers(lo, hi + 1, size=shape)
    return values, OperandStack.from_values(values, encoding, 16)


def test_operand_stack_items_are_the_operands_of_their_values():
    rng = np.random.default_rng(1)
    for encoding in ("bipolar", "unipolar", "ternary", "int3", "uint4"):
        values, stack = _stack(rng, encoding, (2, 3, 5, 40))
        assert stack.lead == (2, 3) and stack.rows == 5 and stack.n == 40
        for idx in np.ndindex(2, 3):
            item = stack.item(idx)
            assert item.rows == 5 and np.array_equal(item.to_values(), values[idx])
            expected = Operand.from_values(values[idx], encoding, 16)
            assert (item.encoding, item.n, item.word_bits, len(item.planes)) == (expected.encoding, 40, 16, len(expected.planes))
            for a, b in zip(item.planes, expected.planes):
                assert (a.kind, a.weight) == (b.kind, b.weight)
                for u, v in ((a.sign, b.sign), (a.mask, b.mask)):
                    assert (u is None and v is None) or (u.dtype == v.dtype and np.array_equal(u, v))


@pytest.mark.parametrize("resident", [False, True])
def test_batched_layers_equal_layer_by_layer(resident):
    """The emulator's one-call stack equals the default item-by-item loop of the reference backend."""
    rng = np.random.default_rng(2)
    _, x1 = _stack(rng, "uint4", (3, 2, 7, 50))
    _, x2 = _stack(rng, "ternary", (3, 2, 7, 50))
    y_lead = () if resident else (3, 2)
    ys = [_stack(rng, "bipolar", y_lead + (9, 50))[1], _stack(rng, "int3", y_lead + (9, 50))[1]]
    coefs = np.array([[3, -1], [2, 5]])
    t, d = golden.fold_threshold(rng.normal(size=9), rng.normal(size=9) * 20, -5000, 5000)
    results = []
    for kernel in ("fast", "reference"):
        backend = EmulatorBackend(kernel, lanes=4)
        if resident:
            backend.load("w", [s.item(()) for s in ys])
        ys_arg = None if resident else ys
        y = backend.layers("x", [x1, x2], "w" if resident else "y", ys_arg, coefs)
        bits = backend.layers("x", [x1, x2], "w" if resident else "y", ys_arg, coefs, Thresholds(t, d))
        assert np.array_equal(backend.read(), bits[-1, -1])
        results.append((y, bits, backend.cycles()))
    (fast, fast_bits, fast_cycles), (ref, ref_bits, ref_cycles) = results
    assert fast.shape == (3, 2, 7, 9) and fast.dtype == np.int64
    assert np.array_equal(fast, ref) and np.array_equal(fast_bits, ref_bits) and fast_cycles == ref_cycles
    item = (1, 0)
    expected = sum(int(coefs[g, h]) * (x.item(item).to_values() @ w.item(() if resident else item).to_values().T)
                   for g, x in enumerate([x1, x2]) for h, w in enumerate(ys))
    assert np.array_equal(fast[item], expected)


def test_batched_layers_refuse_mismatched_stacks():
    rng = np.random.default_rng(3)
    backend = EmulatorBackend()
    with pytest.raises(ValueError, match="leading axes"):
        backend.layers("x", [_stack(rng, "bipolar", (2, 4, 8))[1]], "y", [_stack(rng, "bipolar", (3, 4, 8))[1]], np.ones((1, 1), np.int64))
    with pytest.raises(TypeError, match="OperandStack"):
        backend.layers("x", [], "y", None, np.ones((1, 1), np.int64))


# ---------------------------------------------------------------- what every backend refuses


def layer_operands() -> tuple[Operand, Operand]:
    """A valid x (int4, 3 rows) and y (ternary, 5 rows) over n = 10 in 16-bit words."""
    rng = np.random.default_rng(9)
    return (Operand.from_values(rng.integers(-8, 8, (3, 10)), "int4", 16),
            Operand.from_values(rng.integers(-1, 2, (5, 10)), "ternary", 16))


def _with_plane(op: Operand, k: int, **fields) -> Operand:
    planes = list(op.planes)
    planes[k] = dataclasses.replace(planes[k], **fields)
    return dataclasses.replace(op, planes=tuple(planes))


def bad_loads() -> list[tuple[str, Operand, type, str]]:
    """Hand-built x operands that ``load`` refuses: (case, operand, error, message)."""
    x, y = layer_operands()
    mask = x.planes[1].mask
    dirty = mask.copy()
    dirty[2, 0] |= 1 << 12
    return [
        ("bit past n", _with_plane(x, 1, mask=dirty), ValueError, r"slot 'x'\[0\].planes\[1\].mask has bits set past n=10 \(row 2"),
        ("too many words", _with_plane(x, 1, mask=np.hstack([mask, mask])), ValueError, "must have 1 words per row for n=10, got 2"),
        ("words wider than declared", _with_plane(x, 1, mask=mask.astype(np.uint32)), TypeError,
         "must have dtype uint16 for word_bits=16, got uint32"),
        ("a plane of another kind", dataclasses.replace(y, encoding=golden.Encoding("unipolar")), ValueError,
         r"slot 'x'\[0\].planes\[0\] is a ternary plane, encoding unipolar has unipolar planes"),
    ]


def bad_runs() -> list[tuple[str, np.ndarray, Thresholds | None, type, str]]:
    """Arguments that ``run`` refuses for the layers x (one group) by y: (case, coefs, thresholds, error, message)."""
    one, keep = np.ones((1, 1), np.int64), Thresholds(np.zeros(5, np.int64), np.ones(5, np.int64))
    return [
        ("float coefs", np.ones((1, 1)), None, TypeError, "coefs must be an integer array, got dtype float64"),
        ("coefs as a list", [[1]], None, TypeError, "coefs must be a numpy array, got list"),
        ("coefs of the wrong shape", np.ones((1, 2), np.int64), None, ValueError, r"coefs must have shape \(1, 1\), got \(1, 2\)"),
        ("a uint64 coefficient of 2^63", np.array([[1 << 63]], np.uint64), None, ValueError,
         r"coefs\[0, 0\] = 9223372036854775808 does not fit int64"),
        ("float thresholds", one, Thresholds(np.full(5, 0.5), keep.directions), TypeError,
         "thresholds must be an integer array, got dtype float64"),
        ("thresholds as lists", one, Thresholds([0] * 5, [1] * 5), TypeError, "thresholds must be a numpy array, got list"),
        ("too few thresholds", one, Thresholds(np.zeros(4, np.int64), np.ones(4, np.int64)), ValueError,
         r"one entry per y row, shape \(5,\), got \(4,\) and \(4,\)"),
        ("thresholds as a row", one, Thresholds(np.zeros((1, 5), np.int64), np.ones((1, 5), np.int64)), ValueError,
         r"one entry per y row, shape \(5,\), got \(1, 5\)"),
        ("a direction of 0", one, Thresholds(keep.thresholds, np.array([1, -1, 0, 1, 1])), ValueError,
         r"directions must be -1 or \+1, got 0 at index 2"),
        ("thresholds not of that type", one, (keep.thresholds, keep.directions), TypeError,
         "thresholds must be a Thresholds or None, got tuple"),
    ]


@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_malformed_operands_are_refused_at_load(kernel):
    backend = EmulatorBackend(kernel)
    for case, op, error, message in bad_loads():
        with pytest.raises(error, match=message):
            backend.load("x", [op])
    with pytest.raises(TypeError, match="slot 'x' must be a non-empty sequence of Operand"):
        backend.load("x", [])


@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_bad_coefficients_and_thresholds_are_refused_at_run(kernel):
    x, y = layer_operands()
    backend = EmulatorBackend(kernel)
    backend.load("x", [x])
    backend.load("y", [y])
    for case, coefs, thresholds, error, message in bad_runs():
        with pytest.raises(error, match=message):
            backend.run("x", "y", coefs, thresholds)
    assert backend.cycles() == 0


@pytest.mark.parametrize("kernel", ["fast", "reference"])
def test_sums_past_62_bits_are_refused_not_wrapped(kernel):
    """int16 x int16 at -32768 over n = 8 with coefficient -2^31 is exactly -2^64, which int64 wraps to 0."""
    x = Operand.from_values(np.full((1, 8), -32768, np.int64), "int16")
    backend = EmulatorBackend(kernel)
    backend.load("x", [x])
    with pytest.raises(ValueError, match="the sum needs a 66-bit accumulator"):
        backend.run("x", "x", np.array([[-(1 << 31)]], np.int64))
