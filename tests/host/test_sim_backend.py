"""The SimBackend (the gateware in the Amaranth simulator) against the EmulatorBackend, and on a faulty line."""

from __future__ import annotations

import numpy as np
import pytest

from host.emulator import EmulatorBackend
from host.protocol import LinkError
from host.runtime import Runtime
from host.sim_backend import SIM_CONFIG, FaultyLink, SimBackend, SimLink
from model import golden
from model.random_model import TINY, random_model
from sim.model_layers import model_layers
from sim.ops import random_operand


def _images(count: int, seed: int = 0) -> np.ndarray:
    shape = (count, TINY.in_channels, TINY.image_size, TINY.image_size)
    return np.random.default_rng(seed).integers(0, 17, shape).astype(np.float32)


def _check_images_equal(images: np.ndarray, **sim_options: object) -> SimBackend:
    """Predictions and every engine layer's integers equal on both backends."""
    model = random_model()
    sim = SimBackend(**sim_options)
    runs = [Runtime(model, EmulatorBackend(lanes=SIM_CONFIG.lanes)), Runtime(model, sim)]
    for image in images:
        for r in runs:
            r.trace = {}
        logits = [r.forward(image) for r in runs]
        assert np.argmax(logits[0]) == np.argmax(logits[1])
        assert np.array_equal(logits[0], logits[1])
        assert runs[0].trace.keys() == runs[1].trace.keys()
        for name, results in runs[0].trace.items():
            assert all(np.array_equal(a, b) for a, b in zip(results, runs[1].trace[name], strict=True)), name
    assert sim.cycles() == sim.device_cycles()
    assert list(sim.host_layers) == ["patch_embed"]      # its int8 x int8 accumulator needs 34 bits
    return sim


def test_one_image_equals_the_emulator():
    _check_images_equal(_images(1))


@pytest.mark.sim
def test_more_images_equal_the_emulator():
    _check_images_equal(_images(4, seed=1))


CALLS = ("blocks.0.attn.qk#0", "blocks.0.attn.proj#0", "blocks.0.mlp.fc2#0")


def _run_calls(backend, rounds: int) -> int:
    """Run a few engine layers of the TINY model ``rounds`` times; return the wrong answers."""
    calls = model_layers(SIM_CONFIG.word_bits)
    wrong = 0
    for _ in range(rounds):
        for name in CALLS:
            call = calls[name]
            backend.load(f"{name}.x", call.groups_x)
            backend.load(f"{name}.w", call.groups_y)
            wrong += not np.array_equal(backend.layer(f"{name}.x", f"{name}.w", call.coefs), call.result)
    return wrong


@pytest.mark.parametrize("seed,rounds", [(1, 1), pytest.param(0, 2, marks=pytest.mark.sim)])
def test_faulty_line_gives_no_wrong_answer_then_the_documented_error(seed, rounds):
    line = FaultyLink(SimLink(), p=0.1, seed=seed)
    backend = SimBackend(link=line, retries=40, run_retries=10)
    assert _run_calls(backend, rounds) == 0
    for _ in range(4):  # more rounds until every kind of fault has happened (they are drawn at random)
        if min(line.faults.values()) >= 1:
            break
        assert _run_calls(backend, 1) == 0
    assert min(line.faults.values()) >= 1 and backend.transport.resent > 0
    line.cut = True
    with pytest.raises(LinkError, match="no valid response to frame .* after 41 tries"):
        backend.layer(f"{CALLS[0]}.x", f"{CALLS[0]}.w", model_layers(SIM_CONFIG.word_bits)[CALLS[0]].coefs)


@pytest.mark.sim
def test_uart_line_at_divisor_4():
    backend = SimBackend(uart=True)
    assert _run_calls(backend, rounds=1) == 0
    assert backend.cycles() == backend.device_cycles()


def test_a_run_longer_than_the_read_timeout_is_waited_for():
    """The read timeout of a RUN's frame grows by the run's cycles: no re-sends, the right answer."""
    rng = np.random.default_rng(0)
    n = 64 * SIM_CONFIG.word_bits
    x = random_operand(rng, "bipolar", 2, n, SIM_CONFIG.word_bits)
    w = random_operand(rng, "bipolar", 128, n, SIM_CONFIG.word_bits)
    coefs = np.array([[3]])
    # 2000 cycles at 40 MHz: enough for any frame of loads, half of this 4096-item run
    backend = SimBackend(timeout=5e-5)
    backend.load("x", [x])
    backend.load("w", [w])
    assert np.array_equal(backend.layer("x", "w", coefs), golden.layer_output([x], [w], coefs))
    assert backend.transport.resent == 0 and backend.cycles() > 4096
