"""A sweep over lane counts on every board: LUTs, Fmax and images/s.

``python -m bench.hw_sweep`` builds each board's configuration with
``lanes`` replaced by each of :data:`LANES` (one place-and-route per point,
seed 1, into ``build/sweep/<board>-lanes<n>/``; a point whose report exists
for the same configuration there or in ``build/<board>/`` (``make
bitstream``) is reused), then writes
``bench/out/hw_sweep.json`` and plots ``docs/hw_sweep.png``.  Images/s are
computed as in :mod:`bench.hw`.  Takes tens of minutes: not part of
``make test``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

from bench.hw import OUT, ROOT, board_entry, check_cycle_model
from hw.boards import BOARDS, board
from hw.build import build, summary
from hw.config import preset

#: Lane counts per board: the iCEBreaker's up5k preset needs one SPRAM block
#: and two DSPs per lane (4 of each: at most 4 lanes); the ECP5 has room.
LANES = {"icebreaker": (1, 2, 4), "ulx3s": (4, 8, 16)}


def point(board_name: str, lanes: int, build_dir: Path) -> dict:
    """Build (or reuse) one point; returns its report."""
    b = board(board_name)
    config = replace(preset(b.config), lanes=lanes)
    out = build_dir / f"{board_name}-lanes{lanes}"
    for path in (out / "report.json", ROOT / "build" / board_name / "report.json"):
        if path.exists():
            report = json.loads(path.read_text())
            if report["config"]["parameters"] == json.loads(json.dumps(asdict(config))):
                return report
    report = build(b, config, f"{b.config}, lanes={lanes}", out, tries=3)
    print(summary(report), flush=True)
    return report


def plot(points: dict, path: Path) -> None:
    """LUT4, Fmax and images/s over lanes, one line per board."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for name, rows in points.items():
        lanes = [r["lanes"] for r in rows]
        label = f"{name} ({rows[0]['device']})"
        axes[0].plot(lanes, [r["lut4"] for r in rows], "o-", label=label)
        axes[1].plot(lanes, [r["fmax_mhz"] for r in rows], "o-", label=label)
        axes[2].plot(lanes, [r["images_per_s_at_fmax"] for r in rows], "o-", label=label)
        axes[1].axhline(BOARDS[name].freq_hz / 1e6, ls=":", color=axes[1].lines[-1].get_color())
    for ax, title in zip(axes, ("LUT4 (whole board top)", "Fmax (MHz; dotted: target)", "images/s at Fmax")):
        ax.set_xlabel("lanes")
        ax.set_xscale("log", base=2)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[2].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hw_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--board", action="append", choices=sorted(LANES), help="default: every board")
    args = parser.parse_args()
    rtl = json.loads((OUT / "rtl_cycles.json").read_text())
    check_cycle_model(rtl)
    points = {}
    for name in args.board or sorted(LANES):
        points[name] = [board_entry(point(name, lanes, ROOT / "build" / "sweep"), rtl) for lanes in LANES[name]]
    (OUT / "hw_sweep.json").write_text(json.dumps(points, indent=1) + "\n")
    plot(points, ROOT / "docs" / "hw_sweep.png")
    for name, rows in points.items():
        for r in rows:
            print(f"{name:10} lanes {r['lanes']:>2}: {r['lut4']:>6} LUT4, Fmax {r['fmax_mhz']:6.2f} MHz"
                  f"{'' if r['timing_met'] else ' (not met)'}, {r['images_per_s_at_fmax']:>9.1f} images/s")
    print(f"wrote {OUT / 'hw_sweep.json'} and docs/hw_sweep.png")


if __name__ == "__main__":
    main()
