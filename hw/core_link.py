"""The whole-model core behind a serial line: an image's pixel bytes in, its class and logits out.

The link protocol of the whole-model design (docs/protocol.md, "The
whole-model link"): the host sends an image as its ``P`` pixels, one byte
each, patch by patch (:meth:`host.core_sim.CoreSim.pixels`); after the
``P``-th the core runs, and the link answers ``1 + 4 * classes + 4`` bytes
(:func:`hw.frames.whole_model_answer_bytes`): the class index, then each
logit as four bytes, least significant first (two's complement), then the
core's cycles for the image (start to idle, four bytes the same way). The host sends the next image once the answer is in:
bytes that arrive while the core runs are dropped. A gap of more than
``idle_timeout`` cycles (default two byte times) inside an image starts
the image again, so a lost byte costs one image, not the line.
"""


from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.core import CoreImage, ModelCore
from hw.uart import UARTReceiver, UARTTransmitter


class CoreLink(wiring.Component):
    """``rx``/``tx`` serial lines at ``divisor`` clock cycles a bit, :class:`hw.core.ModelCore` between them;
    ``busy`` while an image is in or its answer out (a status LED)."""

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, config: AccelConfig, image: CoreImage, divisor: int, pixels: int, divider: str = "serial",
                 idle_timeout: int | None = None) -> None:
        if not 1 <= pixels <= image.values:
            raise ValueError(f"pixels must be 1..{image.values} (the values memory), got {pixels}")
        self.config, self.image, self.divisor, self.pixels, self.divider = config, image, divisor, pixels, divider
        self.idle_timeout = 20 * divisor if idle_timeout is None else idle_timeout
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.uart_rx = rx = UARTReceiver(self.divisor)
        m.submodules.uart_tx = tx = UARTTransmitter(self.divisor)
        m.submodules.core = core = ModelCore(self.config, self.image, self.divider)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx)]
        # in: the pixels; the last one starts the core
        received = Signal(range(self.pixels))
        quiet = Signal(range(self.idle_timeout + 1))
        m.d.comb += [core.pixels.valid.eq(rx.data.valid), core.pixels.payload.eq(rx.data.payload)]
        m.d.sync += core.start.eq(0)
        with m.If(rx.data.valid & core.pixels.ready):
            m.d.sync += [received.eq(received + 1), quiet.eq(0)]
            with m.If(received == self.pixels - 1):
                m.d.sync += [received.eq(0), core.start.eq(1)]
        with m.Elif((received != 0) & (quiet != self.idle_timeout)):
            m.d.sync += quiet.eq(quiet + 1)
        with m.Elif(received != 0):  # a gap inside an image: start it again
            m.d.sync += [received.eq(0), quiet.eq(0)]
        m.d.comb += core.pixels_first.eq(received == 0)
        # the image's cycles, start to idle
        cycles = Signal(32)
        with m.If(core.start):
            m.d.sync += cycles.eq(1)
        with m.Elif(core.busy):
            m.d.sync += cycles.eq(cycles + 1)
        # out: once the core is done, the class, then the logits and the cycles, a byte at a time
        logit = Signal(range(self.image.classes + 1), reset_less=True)
        word = Signal(32, reset_less=True)
        byte = Signal(range(4), reset_less=True)
        m.d.comb += core.logit_addr.eq(logit)
        with m.FSM():
            with m.State("receive"):
                with m.If(core.start):
                    m.next = "run"
            with m.State("run"):
                m.d.comb += self.busy.eq(1)
                with m.If(~core.start & ~core.busy):
                    m.d.sync += logit.eq(0)
                    m.next = "class"
            with m.State("class"):
                m.d.comb += [self.busy.eq(1), tx.data.valid.eq(1), tx.data.payload.eq(core.klass)]
                with m.If(tx.data.ready):
                    m.next = "read"
            with m.State("read"):  # logit's word is on the port the cycle after its address
                m.d.comb += self.busy.eq(1)
                m.next = "latch"
            with m.State("latch"):  # after the last logit, the cycle count
                m.d.comb += self.busy.eq(1)
                m.d.sync += [word.eq(Mux(logit == self.image.classes, cycles, core.logit)), byte.eq(0)]
                m.next = "send"
            with m.State("send"):
                m.d.comb += [self.busy.eq(1), tx.data.valid.eq(1), tx.data.payload.eq(word[:8])]
                with m.If(tx.data.ready):
                    m.d.sync += [word.eq(word >> 8), byte.eq(byte + 1)]
                    with m.If(byte == 3):
                        m.d.sync += logit.eq(logit + 1)
                        m.next = "read"
                        with m.If(logit == self.image.classes):
                            m.next = "receive"
        return m
