"""Lane utilisation of the RTL for every engine layer of the default model.

``python -m bench.rtl_cycles`` runs the ``model_layers`` cocotb testbench
(:mod:`sim.tb_accelerator`) on the generated Verilog, reads the busy cycles
the accelerator counted for each layer, and divides the ideal cycles of the
project's cycle model (:func:`hw.cycles.ideal_cycles`: one word of
``lanes`` plane products per cycle) by them.  It also runs the random-command
and the engine-speed testbenches to measure simulated cycles per wall-clock
second, for each simulator given (the first with the Python testbench in
every cycle, the second with it waiting out one long run).  Writes ``bench/out/rtl_cycles.json``.  ``useful`` also
counts the lanes left idle by a last, partial block of y rows, which the
ideal model already pays for.
"""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import asdict
from pathlib import Path

from hw.config import SMALL, preset
from hw.cycles import ideal_cycles
from sim.model_layers import model_layers
from sim.runner import SIMULATORS, run

OUT = Path(__file__).resolve().parent / "out"
TARGET = 0.8


def measure(config_name: str, simulators: list[str], speed_ops: int) -> dict:
    """Run the testbenches and return the report."""
    config = preset(config_name)
    OUT.mkdir(parents=True, exist_ok=True)
    speeds = {}
    layers: dict = {}
    skipped: dict = {}
    for simulator in simulators:
        scratch = OUT / f"rtl_sim_{simulator}.json"
        scratch.unlink(missing_ok=True)
        run("model_layers", config, simulator, report=scratch)
        run("random_commands", SMALL, simulator, report=scratch, extra_env={"GSBFLOW_RANDOM_OPS": str(speed_ops)})
        run("engine_speed", config, simulator, report=scratch)
        report = json.loads(scratch.read_text())
        speeds[simulator] = {name: {"cycles": r["cycles"], "wall_s": round(r["wall_s"], 2),
                                    "cycles_per_s": round(r["cycles_per_s"])} for name, r in report.items()}
        if not layers:
            layers, skipped = report["model_layers"]["layers"], report["model_layers"]["skipped"]
    calls = model_layers(config.word_bits)
    for name, layer in layers.items():
        call = calls[name]
        layer["ideal_cycles"] = ideal_cycles(call.groups_x, call.groups_y, config.lanes)
        layer["utilisation"] = round(layer["ideal_cycles"] / layer["busy_cycles"], 4)
        # the ideal already pays for idle lanes in a last, partial block; this does not
        layer["lane_fill"] = round(layer["rows_y"] / (layer["blocks"] * config.lanes), 4)
        layer["useful_utilisation"] = round(layer["utilisation"] * layer["lane_fill"], 4)
    total_ideal = sum(layer["ideal_cycles"] for layer in layers.values())
    total_busy = sum(layer["busy_cycles"] for layer in layers.values())
    return {
        "config": {"name": config_name, **asdict(config)},
        "model": "model.random_model.random_model(TINY, seed=0)",
        "target_utilisation": TARGET,
        "layers": layers,
        "skipped": skipped,
        "total": {"ideal_cycles": total_ideal, "busy_cycles": total_busy,
                  "utilisation": round(total_ideal / total_busy, 4) if total_busy else None},
        "min_utilisation": min((layer["utilisation"] for layer in layers.values()), default=None),
        "simulation_speed": speeds,
    }


def table(report: dict) -> str:
    """The report as a text table."""
    lines = [f"{'layer':24} {'encodings':38} {'n':>4} {'items':>6} {'ideal':>6} {'busy':>6} {'util':>6} {'useful':>6}"]
    for name, r in report["layers"].items():
        enc = " x ".join("+".join(side) for side in r["encodings"])
        lines.append(f"{name:24} {enc:38} {r['n']:>4} {r['items']:>6} {r['ideal_cycles']:>6} "
                      f"{r['busy_cycles']:>6} {r['utilisation']:>6.1%} {r['useful_utilisation']:>6.1%}")
    t = report["total"]
    lines.append(f"{'total':24} {'':38} {'':>4} {'':>6} {t['ideal_cycles']:>6} {t['busy_cycles']:>6} {t['utilisation']:>6.1%}")
    for name, why in report["skipped"].items():
        lines.append(f"{name}: not run on this configuration ({why})")
    for simulator, runs in report["simulation_speed"].items():
        for test, r in runs.items():
            lines.append(f"{simulator:9} {test:16} {r['cycles']:>8} cycles in {r['wall_s']:6.1f} s: {r['cycles_per_s']:>7} cycles/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default", help="a preset of hw.config")
    parser.add_argument("--simulator", nargs="+", default=None, choices=SIMULATORS,
                        help="default: icarus, and verilator when it is on PATH")
    parser.add_argument("--speed-ops", type=int, default=3000, help="random commands for the speed measurement")
    args = parser.parse_args()
    simulators = args.simulator or ["icarus"] + (["verilator"] if shutil.which("verilator") else [])
    report = measure(args.config, simulators, args.speed_ops)
    path = OUT / "rtl_cycles.json"
    path.write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"wrote {path}")
    if report["min_utilisation"] is not None and report["min_utilisation"] < TARGET:
        print(f"warning: a layer is below the {TARGET:.0%} utilisation target")


if __name__ == "__main__":
    main()
