"""The hardware issue's yardsticks, measured here: bare XOR-popcount arrays.

``python -m bench.yardstick`` builds :class:`XorPopcountArray` (16 lanes x
64 bits, 1024 binary MACs a cycle, two pipeline stages in every popcount
tree) with the toolchain, options and PLL of ``make bitstream`` on the
iCEBreaker's UP5K, the ULX3S's ECP5-85F (the accelerator's device) and an
ECP5-25F (the issue's), and writes ``bench/out/yardstick.json``: LUT4,
logic cells (UP5K) or slice LUTs (ECP5), flip-flops and Fmax.
:mod:`bench.hw` compares the accelerator builds against it.  It also
synthesises lane arrays alone, the accelerator's :class:`hw.lanes.LaneArray`
against XOR-popcount lanes of the same width (LUT4 per bit product, yosys
only).  About a minute per point; not part of ``make test``.
"""

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Cat, Elaboratable, Module, Signal
from amaranth.lib import io, wiring
from amaranth.lib.wiring import In, Out
from amaranth_boards.ulx3s import ULX3S_25F_Platform

from hw.boards import BOARDS
from hw.boards.common import ClockedTop
from hw.boards.icebreaker import ICEBreakerClock
from hw.boards.ulx3s import ULX3SClock
from bench.hw import macs_per_s
from hw.build import LOGIC_RESOURCE, LUT_CELLS, SYNTH_OPTS, TOOLS, run_toolchain, use_pypi_tools, yosys_cells
from hw.config import _check_int
from hw.lanes import LaneArray, popcount_tree

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
#: The issue's bare design: lanes, bits per lane, pipeline stages per tree.
LANES, WORD_BITS, STAGES = 16, 64, 2
#: The yardstick figures as the issue quotes them, for comparison with ours.
ISSUE_FIGURES = {
    "lut4_per_bit": 2.5,
    "icebreaker": "UP5K: 3114 LC at 32-33 MHz",
    "ulx3s": "ECP5-25F: 3449 LUT4 at about 100 MHz",
}


class XorPopcountArray(wiring.Component):
    """``lanes`` counts of ``popcount(x ^ y[i])`` on ``word_bits`` bits: the bare yardstick.

    ``x`` and the ``y[i]`` are one shift register fed a bit a cycle from
    ``si``, so that no operand is constant and synthesis keeps every
    product; the lanes' counts are XOR-reduced into ``so``, so that every
    count is used.  Besides these input registers and the ``stages``
    registers of each tree there is only the one-bit reduction.
    """

    si: In(1)
    so: Out(1)

    def __init__(self, lanes: int = LANES, word_bits: int = WORD_BITS, stages: int = STAGES) -> None:
        self.lanes = _check_int(lanes, "lanes", 1)
        self.word_bits = _check_int(word_bits, "word_bits", 2)
        self.stages = _check_int(stages, "stages", 1)
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.word_bits
        operands = Signal(wb * (self.lanes + 1), reset_less=True)
        m.d.sync += operands.eq(Cat(self.si, operands[:-1]))
        x = operands[:wb]
        levels = (wb - 1).bit_length()
        per_stage = -(-levels // self.stages)
        counts = [popcount_tree(m, x ^ operands[wb * (i + 1):wb * (i + 2)], per_stage, f"lane{i}")
                  for i in range(self.lanes)]
        m.d.sync += self.so.eq(Cat(*counts).xor())
        return m


class YardstickTop(ClockedTop):
    """:class:`XorPopcountArray` on a board's PLL clock: ``si`` from the UART's rx pin, ``so`` to LED 0."""

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.clock_domains(m, platform)
        m.submodules.array = array = XorPopcountArray()
        m.submodules.rx = rx = io.Buffer("i", platform.request("uart", 0, dir="-").rx)
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        m.d.comb += [array.si.eq(rx.i), led.o.eq(array.so)]
        return m


class ICEBreakerYardstick(ICEBreakerClock, YardstickTop):
    """The yardstick on the iCEBreaker (UP5K)."""


class ULX3SYardstick(ULX3SClock, YardstickTop):
    """The yardstick on the ULX3S (ECP5-85F)."""


class ULX3S25FYardstick(ULX3SYardstick):
    """The yardstick on a ULX3S with the issue's ECP5-25F."""

    platform = ULX3S_25F_Platform


#: Measured points: name -> (top, family, the board whose clock is requested).
POINTS = {
    "icebreaker": (ICEBreakerYardstick, "ice40", "icebreaker"),
    "ulx3s": (ULX3SYardstick, "ecp5", "ulx3s"),
    "ulx3s-25f": (ULX3S25FYardstick, "ecp5", "ulx3s"),
}


def measure_point(name: str, build_dir: Path) -> dict:
    """Build one point into ``build_dir/<name>``; returns its figures."""
    top_class, family, board_name = POINTS[name]
    top = top_class(BOARDS[board_name].freq_hz)
    platform = top_class.platform()
    resources, clock, seconds = run_toolchain(platform, top, family, build_dir / name)
    logic = resources[LOGIC_RESOURCE[family]]
    return {
        "device": f"{platform.device}-{platform.package}",
        "design": f"XOR-popcount {LANES} x {WORD_BITS}, {STAGES} stages",
        "macs_per_cycle": LANES * WORD_BITS,
        "lut4": resources["lut4"]["used"],
        "logic": logic["used"],
        "logic_cell": logic["cell"],
        "ff": resources["ff"]["used"],
        "clock_mhz": clock["freq_mhz"],
        "fmax_mhz": min(clock["fmax_mhz"].values()),
        "build_s": round(seconds, 1),
    }


#: The lane arrays compared alone: the ECP5 preset's word width, the
#: accelerator's tree staging, a few lanes sharing the broadcast x word.
LANE_BITS, LANE_STAGE_LEVELS, LANE_COUNT = 32, 2, 4


def synthesised_lut4(design: Elaboratable, ports: list, family: str) -> int:
    """LUT4s of ``design`` after yosys's ``synth_<family>`` (no place and route)."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "design.il").write_text(rtlil.convert(design, ports=ports, name="top"))
        script = f"read_rtlil design.il; synth_{family} -top top {SYNTH_OPTS[family]}; tee -o stat.txt stat"
        subprocess.run([TOOLS["YOSYS"], "-q", "-p", script], cwd=tmp, check=True, capture_output=True)
        cells = yosys_cells((Path(tmp) / "stat.txt").read_text())
    return sum(n for name, n in cells.items() if LUT_CELLS[family].match(name))


def lane_costs(family: str) -> dict:
    """LUT4 per bit product of ``LANE_COUNT`` lanes of ``LANE_BITS``: the accelerator's against XOR-popcount ones.

    Both register their inputs and have the same trees; the accelerator's
    lanes have a sign and a mask per operand and count ``P`` and ``C``
    (``count_c``, the presets' choice) or ``P`` or ``C`` (one tree).
    """
    xor = XorPopcountArray(LANE_COUNT, LANE_BITS, -(-(LANE_BITS - 1).bit_length() // LANE_STAGE_LEVELS))
    costs = {"xor_popcount": synthesised_lut4(xor, [xor.si, xor.so], family)}
    for name, count_c in (("accelerator_two_trees", True), ("accelerator_one_tree", False)):
        m = Module()
        m.submodules.lanes = lanes = LaneArray(LANE_BITS, LANE_COUNT, 1, LANE_STAGE_LEVELS, count_c)
        inputs = Signal(len(lanes.i.payload.as_value()))
        output = Signal(len(lanes.o.payload.as_value()))
        m.d.comb += [lanes.i.valid.eq(1), lanes.i.payload.eq(inputs), output.eq(lanes.o.payload)]
        costs[name] = synthesised_lut4(m, [inputs, output], family)
    products = LANE_COUNT * LANE_BITS
    return {"lanes": LANE_COUNT, "bits": LANE_BITS,
            **{name: {"lut4": n, "lut4_per_bit": round(n / products, 2)} for name, n in costs.items()}}


def table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = ["| point | device | LUT4 | LUT4/bit | logic | FF | Fmax (MHz) | MACs/LUT4/s (M) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in report["points"].items():
        lines.append(
            f"| {name} | {p['device']} | {p['lut4']} | {p['lut4'] / p['macs_per_cycle']:.2f} | "
            f"{p['logic']} {p['logic_cell']} | {p['ff']} | {p['fmax_mhz']:g} | "
            f"{macs_per_s(p['macs_per_cycle'], p['lut4'], p['fmax_mhz']):.1f} |"
        )
    lines += ["", f"| {LANE_COUNT} lanes x {LANE_BITS} bits, synthesised alone | " + " | ".join(report["lanes"]) + " |",
              "| --- |" + " --- |" * len(report["lanes"])]
    for design in ("xor_popcount", "accelerator_two_trees", "accelerator_one_tree"):
        cells = [f"{c[design]['lut4']} ({c[design]['lut4_per_bit']:.2f}/bit)" for c in report["lanes"].values()]
        lines.append(f"| {design} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.yardstick", description=__doc__.split("\n\n")[0])
    parser.add_argument("--point", action="append", choices=sorted(POINTS), help="default: every point")
    args = parser.parse_args()
    use_pypi_tools()
    path = OUT / "yardstick.json"
    previous = json.loads(path.read_text())["points"] if path.exists() else {}
    points = {**previous}
    for name in args.point or list(POINTS):
        points[name] = measure_point(name, ROOT / "build" / "yardstick")
        print(f"{name}: {points[name]}", flush=True)
    lanes = {family: lane_costs(family) for family in ("ice40", "ecp5")}
    report = {"issue_figures": ISSUE_FIGURES, "points": {name: points[name] for name in POINTS if name in points},
              "lanes": lanes}
    OUT.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
