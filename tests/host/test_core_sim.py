"""host.core_sim: the whole model on the simulated chip (the core's Verilog under Verilator), against the contract."""

import numpy as np
import pytest

from host.cli import infer
from host.core_sim import CoreSim
from model import intops, intvit


def test_pixels_in_the_class_and_every_logit_out_as_the_contract_has_them(tiny):
    model, raw = tiny
    raw = raw[:2]
    prog = intvit.program(model)
    sim = CoreSim(prog)
    classes, logits = sim.run(raw)
    want = intvit.forward(prog, raw, intvit.ReferenceEngine(prog))
    assert np.array_equal(logits, want) and np.array_equal(classes, intops.argmax(want))
    per_image = sim.cycles() / len(raw)
    assert sim.cycles() == 2 * per_image and per_image > 10_000  # the same program, every stage, for each image
    assert sim.host_layers == {} and sim.float_steps == 0
    assert sim.bytes_per_image() == (64, 45)  # 8 x 8 pixels in; the class, 10 int32 logits and the cycles out


def test_infer_on_the_sim_backend_runs_the_whole_model_with_no_host_layer(tiny):
    model, raw = tiny
    raw = raw[:2]
    summary = infer(model, raw.astype(np.float32), None, "sim", progress=False)
    emulator = infer(model, raw.astype(np.float32), None, "emulator", progress=False)
    assert summary["on_chip"] and summary["host_layers"] == {} and summary["float_steps"] == 0
    assert summary["predictions"] == emulator["predictions"]
    assert summary["bytes_sent_per_image"] == 64 and summary["bytes_received_per_image"] == 45
    assert summary["compute_bound_images_per_s"] == pytest.approx(40e6 / summary["engine_cycles_per_image"])


def test_a_bad_simulator_is_refused(tiny):
    with pytest.raises(ValueError, match="simulator must be one of"):
        CoreSim(intvit.program(tiny[0]), simulator="modelsim")
