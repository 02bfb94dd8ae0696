"""The iCEBreaker (iCE40UP5K-SG48): 12 MHz oscillator, SB_PLL40_PAD to the core clock."""

from __future__ import annotations

from amaranth.hdl import Instance, Module, Signal, Value
from amaranth_boards.icebreaker import ICEBreakerPlatform

from hw.boards.common import BoardTop, ClockedTop, CoreBoardTop
from hw.boards.pll import PLLSetting, ice40_pll

OSC_HZ = 12e6


class ICEBreakerClock(ClockedTop):
    """:class:`ClockedTop` for :class:`ICEBreakerPlatform`.

    The 12 MHz clock pin (35) is a PLL input pad, so the SB_PLL40_PAD takes
    it directly and drives the global network.
    """

    platform = ICEBreakerPlatform

    def pll_setting(self, freq_hz: float) -> PLLSetting:
        return ice40_pll(OSC_HZ, freq_hz)

    def clock(self, m: Module, platform: object) -> tuple[Value, Value]:
        pin = platform.request("clk12", dir="-")
        clk, lock = Signal(), Signal()
        m.submodules.pll = Instance(
            "SB_PLL40_PAD",
            **{f"p_{key}": value for key, value in self.pll.params.items()},
            i_PACKAGEPIN=pin.io, i_RESETB=1, i_BYPASS=0,
            o_PLLOUTGLOBAL=clk, o_LOCK=lock,
        )
        return clk, lock


class ICEBreakerTop(ICEBreakerClock, BoardTop):
    """The accelerator on the iCEBreaker; buffers named in ``config.spram`` go into the UP5K's SPRAM."""


class ICEBreakerCoreTop(ICEBreakerClock, CoreBoardTop):
    """The whole-model core on the iCEBreaker."""
