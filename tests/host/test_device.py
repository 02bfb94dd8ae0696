"""The DeviceBackend against a Python model of the bridge and accelerator (no simulator: fast)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from host.backend import Thresholds
from host.device import DeviceBackend
from host.emulator import EmulatorBackend
from host.protocol import CMD_SYNC, FrameDecoder, Link, RefusedError, Status, Transport, encode_response
from hw.bridge import READ_OPS
from hw.config import DEFAULT
from hw.isa import Op
from hw.program import DoesNotFit
from model.golden import Operand
from sim.reference import AcceleratorModel
from tests.host.test_emulator import bad_loads, bad_runs, layer_operands

CONFIG = replace(DEFAULT, x_depth=128, y_depth=512)


class ModelLink(Link):
    """The bridge's rules (answer count first, DUPLICATE for retried non-reads) over AcceleratorModel."""

    def __init__(self, config=CONFIG, buffer_words=256):
        self.model, self.buffer_words = AcceleratorModel(config), buffer_words
        self.decoder = FrameDecoder(CMD_SYNC, max_payload=4 * buffer_words)
        self.last_seq, self.frames, self.pending = None, [], b""

    def write(self, data):
        for frame in self.decoder.feed(data):
            words = [int.from_bytes(frame.payload[i:i + 4], "little") for i in range(0, len(frame.payload), 4)]
            self.frames.append(words)
            if frame.seq == self.last_seq and (words[1] & 0xFF) not in READ_OPS:
                self.pending += encode_response(frame.seq, Status.DUPLICATE, b"")
                continue
            self.last_seq = frame.seq
            answer = self.model.feed(words[1:])
            assert len(answer) == words[0]
            self.pending += encode_response(frame.seq, Status.OK, b"".join(w.to_bytes(4, "little") for w in answer))

    def read(self, timeout):
        data, self.pending = self.pending, b""
        return data


def _op(rng, rows, n, enc):
    values = {"bipolar": lambda: rng.choice([-1, 1], (rows, n)), "ternary": lambda: rng.integers(-1, 2, (rows, n)),
              "unipolar": lambda: rng.integers(0, 2, (rows, n))}[enc]()
    return Operand.from_values(values, enc, 64)   # the model file's packing; the backend repacks


def _backends(link):
    return DeviceBackend(Transport(link, timeout=0.01), CONFIG), EmulatorBackend("reference", lanes=CONFIG.lanes)


def test_layers_equal_the_emulator_with_resident_weights_and_chunks():
    rng = np.random.default_rng(0)
    link = ModelLink()
    dev, emu = _backends(link)
    w = [_op(rng, 100, 40, "bipolar")]                # 100 columns: 18 x 100 runs in two chunks
    for b in (dev, emu):
        b.load("fc.w", w)
    for _ in range(2):
        x = [_op(rng, 18, 40, "bipolar"), _op(rng, 18, 40, "ternary")]
        for b in (dev, emu):
            b.load("fc.x", x)
        coefs = np.array([[3], [-5]])
        assert np.array_equal(dev.layer("fc.x", "fc.w", coefs), emu.layer("fc.x", "fc.w", coefs))
    loads_y = [f for f in link.frames if any(word & 0xFF == 0x11 for word in f[1:2])]
    assert len(loads_y) == 2 and dev.bytes_sent > 0          # the weights went up once, in two frames
    assert all(len(f) <= 256 for f in link.frames)
    assert dev.cycles() == dev.device_cycles()


def test_x_rows_beyond_the_x_buffer_run_in_ranges_on_the_device():
    rng = np.random.default_rng(4)
    link = ModelLink()
    dev, emu = _backends(link)
    # 2 planes x 3 words per row: 21 rows fill the 128-entry x buffer, so 50 rows take three ranges
    x, y = [_op(rng, 50, 40, "bipolar"), _op(rng, 50, 40, "ternary")], [_op(rng, 9, 40, "unipolar")]
    thr = Thresholds(rng.integers(-3, 4, 9), rng.choice([-1, 1], 9))
    for b in (dev, emu):
        b.load("t.x", x)
        b.load("t.w", y)
    loads, load = [], link.model._load

    def record_load(op, addr, count, data):
        loads.append((op, addr, count))
        return load(op, addr, count, data)

    link.model._load = record_load
    coefs = np.array([[2], [-3]])
    assert np.array_equal(dev.layer("t.x", "t.w", coefs), emu.layer("t.x", "t.w", coefs))
    assert np.array_equal(dev.layer("t.x", "t.w", coefs, thr), emu.layer("t.x", "t.w", coefs, thr))
    assert dev.host_layers == {}
    # three ranges of 21, 21 and 8 rows (126, 126 and 48 entries), uploaded for each of the two layers
    assert [count for op, _, count in loads if op == Op.LOAD_X] == [126, 126, 48] * 2
    assert len([op for op, _, _ in loads if op == Op.LOAD_Y]) == 1
    assert dev.cycles() == dev.device_cycles()


def test_thresholds_and_host_fallback():
    rng = np.random.default_rng(1)
    dev, emu = _backends(ModelLink())
    x, y = [_op(rng, 5, 20, "unipolar")], [_op(rng, 7, 20, "ternary")]
    thr = Thresholds(rng.integers(-3, 4, 7), rng.choice([-1, 1], 7))
    for b in (dev, emu):
        b.load("a.x", x)
        b.load("a.y", y)
    assert np.array_equal(dev.layer("a.x", "a.y", np.array([[2]]), thr), emu.layer("a.x", "a.y", np.array([[2]]), thr))
    big = np.array([[1 << 40]])                       # no accelerator accumulator holds this
    assert np.array_equal(dev.layer("a.x", "a.y", big), emu.layer("a.x", "a.y", big))
    assert "a" in dev.host_layers


def test_only_layers_that_do_not_fit_run_on_the_host(monkeypatch):
    """A compiler error other than DoesNotFit is a bug to report, not a layer to run elsewhere."""
    import host.device

    rng = np.random.default_rng(6)
    dev, _ = _backends(ModelLink())
    dev.load("b.x", [_op(rng, 3, 20, "bipolar")])
    dev.load("b.w", [_op(rng, 4, 20, "bipolar")])

    def broken(*args, **kwargs):
        raise ValueError("a bug in the caller")

    monkeypatch.setattr(host.device, "compile_chunks", broken)
    with pytest.raises(ValueError, match="a bug in the caller"):
        dev.run("b.x", "b.w", np.array([[1]]))
    assert dev.host_layers == {}


def test_a_slot_larger_than_the_y_buffer_does_not_fit():
    """Weights that no y buffer region can hold: a layer the configuration cannot hold, run on the host and named."""
    rng = np.random.default_rng(2)
    dev, emu = _backends(ModelLink())
    x, w = [_op(rng, 2, 16, "bipolar")], [_op(rng, 4 * 600, 16, "bipolar")]
    for b in (dev, emu):
        b.load("big.x", x)
        b.load("big.w", w)
    assert np.array_equal(dev.layer("big.x", "big.w", np.array([[1]])), emu.layer("big.x", "big.w", np.array([[1]])))
    assert re.search(r"slot 'big.w' needs 600 bank rows.*y_depth=512", dev.host_layers["big"])
    strict = DeviceBackend(Transport(ModelLink(), timeout=0.01), CONFIG, host_fallback=False)
    strict.load("big.x", x)
    strict.load("big.w", w)
    with pytest.raises(DoesNotFit, match=r"slot 'big.w' needs 600 bank rows.*y_depth=512"):
        strict.run("big.x", "big.w", np.array([[1]]))


def test_weights_beyond_the_y_buffer_are_uploaded_again_when_used():
    rng = np.random.default_rng(5)
    link = ModelLink()
    dev, emu = _backends(link)
    x = [_op(rng, 3, 16, "bipolar")]
    weights = {f"l{i}.w": [_op(rng, 4 * 200, 16, "bipolar")] for i in range(3)}   # 200 bank rows each, 512 in all
    for b in (dev, emu):
        b.load("l.x", x)
        for name, w in weights.items():
            b.load(name, w)
    for name in list(weights) * 2:
        assert np.array_equal(dev.layer("l.x", name, np.array([[1]])), emu.layer("l.x", name, np.array([[1]])))
    # l0, l1 | flush: l2, l0 | flush: l1, l2
    assert dev.y_flushes == 2 and dev.host_layers == {}


def test_a_reset_during_a_run_repeats_the_run():
    rng = np.random.default_rng(3)
    link = ModelLink()
    dev, emu = _backends(link)
    x, y = [_op(rng, 6, 30, "bipolar")], [_op(rng, 9, 30, "bipolar")]
    for b in (dev, emu):
        b.load("l.x", x)
        b.load("l.w", y)
    run = link.model._run

    def run_then_reset(*args):          # the device is reset right after the run: its count is lost
        run(*args)
        link.model._run = run
        link.model.reset()

    link.model._run = run_then_reset
    assert np.array_equal(dev.layer("l.x", "l.w", np.array([[1]])), emu.layer("l.x", "l.w", np.array([[1]])))
    assert dev.reruns == 1


# ---------------------------------------------------------------- refused exactly as the emulator refuses


def _refusal(call, *args) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError)) as info:
        call(*args)
    return type(info.value), str(info.value)


def test_malformed_operands_are_refused_as_the_emulator_refuses_them_before_any_frame():
    link = ModelLink()
    dev, emu = _backends(link)
    sent = len(link.frames)
    for case, op, error, message in bad_loads():
        refusal = _refusal(dev.load, "x", [op])
        assert refusal == _refusal(emu.load, "x", [op]), case
        assert refusal[0] is error and re.search(message, refusal[1]), case
    assert len(link.frames) == sent


def test_bad_coefficients_and_thresholds_are_refused_as_the_emulator_refuses_them_before_any_frame():
    link = ModelLink()
    dev, emu = _backends(link)
    x, y = layer_operands()
    for b in (dev, emu):
        b.load("x", [x])
        b.load("y", [y])
    sent = len(link.frames)
    for case, coefs, thresholds, error, message in bad_runs():
        refusal = _refusal(dev.run, "x", "y", coefs, thresholds)
        assert refusal == _refusal(emu.run, "x", "y", coefs, thresholds), case
        assert refusal[0] is error and re.search(message, refusal[1]), case
    # x and y packed in different word widths: the device would repack both, the contract refuses
    for b in (dev, emu):
        b.load("y32", [Operand.from_values(y.to_values(), "ternary", 32)])
    refusal = _refusal(lambda: dev.run("x", "y32", np.ones((1, 1), np.int64)))
    assert refusal == _refusal(lambda: emu.run("x", "y32", np.ones((1, 1), np.int64)))
    assert refusal == (ValueError, "x and y must use the same word_bits, got 16 and 32")
    assert len(link.frames) == sent and dev.host_layers == {}


def test_sums_past_62_bits_are_refused_not_computed_on_the_host():
    """int16 x int16 at -32768 over n = 8 with coefficient -2^31 is exactly -2^64: the host fallback wrapped it to 0."""
    dev, emu = _backends(ModelLink())
    x = Operand.from_values(np.full((1, 8), -32768, np.int64), "int16")
    coefs = np.array([[-(1 << 31)]], np.int64)
    for b in (dev, emu):
        b.load("x", [x])
    refusal = _refusal(dev.run, "x", "x", coefs)
    assert refusal == _refusal(emu.run, "x", "x", coefs)
    assert refusal[0] is ValueError and "66-bit accumulator" in refusal[1]
    assert dev.host_layers == {}


def test_a_device_that_refuses_the_requests_is_reported_at_once():
    """A bitstream built for other sizes refuses the host's frames: one frame, then a clear error, no retries."""
    class RefusingLink(ModelLink):
        def write(self, data):
            for frame in self.decoder.feed(data):
                self.frames.append(frame.payload)
                self.pending += encode_response(frame.seq, Status.REFUSED, b"")

    link = RefusingLink()
    with pytest.raises(RefusedError, match="refused frame 0 .*AccelConfig"):
        DeviceBackend(Transport(link, timeout=0.01), CONFIG)
    assert len(link.frames) == 1
