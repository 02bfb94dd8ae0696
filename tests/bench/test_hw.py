import pytest

from bench.hw import versus_yardstick


def test_ratios_are_ours_over_the_yardstick():
    yardstick = {"macs_per_cycle": 1024, "lut4": 2000, "logic": 4000, "fmax_mhz": 50.0}
    # a quarter of the MACs on half the LUT4s, the same logic cells, twice the clock
    ours = {"peak_macs_per_cycle": 256, "lut4": 1000, "logic": 4000, "fmax_mhz": 100.0}
    ratios = versus_yardstick(ours, yardstick)
    assert ratios["fmax_ratio"] == pytest.approx(2.0)
    assert ratios["macs_per_lut_s_ratio"] == pytest.approx(1.0)
    assert ratios["macs_per_logic_s_ratio"] == pytest.approx(0.5)
    assert ratios["lut4"] == 2000
