"""The digits demo model whole on the simulated chip (make sim): raw test images in, the class and every logit
out, against the emulator; wall time per image under Verilator."""

import time
from pathlib import Path

import numpy as np
import pytest

from host.cli import infer
from host.cli import test_images as split_images
from host.core_sim import CoreSim
from model import intvit, modelfile
from model.demo import demo_model

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def digits():
    """The demo model (trained and exported on first use, a few minutes) and its first 20 test images."""
    model = modelfile.load(demo_model(Path("build/demo"), False))
    images, labels = split_images("digits")
    return model, images[:20], labels[:20]


def test_one_digits_image_every_logit_as_the_emulator_within_a_minute(digits):
    model, images, _ = digits
    prog = intvit.program(model)
    sim = CoreSim(prog)
    sim.run(images[:1])  # builds the design (cached), then one image
    start = time.perf_counter()
    classes, logits = sim.run(images[:1])
    seconds = time.perf_counter() - start
    want = intvit.forward(prog, images[:1], intvit.ReferenceEngine(prog))
    assert np.array_equal(logits, want) and classes[0] == int(np.argmax(want[0]))
    assert seconds <= 60, f"one image took {seconds:.1f} s under {sim.simulator}"


def test_twenty_images_on_the_sim_backend_agree_with_the_emulator(digits):
    model, images, labels = digits
    sim = infer(model, images, labels, "sim", progress=False)
    emulator = infer(model, images, labels, "emulator", progress=False)
    assert sim["host_layers"] == {} and sim["on_chip"]
    assert sim["predictions"] == emulator["predictions"]
