"""The ULX3S with an ECP5-85F: 25 MHz oscillator, EHXPLLL to the core clock."""

from __future__ import annotations

from amaranth.hdl import Instance, Module, Signal, Value
from amaranth.lib import io
from amaranth_boards.ulx3s import ULX3S_85F_Platform

from hw.boards.common import BoardTop, ClockedTop, CoreBoardTop
from hw.boards.pll import PLLSetting, ecp5_pll

OSC_HZ = 25e6


class ULX3SClock(ClockedTop):
    """:class:`ClockedTop` for :class:`ULX3S_85F_Platform`."""

    platform = ULX3S_85F_Platform

    def pll_setting(self, freq_hz: float) -> PLLSetting:
        return ecp5_pll(OSC_HZ, freq_hz)

    def clock(self, m: Module, platform: object) -> tuple[Value, Value]:
        m.submodules.clk25 = clk25 = io.Buffer("i", platform.request("clk25", dir="-"))
        clk, lock = Signal(), Signal()
        m.submodules.pll = Instance(
            "EHXPLLL",
            # loop filter settings as ecppll writes them
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            a_FREQUENCY_PIN_CLKI=f"{OSC_HZ / 1e6:g}", a_FREQUENCY_PIN_CLKOP=f"{self.freq_hz / 1e6:g}",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_CLKOP_ENABLE="ENABLED",
            p_FEEDBK_PATH="CLKOP",
            **{f"p_{key}": value for key, value in self.pll.params.items()},
            i_CLKI=clk25.i, i_CLKFB=clk, i_RST=0, i_STDBY=0, i_PHASESEL0=0, i_PHASESEL1=0,
            i_PHASEDIR=0, i_PHASESTEP=0, i_PHASELOADREG=0, i_PLLWAKESYNC=0, i_ENCLKOP=0,
            o_CLKOP=clk, o_LOCK=lock,
        )
        return clk, lock


class ULX3STop(ULX3SClock, BoardTop):
    """The accelerator on the ULX3S."""


class ULX3SCoreTop(ULX3SClock, CoreBoardTop):
    """The whole-model core on the ULX3S."""
