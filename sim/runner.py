"""Generate the accelerator's (or an integer unit's) Verilog and run cocotb testbenches on it.

``python -m sim.runner [TESTCASE ...]`` runs testbenches by hand; the
pytest wrappers in ``tests/sim`` call :func:`run` and :func:`run_unit`.  Builds go to
``sim/out/<config>/<simulator>/`` and ``sim/out/units/<unit>/<simulator>/``
(gitignored); a configuration is passed to the testbench as JSON in
``GSBFLOW_HW_CONFIG``, a unit's name in ``GSBFLOW_UNIT``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from pathlib import Path

from cocotb_tools.check_results import get_results
from cocotb_tools.runner import Runner

from amaranth.back import verilog
from amaranth.lib import wiring

from host.core_sim import build_verilog
from hw.accelerator import Accelerator
from hw.config import AccelConfig, preset
from hw.intunits import digits_units

OUT = Path(__file__).resolve().parent / "out"
TOPLEVEL = "accelerator"
TB_MODULE = "sim.tb_accelerator"
CONFIG_ENV = "GSBFLOW_HW_CONFIG"
UNIT_TOPLEVEL = "unit"
UNIT_TB_MODULE = "sim.tb_units"
#: the unit's name (:func:`hw.intunits.digits_units`), for the testbench to build its reference
UNIT_ENV = "GSBFLOW_UNIT"
REPORT_ENV = "GSBFLOW_SIM_REPORT"
SIMULATORS = ("icarus", "verilator")


def config_to_json(config: AccelConfig) -> str:
    """The configuration as the testbench reads it back with :func:`config_from_env`."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def config_from_env() -> AccelConfig:
    """The configuration the runner passed to this testbench process."""
    return AccelConfig(**json.loads(os.environ[CONFIG_ENV]))


def _write_verilog(design: wiring.Component, path: Path, name: str) -> None:
    """``design``'s Verilog (top module ``name``) into ``path``, rewritten only when the text changed,
    so that the simulator rebuilds exactly when the design did."""
    text = verilog.convert(design, name=name)
    if path.exists() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _compile(source: Path, toplevel: str, simulator: str) -> tuple[Runner, Path]:
    """Build ``source`` (top ``toplevel``) for ``simulator`` beside it; returns the runner and build directory."""
    build_dir = source.parent / simulator
    return build_verilog(source, toplevel, simulator, build_dir), build_dir


def build(config: AccelConfig, simulator: str = "icarus") -> tuple[Runner, Path]:
    """Generate the Verilog and build it (again only if the Verilog changed); returns the runner and build directory."""
    text = config_to_json(config)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    directory = OUT / key
    _write_verilog(Accelerator(config), directory / f"{TOPLEVEL}.v", TOPLEVEL)
    (directory / "config.json").write_text(text)
    return _compile(directory / f"{TOPLEVEL}.v", TOPLEVEL, simulator)


def _test(runner: Runner, build_dir: Path, module: str, toplevel: str, testcase: str, env: dict[str, str],
          simulator: str) -> Path:
    """Run cocotb test ``testcase`` of testbench ``module``; raises AssertionError when it fails."""
    results = runner.test(
        test_module=module, hdl_toplevel=toplevel, testcase=testcase, build_dir=build_dir,
        test_dir=build_dir, extra_env=env, timescale=("1ns", "1ps"),
        results_xml=str(Path(build_dir) / f"results_{testcase}.xml"),
    )
    tests, failures = get_results(results)
    if tests == 0 or failures:
        raise AssertionError(f"cocotb {testcase} on {simulator}: {failures} of {tests} failed (see {results})")
    return results


def run_unit(testcase: str, unit: str, simulator: str = "icarus") -> Path:
    """Run cocotb test ``testcase`` of :mod:`sim.tb_units` on the Verilog of integer unit ``unit``
    (a name of :func:`hw.intunits.digits_units`, at the digits model's widths)."""
    units = digits_units()
    if unit not in units:
        raise ValueError(f"unit must be one of {', '.join(sorted(units))}, got {unit!r}")
    source = OUT / "units" / unit / f"{UNIT_TOPLEVEL}.v"
    _write_verilog(units[unit](), source, UNIT_TOPLEVEL)
    runner, build_dir = _compile(source, UNIT_TOPLEVEL, simulator)
    return _test(runner, build_dir, UNIT_TB_MODULE, UNIT_TOPLEVEL, testcase, {UNIT_ENV: unit}, simulator)


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
    return _test(runner, build_dir, TB_MODULE, TOPLEVEL, testcase, env, simulator)


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
