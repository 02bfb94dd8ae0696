"""The integer units at the digits model's widths, and what each costs on the iCEBreaker.

``python -m hw.intunits [--units NAME ...] [--out DIR] [--boards [BOARD ...]]``
builds each unit of :func:`digits_units` with the PyPI toolchain of
:mod:`hw.build`: alone through ``synth_ice40`` (the cells of the unit
itself: LUT4, flip-flops, carries, SB_MAC16, block RAM), then in a
:class:`UnitHarness` placed and routed for each board (default the
iCEBreaker; ``--boards`` with none: synthesis only) at the board's clock
(the Fmax of its paths).  It prints one JSON object per unit and
writes them to ``DIR/intunits.json``.  The numbers in
``docs/integer-gateware.md`` come from here.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

from amaranth.back import rtlil
from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import io, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In

from hw.argmax import Argmax
from hw.boards import board
from hw.boards.icebreaker import ICEBreakerClock
from hw.boards.ulx3s import ULX3SClock
from hw.build import ONE_HOT_FSMS, ROOT, SYNTH_OPTS, TOOLS, run_toolchain, use_pypi_tools, yosys_cells
from dataclasses import replace

import numpy as np

from hw.config import DEFAULT
from hw.core import Stage, core_registers
from hw.core_program import blocks_image
from hw.layernorm import LayerNorm
from hw.multithreshold import MultiThreshold, PipelinedMultiThreshold
from hw.packer import Packer
from hw.residual import ResidualAdd
from hw.results import ResultReader
from hw.requantize import Requantize
from hw.softmax import SoftmaxLevels
from hw.steps import StepSequencer
from hw.transpose import TransposePacker
from model import intvit
from model.golden import PlaneKind
from model.modelfile import Architecture
from model.random_model import random_integer_model

#: The digits model (configs/digits.yaml): dim 64, 4 heads, MLP 128, 18 tokens, 10 classes.
DIGITS = {"dim": 64, "heads": 4, "hidden": 128, "tokens": 18, "classes": 10}
#: An engine accumulator's width there (the random TINY program's qkv needs 23 bits at dim 32).
ACC_BITS = 24


def digits_core_registers() -> object:
    """The whole-model core's registers (:func:`hw.core.core_registers`) for a block of the digits model's shape,
    on the default preset with room for its weights, qkv's results and the heads' passes (a random integer program:
    only the shapes matter)."""
    arch = Architecture(image_size=8, in_channels=1, patch_size=2, dim=DIGITS["dim"], depth=1, heads=DIGITS["heads"],
                        mlp_hidden=DIGITS["hidden"], num_classes=DIGITS["classes"])
    config = replace(DEFAULT, x_depth=192, y_depth=1024, result_depth=1024, prog_depth=256)
    image = blocks_image(config, intvit.program(random_integer_model(arch)), np.zeros((arch.tokens, arch.dim), np.int64))
    return core_registers(config, image)


def digits_units() -> dict[str, Callable[[], wiring.Component]]:
    """A constructor per unit at the widths of the digits model's integer program (docs/numeric-contract.md part 2)."""
    d, t = DIGITS["dim"], DIGITS["tokens"]
    return {
        # a sign/ternary (2 levels) on an accumulator, fc2's input: the most channels
        "multithreshold": lambda: MultiThreshold(ACC_BITS, DIGITS["hidden"], 2, 4),
        "multithreshold_pipelined": lambda: PipelinedMultiThreshold(ACC_BITS, DIGITS["hidden"], 2, 4),
        # R = sat16(R + rq(Y, m, s) + b): bias within +-2**24 (the program's schema)
        "requantize": lambda: Requantize(ACC_BITS, 16, 26, 16),
        "argmax": lambda: Argmax(32, DIGITS["classes"]),
        # fc2's unipolar input codes (GELU folded) to 16-bit x entries (the default preset's words)
        "packer": lambda: Packer(16, DIGITS["hidden"], PlaneKind.UNIPOLAR, 4),
        # the up5k preset's result buffer (4 lanes, 256 entries) back as fc1's 128 channels
        "result_reader": lambda: ResultReader(4, ACC_BITS, 8, 7),
        # the residual stream (18 x 64 int16 words) plus rq(y) + bias in place, y a 24-bit accumulator
        "residual_add": lambda: ResidualAdd(ACC_BITS, 16, 26, 11, 6),
        # a ternary Value group of 18 tokens x 64 channels to A V's transposed y entries
        "transpose": lambda: TransposePacker(16, DIGITS["tokens"], d, PlaneKind.TERNARY, 4),
        # the step program's controller with the whole-model core's registers (256 steps)
        "steps": lambda: StepSequencer(digits_core_registers(), len(Stage)),
        "layernorm": lambda: LayerNorm(d, 16, 16, 40),
        "layernorm_reciprocal": lambda: LayerNorm(d, 16, 16, 40, "reciprocal"),
        # GSB's three step levels; A for every (level, head, row, column): 3 * 4 * 18 * 18 = 3888 words
        "softmax": lambda: SoftmaxLevels(16, t, 711, (1, 1, 1), thresh_addr_bits=12),
    }


class UnitHarness:
    """One unit on a board's PLL clock, for place and route only (mixed with the board's :class:`ClockedTop`).

    A 64-bit LFSR drives every input of the unit; each read port reads a
    block RAM that the LFSR also writes (so it stays a RAM); every output is
    XORed into one register on LED 0.  Nothing is constant, so nothing is
    optimised away, and every path into and out of the unit starts and ends
    at a flip-flop, as in a design around it.
    """

    def __init__(self, make_unit: Callable[[], wiring.Component], freq_hz: float) -> None:
        self.make_unit = make_unit
        super().__init__(freq_hz)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.clock_domains(m, platform)
        m.submodules.unit = unit = self.make_unit()
        lfsr = Signal(64, init=1)  # x^64 + x^63 + x^61 + x^60 + 1
        m.d.sync += lfsr.eq(Cat(lfsr[63] ^ lfsr[62] ^ lfsr[60] ^ lfsr[59], lfsr[:63]))
        taken = [0]

        def bits(width: int) -> object:
            out = Cat(lfsr[(taken[0] + k) % 64] for k in range(width))
            taken[0] += width
            return out

        outputs = []
        for name, member in unit.signature.members.items():
            port = getattr(unit, name)
            own = member.signature.flip() if member.is_signature and member.flow == In else getattr(member, "signature", None)
            if isinstance(own, ReadPort.Signature):
                sig = own
                mem = Memory(shape=sig.shape, depth=1 << sig.addr_width, init=[])
                m.submodules[f"mem_{name}"] = mem
                wr = mem.write_port()
                m.d.comb += [wr.addr.eq(bits(sig.addr_width)), wr.data.eq(bits(len(Value.cast(wr.data)))), wr.en.eq(bits(1))]
                wiring.connect(m, mem.read_port(), port)
                continue
            # flows as the unit sees them (an In member's signature comes flipped)
            members = member.signature.flatten(port) if member.is_signature else [((name,), member, port)]
            for _, leaf, value in members:
                value = Value.cast(value)
                if leaf.flow == In:
                    m.d.comb += value.eq(bits(len(value)))
                else:
                    outputs.append(value)
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.sync += led.o.eq(Cat(*outputs).xor())
        return m


class ICEBreakerHarness(UnitHarness, ICEBreakerClock):
    """:class:`UnitHarness` on the iCEBreaker (UP5K)."""


class ULX3SHarness(UnitHarness, ULX3SClock):
    """:class:`UnitHarness` on the ULX3S (ECP5-85F)."""


#: The harness of each board, by the board's name (:data:`hw.boards.BOARDS`).
HARNESSES = {"icebreaker": ICEBreakerHarness, "ulx3s": ULX3SHarness}


def unit_cells(make_unit: Callable[[], wiring.Component], work: Path) -> dict[str, int]:
    """The unit's cells after ``synth_ice40`` alone (the board build's options and FSM encoding)."""
    use_pypi_tools()
    il = work / "unit.il"
    il.write_text(rtlil.convert(make_unit(), name="top"))
    script = f"read_rtlil {il.name}; {ONE_HOT_FSMS.replace(chr(10), '; ')}; synth_ice40 {SYNTH_OPTS['ice40']} -top top; stat"
    subprocess.run([TOOLS["YOSYS"], "-q", "-l", "yosys.log", "-p", script], cwd=work, capture_output=True, check=True)
    cells = yosys_cells((work / "yosys.log").read_text())
    return {
        "lut4": cells.get("SB_LUT4", 0),
        "ff": sum(n for name, n in cells.items() if re.fullmatch(r"SB_DFF\w*", name)),
        "carry": cells.get("SB_CARRY", 0),
        "dsp": cells.get("SB_MAC16", 0),
        "bram": cells.get("SB_RAM40_4K", 0),
    }


def measure(name: str, make_unit: Callable[[], wiring.Component], out: Path,
            boards: tuple[str, ...] = ("icebreaker",)) -> dict:
    """:func:`unit_cells`, and each board's harness placed and routed at the board's clock: resources and Fmax."""
    work = out / name
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"unit": name, "cells": unit_cells(make_unit, work)}
    for board_name in boards:
        b = board(board_name)
        top = HARNESSES[board_name](make_unit, b.freq_hz)
        resources, clock, seconds = run_toolchain(top.platform(), top, b.family, work / board_name)
        result[board_name] = {"resources": {k: v["used"] for k, v in resources.items()}, "clock": clock,
                              "seconds": round(seconds)}
    return result


def main(argv: list[str] | None = None) -> int:
    units = digits_units()
    parser = argparse.ArgumentParser(prog="python -m hw.intunits", description=__doc__.split("\n\n")[0])
    parser.add_argument("--units", nargs="+", choices=sorted(units), default=list(units))
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "intunits")
    parser.add_argument("--boards", nargs="*", choices=sorted(HARNESSES), default=["icebreaker"],
                        help="boards to place and route on (default: icebreaker; none: synthesis only)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for name in args.units:
        results.append(measure(name, units[name], args.out, tuple(args.boards)))
        print(json.dumps(results[-1]), flush=True)
    (args.out / "intunits.json").write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
