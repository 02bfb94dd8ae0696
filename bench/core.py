"""The whole model on the chip, measured: cycles per image on the simulated RTL, and the images/s they give.

``python -m bench.core [--model FILE.gsbf] [--images N]`` (default: the digits
demo model of ``make demo``, trained first if missing) runs ``N`` test
images (default 3) through :class:`host.core_sim.CoreSim` for each board's
preset and LayerNorm divider (the iCEBreaker's ``up5k``, serial; the
ULX3S's ``ecp5``, reciprocal; and the default preset with each divider)
under Verilator, checks every logit against the integer program
(:func:`model.intvit.forward`), and counts the chip's cycles from start to
idle (the program has no data-dependent waits: every image takes the same).
Images/s at each board's clock and the link's bound at 3 Mbaud (64 pixel
bytes in, 41 bytes out) follow; the baseline, measured in the same run,
is the layer accelerator's traffic per image on the simulated board (``--layers``: the host
sends every product's operands and reads every result), which bounds it
at the same baud. Prints a table and writes ``bench/out/core.json``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench import write_report
from host.cli import infer, test_images
from host.core_sim import CoreSim
from hw.boards import board
from hw.config import preset
from hw.frames import BAUD
from model import intvit, modelfile
from model.demo import demo_model

OUT = Path(__file__).resolve().parent / "out" / "core.json"
#: (preset, LayerNorm divider, the board whose clock it is measured at)
CASES = (("up5k", "serial", "icebreaker"), ("ecp5", "reciprocal", "ulx3s"), ("default", "serial", None),
         ("default", "reciprocal", None))
#: The issue's end-to-end targets, images/s.
TARGETS = {"icebreaker": 300, "ulx3s": 1000}


def measure(prog: intvit.IntegerProgram, images: np.ndarray) -> list[dict]:
    rows = []
    want = intvit.forward(prog, images, intvit.ReferenceEngine(prog))
    for name, divider, board_name in CASES:
        sim = CoreSim(prog, preset(name), "verilator", divider)
        sim.run(images[:1])  # builds the design (cached by its Verilog), then warms up
        before = sim.cycles()
        start = time.perf_counter()
        _, logits = sim.run(images)
        wall = time.perf_counter() - start
        cycles = (sim.cycles() - before) / len(images)
        sent, received = sim.bytes_per_image()
        link = BAUD / 10 / (sent + received)
        clock = board(board_name).freq_hz / 1e6 if board_name else 40.0
        compute = clock * 1e6 / cycles
        rows.append({"preset": name, "divider": divider, "board": board_name, "clock_mhz": clock,
                     "cycles_per_image": cycles, "logits_equal": bool(np.array_equal(logits, want)),
                     "compute_bound_images_per_s": compute, "link_bound_images_per_s": link,
                     "images_per_s": min(compute, link), "target": TARGETS.get(board_name),
                     "sim_wall_s_per_image": wall / len(images)})
    return rows


def layer_baseline(model: modelfile.Model, images: np.ndarray) -> dict:
    """The layer accelerator on the simulated board: the bytes an image moves, and the images/s that allows."""
    summary = infer(model, images[:2], None, "sim", progress=False, layers=True)
    return {key: summary[key] for key in ("bytes_sent_per_image", "bytes_received_per_image",
                                          "link_bound_images_per_s", "host_layers")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.core", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="a model file with an integer program (default: the demo)")
    parser.add_argument("--images", type=int, default=3, help="test images per case (default: 3)")
    a = parser.parse_args(argv)
    model = modelfile.load(a.model or demo_model(Path("build/demo"), True))
    images, _ = test_images(model.preprocessing.dataset)
    images = images[:a.images]
    prog = intvit.program(model)
    load = os.getloadavg()
    rows = measure(prog, images)
    baseline = layer_baseline(model, images)
    print(f"whole model on the simulated chip ({len(images)} images; load average {load[0]:.2f}):")
    print(f"{'preset':8} {'divider':10} {'board':10} {'MHz':>5} {'cycles/img':>11} {'compute/s':>10} {'link/s':>8} "
          f"{'images/s':>9} {'target':>7} {'x layers':>9} {'exact':>6}")
    for r in rows:
        ratio = r["images_per_s"] / baseline["link_bound_images_per_s"]
        r["over_layer_accelerator"] = ratio
        print(f"{r['preset']:8} {r['divider']:10} {r['board'] or '-':10} {r['clock_mhz']:5g} {r['cycles_per_image']:11.0f} "
              f"{r['compute_bound_images_per_s']:10.1f} {r['link_bound_images_per_s']:8.0f} {r['images_per_s']:9.1f} "
              f"{r['target'] or '-':>7} {ratio:9.0f} {str(r['logits_equal']):>6}")
    print(f"baseline, the layer accelerator (simulated board): {baseline['bytes_sent_per_image']:.0f} bytes sent, "
          f"{baseline['bytes_received_per_image']:.0f} received per image: "
          f"{baseline['link_bound_images_per_s']:.2f} images/s at {BAUD} baud")
    write_report({"model": str(a.model or "build/demo/gsb-digits.gsbf"), "images": len(images), "load_average": load,
                  "baud": BAUD, "cases": rows, "layer_accelerator": baseline}, OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
