"""What every board top shares: clock and reset, the UART pins, the status LED."""

from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Module, Signal, Value
from amaranth.lib import io

from hw.boards.pll import PLLSetting
from hw.config import AccelConfig
from hw.core import CoreImage
from hw.core_link import CoreLink
from hw.frames import BAUD, BAUD_TOLERANCE
from hw.top import Top
from hw.uart import MIN_DIVISOR
#: Reset is held this long after the PLL locks: iCE40 block RAMs read as
#: zeros for about 3 us after configuration (amaranth's own iCE40 power-on
#: reset waits 15 us for the same reason).
RESET_HOLD_S = 15e-6
#: The status LED shows activity per period of 2**LED_PERIOD_BITS cycles
#: (26 ms at 40 MHz), so that a short command is visible.
LED_PERIOD_BITS = 20


class ClockedTop(Elaboratable):
    """A design on a board's PLL clock: what every top shares, accelerator or not.

    A board's subclass provides :meth:`pll_setting` (the setting for the
    requested clock) and :meth:`clock`, which instantiates the PLL and returns
    its output clock and lock signal, and names the amaranth-boards
    ``platform``.  :meth:`clock_domains` makes the ``sync`` domain from that
    clock, held in reset until :data:`RESET_HOLD_S` after lock.  nextpnr
    derives the clock's constraint from the oscillator pin's through the PLL.
    """

    def __init__(self, freq_hz: float) -> None:
        self.requested_hz = freq_hz
        self.pll = self.pll_setting(freq_hz)

    @property
    def freq_hz(self) -> float:
        """The clock the PLL really makes (at or above the requested one)."""
        return self.pll.freq_hz

    def pll_setting(self, freq_hz: float) -> PLLSetting:
        """The board's PLL setting for ``freq_hz``."""
        raise NotImplementedError

    def clock(self, m: Module, platform: object) -> tuple[Value, Value]:
        """Instantiate the PLL in ``m``; returns its output clock and lock."""
        raise NotImplementedError

    def clock_domains(self, m: Module, platform: object) -> None:
        """The ``sync`` domain from the PLL, held in reset until :data:`RESET_HOLD_S` after lock."""
        clk, lock = self.clock(m, platform)
        m.domains.sync = sync = ClockDomain("sync")
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += [sync.clk.eq(clk), ClockSignal("por").eq(clk)]
        hold = int(RESET_HOLD_S * self.freq_hz)
        timer = Signal(range(hold + 1))
        with m.If(~lock):
            m.d.por += timer.eq(0)
        with m.Elif(timer != hold):
            m.d.por += timer.eq(timer + 1)
        # registered: the reset net fans out to the whole control path
        reset = Signal(init=1)
        m.d.por += reset.eq(timer != hold)
        m.d.comb += sync.rst.eq(reset)

def uart_divisor(freq_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` on a ``freq_hz`` clock, or a ValueError saying why that rate cannot be made."""
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ValueError(f"baud must be a positive int, got {baud!r}")
    divisor = round(freq_hz / baud)
    if divisor < MIN_DIVISOR:
        raise ValueError(f"baud {baud} is too fast for a {freq_hz / 1e6:g} MHz clock: the UART needs at least "
                         f"{MIN_DIVISOR} clock cycles a bit (at most {int(freq_hz // MIN_DIVISOR)} baud)")
    error = abs(freq_hz / divisor - baud) / baud
    if error > BAUD_TOLERANCE:
        raise ValueError(f"baud {baud} cannot be made from a {freq_hz / 1e6:g} MHz clock: the nearest divisor, "
                         f"{divisor}, gives {freq_hz / divisor:.0f} baud, {error:.1%} off (at most {BAUD_TOLERANCE:.0%})")
    return divisor


class BoardTop(ClockedTop):
    """:class:`hw.top.Top` on a board: PLL clock, UART resource, status LED.

    A board's top mixes this with the board's :class:`ClockedTop` subclass.
    LED 0 lights while the bridge has a command or an answer in flight (per
    :data:`LED_PERIOD_BITS`).
    """

    def __init__(self, config: AccelConfig, freq_hz: float, baud: int = BAUD, buffer_words: int = 256) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config, self.buffer_words = config, buffer_words
        super().__init__(freq_hz)
        self.baud = baud
        #: UART clock cycles per bit at ``baud`` (:func:`uart_divisor`)
        self.divisor = uart_divisor(self.freq_hz, baud)

    def design(self) -> Elaboratable:
        """What sits between the UART pins: the frame bridge and the accelerator (:class:`hw.top.Top`)."""
        return Top(self.config, self.divisor, self.buffer_words)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        self.clock_domains(m, platform)
        m.submodules.top = top = self.design()
        uart = platform.request("uart", 0, dir="-")
        m.submodules.rx = rx = io.Buffer("i", uart.rx)
        m.submodules.tx = tx = io.Buffer("o", uart.tx)
        m.d.comb += [top.rx.eq(rx.i), tx.o.eq(top.tx)]

        # the LED shows whether the bridge was busy during the last period of
        # LED_PERIOD cycles: a free-running counter and its carry, no compare
        m.submodules.led = led = io.Buffer("o", platform.request("led", 0, dir="-"))
        ticks = Signal(LED_PERIOD_BITS)
        wrap = Signal()
        seen = Signal()
        m.d.sync += Cat(ticks, wrap).eq(ticks + 1)
        with m.If(wrap):
            m.d.sync += [led.o.eq(seen | top.busy), seen.eq(top.busy)]
        with m.Elif(top.busy):
            m.d.sync += seen.eq(1)
        return m


class CoreBoardTop(BoardTop):
    """The whole-model core (:class:`hw.core_link.CoreLink`, ``image`` in its memories) on a board: pixels in
    over the UART, the class and logits back; LED 0 as :class:`BoardTop`'s, while an image is in flight."""

    def __init__(self, config: AccelConfig, freq_hz: float, baud: int, image: CoreImage, pixels: int,
                 divider: str) -> None:
        self.image, self.pixels, self.divider = image, pixels, divider
        super().__init__(config, freq_hz, baud)

    def design(self) -> Elaboratable:
        return CoreLink(self.config, self.image, self.divisor, self.pixels, self.divider)
