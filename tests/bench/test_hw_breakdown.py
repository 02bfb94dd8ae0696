"""bench.hw_breakdown: per-module cells of a synthesis without flattening, and the lane forms' costs."""

import tempfile
from pathlib import Path

import pytest
from amaranth.back import rtlil

from bench.hw_breakdown import SignMaskLanes, lane_costs, module_cells, synthesise


def test_each_module_counts_its_own_cells():
    with tempfile.TemporaryDirectory() as work:
        log = synthesise(rtlil.convert(SignMaskLanes(8, 2, False), name="top"), "ice40", Path(work))
    modules = module_cells(log, "ice40")
    assert set(modules) == {"top", "top.lanes"}
    lanes = modules["top.lanes"]
    assert lanes["lut4"] > 0 and lanes["ff"] > 0 and lanes["dsp"] == 0
    assert modules["top"]["lut4"] == 0  # the wrapper only wires ports


def test_a_log_without_statistics_is_refused():
    with pytest.raises(ValueError, match="no statistics"):
        module_cells("yosys ran, printed nothing useful", "ice40")


def test_the_xnor_lane_costs_less_than_the_sign_mask_lane_and_that_less_than_with_c():
    rows = {r["form"]: r for r in lane_costs((8,), lanes=1)}
    assert rows["xnor"]["lut4"] < rows["sign_mask"]["lut4"] < rows["sign_mask_count_c"]["lut4"]
    assert rows["xnor"]["lut4_per_bit"] == pytest.approx(rows["xnor"]["lut4"] / 8, abs=0.01)
