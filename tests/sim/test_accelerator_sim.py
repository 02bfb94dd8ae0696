"""cocotb testbenches of the generated Verilog under Icarus (``sim/tb_accelerator.py``).

``test_smoke`` is part of ``make test``; the rest run with ``make sim``.
"""

import shutil
from dataclasses import replace

import pytest

from hw.config import DEFAULT, SMALL
from sim.runner import run

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog (iverilog) is not installed")


def test_smoke():
    run("smoke", SMALL)


@pytest.mark.sim
@pytest.mark.parametrize("config", [DEFAULT, replace(SMALL, count_c=False)], ids=["default", "small_one_tree"])
def test_plane_kinds(config):
    run("plane_kinds", config)


@pytest.mark.sim
@pytest.mark.parametrize("config,ops", [(SMALL, "10000"), (replace(SMALL, count_c=False), "2000")],
                         ids=["small", "small_one_tree"])
def test_random_commands(config, ops):
    run("random_commands", config, extra_env={"GSBFLOW_RANDOM_OPS": ops})


@pytest.mark.sim
def test_reset_mid_command():
    run("reset_mid_command", DEFAULT)


@pytest.mark.sim
def test_back_to_back():
    run("back_to_back", DEFAULT)


@pytest.mark.sim
def test_model_layers():
    run("model_layers", DEFAULT)


@pytest.mark.sim
def test_engine_speed():
    run("engine_speed", DEFAULT)
