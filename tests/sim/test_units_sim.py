"""cocotb testbenches of the integer units' generated Verilog under Icarus (``sim/tb_units.py``): part of ``make test``."""

import shutil

import pytest

from sim.runner import run_unit

pytestmark = pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog (iverilog) is not installed")


@pytest.mark.parametrize("unit", ["layernorm", "layernorm_reciprocal"])
def test_layernorm(unit):
    run_unit("layernorm", unit)


@pytest.mark.parametrize("unit", ["packer", "transpose"])
def test_packing(unit):
    run_unit("packing", unit)


def test_an_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="unit must be one of"):
        run_unit("layernorm", "layernorm_newton")
