# amaranth: UnusedElaboratable=no
"""Board tops, PLL settings and the build's command line, without running the toolchain."""

import json

import pytest

from hw.boards import BOARDS, board
from hw.boards.common import uart_divisor
from hw.boards.pll import ecp5_pll, ice40_pll
from hw.build import main, parse_report, program, yosys_cells
from hw.config import SMALL, preset
from hw.frames import BAUD


def test_unknown_board_lists_the_boards(capsys):
    with pytest.raises(ValueError, match="BOARD must be one of icebreaker, ulx3s, got 'foo'"):
        board("foo")
    with pytest.raises(SystemExit):
        main(["bitstream", "--board", "foo"])
    assert "icebreaker, ulx3s" in capsys.readouterr().err


def test_every_board_has_a_valid_default_config():
    for b in BOARDS.values():
        assert preset(b.config) is not None


@pytest.mark.parametrize("f_out", [12e6, 30e6, 40e6, 48e6])
def test_ice40_pll_within_ranges(f_out):
    s = ice40_pll(12e6, f_out)
    p = s.params
    f_pfd = 12e6 / (p["DIVR"] + 1)
    f_vco = f_pfd * (p["DIVF"] + 1)
    assert 10e6 <= f_pfd <= 133e6 and 533e6 <= f_vco <= 1066e6
    assert s.freq_hz == f_vco / 2 ** p["DIVQ"]
    assert f_out <= s.freq_hz < f_out * 1.05


@pytest.mark.parametrize("f_out", [50e6, 100e6, 125e6])
def test_ecp5_pll_within_ranges(f_out):
    s = ecp5_pll(25e6, f_out)
    p = s.params
    assert s.freq_hz == 25e6 / p["CLKI_DIV"] * p["CLKFB_DIV"]
    assert 400e6 <= s.freq_hz * p["CLKOP_DIV"] <= 800e6
    assert f_out <= s.freq_hz < f_out * 1.05


def test_pll_out_of_reach():
    with pytest.raises(ValueError, match="cannot make 2000 MHz"):
        ice40_pll(12e6, 2000e6)


@pytest.mark.parametrize("name,primitives", [
    ("icebreaker", {"SB_PLL40_PAD": 1, "SB_SPRAM256KA": 2}),
    ("ulx3s", {"EHXPLLL": 1, "SB_SPRAM256KA": 0}),
])
def test_board_tops_elaborate(name, primitives, tmp_path):
    b = board(name)
    top = b.top(SMALL, b.freq_hz)
    assert top.freq_hz >= b.freq_hz
    assert top.divisor == round(top.freq_hz / BAUD)
    plan = b.top.platform().prepare(top, name="top")
    il = plan.files["top.il"]
    il = il if isinstance(il, str) else il.decode()
    for primitive, count in primitives.items():
        assert il.count(f"cell \\{primitive} ") == count, primitive


@pytest.mark.parametrize("name, divisor", [("icebreaker", 12), ("ulx3s", 33)])
def test_the_default_baud_rate_is_made_within_tolerance(name, divisor):
    b = board(name)
    top = b.top(SMALL, b.freq_hz)
    assert (top.baud, top.divisor) == (BAUD, divisor)
    assert abs(top.freq_hz / top.divisor - BAUD) / BAUD <= 0.02
    assert b.top(SMALL, b.freq_hz, 115200).divisor == round(top.freq_hz / 115200)


@pytest.mark.parametrize("baud, message", [
    (20_000_000, "too fast for a 36 MHz clock"),       # fewer than 4 cycles a bit
    (2_500_000, "nearest divisor, 14, gives 2571429 baud, 2.9% off"),
    (0, "positive int"), (True, "positive int"),
])
def test_baud_rates_the_clock_cannot_make_are_refused(baud, message):
    with pytest.raises(ValueError, match=message):
        uart_divisor(36e6, baud)


def test_the_build_cli_refuses_a_baud_rate_before_building(capsys):
    with pytest.raises(SystemExit):
        main(["bitstream", "--board", "icebreaker", "--baud", "2500000"])
    assert "--baud: baud 2500000 cannot be made from a 36 MHz clock" in capsys.readouterr().err


def test_program_explains_what_to_install(tmp_path, monkeypatch):
    b = board("ulx3s")
    (tmp_path / b.bitstream).write_bytes(b"\0")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="install openFPGALoader"):
        program(b, tmp_path)
    with pytest.raises(SystemExit, match="make bitstream BOARD=icebreaker"):
        program(board("icebreaker"), tmp_path / "missing")


YOSYS_STAT = """
2.59. Printing statistics.

=== design hierarchy ===

       45 cells
        8   SB_MAC16
       12   SB_RAM40_4K
      561   SB_CARRY
      265   SB_DFF
      731   SB_DFFESR
     2068   SB_LUT4
"""


def test_report_parsing():
    assert yosys_cells(YOSYS_STAT)["SB_LUT4"] == 2068
    nextpnr = {
        "fmax": {"clk": {"achieved": 41.2, "constraint": 40.5}},
        "utilization": {"ICESTORM_LC": {"used": 3072, "available": 5280},
                        "ICESTORM_RAM": {"used": 12, "available": 30},
                        "ICESTORM_SPRAM": {"used": 2, "available": 4},
                        "ICESTORM_DSP": {"used": 2, "available": 8}},
    }
    resources, clock = parse_report("ice40", json.loads(json.dumps(nextpnr)), YOSYS_STAT, 40.5e6)
    assert resources["lut4"] == {"used": 2068, "available": 5280}
    assert resources["ff"] == {"used": 996, "available": 5280}
    assert resources["spram"] == {"used": 2, "available": 4}
    assert clock == {"freq_mhz": 40.5, "fmax_mhz": {"clk": 41.2}, "met": True}
