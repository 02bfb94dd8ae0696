"""Where a board build's logic goes: cells per module, and what a lane costs.

``python -m bench.hw_breakdown [--boards icebreaker] [--config NAME]``
synthesises each board's top (the preset of ``make bitstream`` unless
``--config`` names another) with the board build's own yosys script, but
without flattening, so that ``stat`` counts the cells of every module of
the hierarchy on its own (LUT4, flip-flops, carries, block RAM, DSP).  It
also synthesises the lane array alone at a few word widths, in the three
forms that matter for the whole-model issue: today's sign-and-mask lane
(``LaneArray``, the ``up5k`` preset's form), the same with the ``C`` tree
(``count_c``) and a pure XNOR-popcount lane (one sign word a lane, no mask:
:class:`XnorLanes`, a model of that design, not used by the accelerator).

Prints two tables and writes ``bench/out/hw_breakdown.json``.  Synthesis
only (no place and route), about 30 s.  Without flattening, yosys cannot
optimise across module boundaries: the UP5K top's totals (2,582 LUT4, 3,534
flip-flops) are 0.4 % and 9 % above the flattened build's (``report.json`` of
``make bitstream``: 2,571 and 3,252); the shares are what this is for.  Only
the iCE40 boards: this yosys's ``synth_ecp5 -noflatten`` stops on an internal
assertion (``rtlil.cc``, in the LUT mapper's reintegration; with abc9, abc
and abc2 alike), so the ECP5 top has no per-module breakdown.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import tempfile
from pathlib import Path

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from bench import write_report
from hw.boards import BOARDS, board
from hw.build import KEEP_DUPLICATES, ONE_HOT_FSMS, SYNTH_OPTS, TOOLS, UNDEFINED_COLLISIONS, use_pypi_tools
from hw.config import preset
from hw.intunits import unit_cells
from hw.lanes import LaneArray, plane_word, popcount_tree
from model import golden

OUT = Path(__file__).resolve().parent / "out" / "hw_breakdown.json"

#: Cell classes per family: the yosys cell names each class counts (a trailing ``*`` is a prefix).
CELL_CLASSES = {
    "ice40": {"lut4": ("SB_LUT4",), "ff": ("SB_DFF*",), "carry": ("SB_CARRY",),
              "bram": ("SB_RAM40_4K",), "spram": ("SB_SPRAM256KA",), "dsp": ("SB_MAC16",)},
}
#: Word widths of the lane comparison (the up5k preset's 8, the ecp5 preset's 16, and wider).
LANE_WORD_BITS = (8, 16, 32, 64)
LANE_COUNT = 4
#: Boards whose top synthesises without flattening (see the module's docstring).
BREAKDOWN_BOARDS = sorted(name for name in BOARDS if board(name).family == "ice40")


def _classify(cells: dict[str, int], family: str) -> dict[str, int]:
    """Cell counts summed into the family's classes."""
    out = {}
    for cls, names in CELL_CLASSES[family].items():
        out[cls] = sum(n for cell, n in cells.items()
                       if any(cell.startswith(p[:-1]) if p.endswith("*") else cell == p for p in names))
    return out


def module_cells(log: str, family: str) -> dict[str, dict[str, int]]:
    """Each module's own cells (submodules not included) from the last ``stat`` of a
    ``-noflatten`` synthesis log, keyed by the module's hierarchical name."""
    start = log.rfind("Printing statistics")
    if start < 0:
        raise ValueError("no statistics ('stat') in the yosys log")
    parts = re.split(r"^=== (.+?) ===$", log[start:], flags=re.MULTILINE)
    modules = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name == "design hierarchy":
            continue
        cells: dict[str, int] = {}
        for count, cell in re.findall(r"^\s+(\d+)\s+(\$?[\w$\\]+)$", body, re.MULTILINE):
            cells[cell] = cells.get(cell, 0) + int(count)
        modules[name] = _classify(cells, family)
    if not modules:
        raise ValueError("the yosys log's statistics name no module")
    return modules


def synthesise(il: str, family: str, work: Path) -> str:
    """Run the board build's yosys script on RTLIL ``il`` in ``work``, without flattening; returns the log."""
    use_pypi_tools()
    (work / "top.il").write_text(il)
    prelude = "; ".join(f"{UNDEFINED_COLLISIONS}\n{KEEP_DUPLICATES}\n{ONE_HOT_FSMS}".splitlines())
    script = f"read_rtlil top.il; {prelude}; synth_{family} {SYNTH_OPTS[family]} -noflatten -top top; stat"
    subprocess.run([TOOLS["YOSYS"], "-q", "-l", "yosys.log", "-p", script], cwd=work,
                   capture_output=True, check=True)
    return (work / "yosys.log").read_text()


def board_breakdown(board_name: str, config_name: str | None = None) -> dict:
    """Per-module cells of a board's top, largest first, with each module's share of the total."""
    b = board(board_name)
    config_name = config_name or b.config
    top = b.top(preset(config_name), b.freq_hz)
    plan = b.top.platform().build(top, name="top", do_build=False)
    with tempfile.TemporaryDirectory() as work:
        modules = module_cells(synthesise(plan.files["top.il"], b.family, Path(work)), b.family)
    total = {cls: sum(m[cls] for m in modules.values()) for cls in CELL_CLASSES[b.family]}
    rows = [{"module": name.removeprefix("top.top.").removeprefix("top."), **cells,
             "lut4_share": round(cells["lut4"] / max(total["lut4"], 1), 4),
             "ff_share": round(cells["ff"] / max(total["ff"], 1), 4)}
            for name, cells in modules.items() if any(cells.values())]
    rows.sort(key=lambda r: -(r["lut4"] + r["ff"]))
    return {"board": board_name, "family": b.family, "config": config_name, "total": total, "modules": rows}


class XnorLanes(wiring.Component):
    """A pure XNOR-popcount lane array, modelled for the cost comparison:
    ``popcount(x ^ y[i])`` on one sign word a lane, no mask word (bipolar
    operands only), the popcount tree of :class:`hw.lanes.LaneArray`."""

    def __init__(self, word_bits: int, lanes: int, stage_levels: int = 2) -> None:
        self.word_bits, self.lanes, self.stage_levels = word_bits, lanes, stage_levels
        super().__init__({"x": In(word_bits), "y": In(data.ArrayLayout(word_bits, lanes)),
                          "value": Out(data.ArrayLayout(signed(golden.dot_bits(word_bits)), lanes))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        for lane in range(self.lanes):
            differ = Signal(self.word_bits, name=f"differ{lane}", reset_less=True)
            m.d.sync += differ.eq(self.x ^ self.y[lane])
            m.d.comb += self.value[lane].eq(popcount_tree(m, differ, self.stage_levels, f"p{lane}"))
        return m


class SignMaskLanes(wiring.Component):
    """:class:`hw.lanes.LaneArray` with plain ports (always valid), so that it synthesises alone."""

    def __init__(self, word_bits: int, lanes: int, count_c: bool) -> None:
        self.word_bits, self.lanes, self.count_c = word_bits, lanes, count_c
        word = plane_word(word_bits)
        super().__init__({"x": In(word), "y": In(data.ArrayLayout(word, lanes)), "cmode": In(1),
                          "value": Out(data.ArrayLayout(signed(golden.dot_bits(word_bits)), lanes))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.lanes = lanes = LaneArray(self.word_bits, self.lanes, 1, count_c=self.count_c)
        m.d.comb += [lanes.i.valid.eq(1), lanes.i.payload.x.eq(self.x), lanes.i.payload.y.eq(self.y),
                     lanes.i.payload.cmode.eq(self.cmode), self.value.eq(lanes.o.payload.value)]
        return m


def lane_costs(word_bits: tuple[int, ...] = LANE_WORD_BITS, lanes: int = LANE_COUNT) -> list[dict]:
    """UP5K cells of each lane form at each word width (synthesised alone, as :func:`hw.intunits.unit_cells`
    synthesises a unit), and LUT4 per lane bit."""
    forms = {"sign_mask": lambda w: SignMaskLanes(w, lanes, False),
             "sign_mask_count_c": lambda w: SignMaskLanes(w, lanes, True),
             "xnor": lambda w: XnorLanes(w, lanes)}
    rows = []
    for w in word_bits:
        for form, make in forms.items():
            with tempfile.TemporaryDirectory() as work:
                cells = unit_cells(lambda: make(w), Path(work))
            rows.append({"form": form, "word_bits": w, "lanes": lanes, **cells,
                         "lut4_per_bit": round(cells["lut4"] / (lanes * w), 2),
                         "ff_per_bit": round(cells["ff"] / (lanes * w), 2)})
    return rows


def _print_board(result: dict, top_n: int) -> None:
    total = result["total"]
    print(f"\n{result['board']} ({result['config']}): {total['lut4']} LUT4, {total['ff']} FF unflattened")
    print(f"{'module':44s} {'LUT4':>6s} {'share':>6s} {'FF':>6s} {'share':>6s} {'carry':>6s} {'RAM':>4s} {'DSP':>4s}")
    for r in result["modules"][:top_n]:
        print(f"{r['module']:44s} {r['lut4']:6d} {r['lut4_share']:6.1%} {r['ff']:6d} {r['ff_share']:6.1%} "
              f"{r['carry']:6d} {r['bram']:4d} {r['dsp']:4d}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hw_breakdown", description=__doc__.split("\n\n")[0])
    p.add_argument("--boards", nargs="*", default=["icebreaker"], choices=BREAKDOWN_BOARDS,
                   help="boards whose top to break down (default: icebreaker; none: lanes only)")
    p.add_argument("--config", default=None, help="accelerator preset (default: each board's own)")
    p.add_argument("--no-lanes", action="store_true", help="skip the lane comparison")
    p.add_argument("--top", type=int, default=16, help="modules to print per board (all are written)")
    p.add_argument("--out", type=Path, default=OUT, help="JSON result file")
    a = p.parse_args(argv)
    result: dict = {"boards": [board_breakdown(name, a.config) for name in a.boards]}
    for r in result["boards"]:
        _print_board(r, a.top)
    if not a.no_lanes:
        result["lanes"] = lane_costs()
        print(f"\nlane arrays alone on the UP5K ({LANE_COUNT} lanes, synth_ice40, flattened)")
        print(f"{'form':20s} {'word':>5s} {'LUT4':>6s} {'FF':>6s} {'LUT4/bit':>9s} {'FF/bit':>7s}")
        for r in result["lanes"]:
            print(f"{r['form']:20s} {r['word_bits']:5d} {r['lut4']:6d} {r['ff']:6d} "
                  f"{r['lut4_per_bit']:9.2f} {r['ff_per_bit']:7.2f}")
    write_report(result, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
