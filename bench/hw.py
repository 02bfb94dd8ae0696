"""Throughput and efficiency of the board builds.

``python -m bench.hw`` combines every ``build/<board>/report.json`` (from
``make bitstream``) with the RTL cycle counts of ``bench/out/rtl_cycles.json``
(``python -m bench.rtl_cycles``: the engine layers of one image of the
random TINY model, measured on the ``default`` configuration) and writes
``bench/out/hw.json``.

A board's configuration differs from the measured one, so its cycles come
from the cycle model (:mod:`hw.cycles`, ``docs/accelerator.md``: ``rows_x *
blocks * passes * words + latency`` per run, with the layer split into runs
that fit the result buffer, :func:`hw.program.layer_cycles`), applied to the measured layer shapes.  The model is first
checked against the measurement: on the measured configuration it must
give exactly the busy cycles the RTL counted, layer by layer.

* images/s at Fmax: nextpnr's Fmax of the board's clock over the engine's
  busy cycles per image (compute-bound: loads, reads and the UART are not
  counted; the patch embedding stays on the host);
* binary MACs per LUT per cycle: ``lanes * word_bits`` plane-bit products
  a cycle (peak) over the design's LUT4s (the whole board top: accelerator,
  bridge and UART), and the same for the useful MACs (the ideal cycles of
  the model's layers over the busy cycles);
* against the yardstick measured on the same device by
  :mod:`bench.yardstick` (``bench/out/yardstick.json``: a bare XOR-popcount
  array, no control, buffers or I/O): the ratio of Fmax, and of peak binary
  MACs per LUT4 per second (``peak MACs/LUT/cycle * Fmax``) and per logic
  cell (UP5K) or slice LUT (ECP5) per second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hw.boards import BOARDS
from hw.build import LOGIC_RESOURCE
from hw.config import AccelConfig
from hw import program

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"


def macs_per_s(macs: int, area: int, fmax_mhz: float) -> float:
    """Binary MACs per unit of area per second (millions)."""
    return macs / area * fmax_mhz


def versus_yardstick(entry: dict, yardstick: dict) -> dict:
    """Ratios of a build over its yardstick: Fmax, peak MACs per LUT4 per second, and per logic cell/slice LUT per second."""
    ratios = {"fmax_ratio": entry["fmax_mhz"] / yardstick["fmax_mhz"]}
    for key, area in (("macs_per_lut_s_ratio", "lut4"), ("macs_per_logic_s_ratio", "logic")):
        ratios[key] = (macs_per_s(entry["peak_macs_per_cycle"], entry[area], entry["fmax_mhz"])
                       / macs_per_s(yardstick["macs_per_cycle"], yardstick[area], yardstick["fmax_mhz"]))
    return {**yardstick, **{key: round(value, 3) for key, value in ratios.items()}}


def layer_cycles(config: AccelConfig, layer: dict) -> int:
    """Engine busy cycles of one measured layer on ``config`` (the cycle model, :func:`hw.program.layer_cycles`)."""
    return program.layer_cycles(config, layer["rows_x"], layer["rows_y"], layer["n"], layer["passes"])


def check_cycle_model(rtl: dict) -> None:
    """The model must reproduce the RTL's busy cycles on the measured configuration."""
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in rtl["config"].items() if k != "name"}
    measured = AccelConfig(**params)
    for name, layer in rtl["layers"].items():
        model = layer_cycles(measured, layer)
        if model != layer["busy_cycles"]:
            raise AssertionError(f"cycle model {model} != RTL {layer['busy_cycles']} busy cycles for {name}")


def board_entry(report: dict, rtl: dict) -> dict:
    """Throughput and efficiency of one board build."""
    config = AccelConfig(**{k: tuple(v) if isinstance(v, list) else v
                            for k, v in report["config"]["parameters"].items()})
    cycles = sum(layer_cycles(config, layer) for layer in rtl["layers"].values())
    # useful MACs: every layer's plane-bit products, one per bit of n per (x row, y row, pass)
    macs = sum(layer["rows_x"] * layer["rows_y"] * layer["passes"] * layer["n"] for layer in rtl["layers"].values())
    fmax = min(report["clock"]["fmax_mhz"].values())
    lut4 = report["resources"]["lut4"]["used"]
    logic = report["resources"][LOGIC_RESOURCE[BOARDS[report["board"]].family]]["used"]
    peak = config.lanes * config.word_bits
    return {
        "config": report["config"]["name"],
        "lanes": config.lanes,
        "word_bits": config.word_bits,
        "device": report["device"],
        "lut4": lut4,
        "logic": logic,
        "clock_mhz": report["clock"]["freq_mhz"],
        "fmax_mhz": fmax,
        "timing_met": report["clock"]["met"],
        "cycles_per_image": cycles,
        "images_per_s_at_fmax": round(fmax * 1e6 / cycles, 1),
        "images_per_s_at_clock": round(report["clock"]["freq_mhz"] * 1e6 / cycles, 1),
        "peak_macs_per_cycle": peak,
        "peak_macs_per_lut_cycle": round(peak / lut4, 4),
        "useful_macs_per_lut_cycle": round(macs / cycles / lut4, 4),
    }


def measure(build_dir: Path = ROOT / "build", rtl_path: Path = OUT / "rtl_cycles.json",
            yardstick_path: Path = OUT / "yardstick.json") -> dict:
    """The ``bench/out/hw.json`` report for every board that has a build."""
    for path, command in ((rtl_path, "make bench"), (yardstick_path, "python -m bench.yardstick")):
        if not path.exists():
            raise SystemExit(f"error: {path} is missing: run '{command}' first")
    rtl = json.loads(rtl_path.read_text())
    yardsticks = json.loads(yardstick_path.read_text())["points"]
    check_cycle_model(rtl)
    boards = {}
    for name in BOARDS:
        path = build_dir / name / "report.json"
        if path.exists():
            boards[name] = board_entry(json.loads(path.read_text()), rtl)
            if name not in yardsticks:
                raise SystemExit(f"error: {yardstick_path} has no {name!r} point: run 'python -m bench.yardstick --point {name}'")
            boards[name]["yardstick"] = versus_yardstick(boards[name], yardsticks[name])
    if not boards:
        raise SystemExit(f"error: no build/<board>/report.json: run 'make bitstream BOARD={'|'.join(BOARDS)}' first")
    return {
        "model": rtl["model"],
        "cycles_from": "cycle model of docs/accelerator.md, checked against the RTL counts of rtl_cycles.json",
        "boards": boards,
    }


def table(report: dict) -> str:
    """The report as a Markdown table."""
    lines = [
        "| board | config (lanes x bits) | LUT4 | clock / Fmax (MHz) | cycles/image | images/s at Fmax "
        "| MACs/LUT/cycle (peak, useful) | vs yardstick: Fmax, MACs/LUT4/s, MACs/logic cell/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, b in report["boards"].items():
        met = "" if b["timing_met"] else " (not met)"
        lines.append(
            f"| {name} ({b['device']}) | {b['config']} ({b['lanes']} x {b['word_bits']}) | {b['lut4']} | "
            f"{b['clock_mhz']:g} / {b['fmax_mhz']:g}{met} | {b['cycles_per_image']} | {b['images_per_s_at_fmax']:g} | "
            f"{b['peak_macs_per_lut_cycle']:.3f}, {b['useful_macs_per_lut_cycle']:.3f} | "
            f"{b['yardstick']['fmax_ratio']:.2f}x, {b['yardstick']['macs_per_lut_s_ratio']:.3f}x, "
            f"{b['yardstick']['macs_per_logic_s_ratio']:.3f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    argparse.ArgumentParser(prog="python -m bench.hw", description=__doc__.split("\n\n")[0]).parse_args()
    report = measure()
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "hw.json").write_text(json.dumps(report, indent=1) + "\n")
    print(table(report))
    print(f"wrote {OUT / 'hw.json'}")


if __name__ == "__main__":
    main()
