"""A plain 8N1 UART: a receiver and a transmitter with byte streams.

``divisor`` is clock cycles per bit (``clk_freq // baud``). The receiver
synchronises the line, waits for a start bit, samples each bit in its middle
and emits a byte on its stream (it has no backpressure: a byte that is not
taken in its one valid cycle is lost, as on a real wire). The transmitter
shifts out one byte per stream transfer.
"""


from amaranth.hdl import Cat, Const, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out


#: The fewest clock cycles a bit: the receiver's synchroniser and its
#: mid-bit sample need a few cycles of every bit.
MIN_DIVISOR = 4


def _check_divisor(divisor: int) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int):
        raise TypeError(f"divisor must be an int, got {type(divisor).__name__}")
    if divisor < MIN_DIVISOR:
        raise ValueError(f"divisor must be >= {MIN_DIVISOR} clock cycles per bit, got {divisor}")
    return divisor


class UARTReceiver(wiring.Component):
    """``rx`` line in, received bytes out on ``data`` (``valid`` for one cycle).

    ``data.ready`` is ignored: a byte not taken in its valid cycle is lost.
    """

    rx: In(1, init=1)
    data: Out(stream.Signature(8))
    error: Out(1)  # pulses when a stop bit is 0 (framing error; the byte is dropped)

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        timer = Signal(range(self.divisor * 3 // 2 + 1))
        bits = Signal(range(9))
        shreg = Signal(8)
        m.d.sync += [self.data.valid.eq(0), self.error.eq(0)]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    # to the middle of data bit 0: one and a half bit times
                    m.d.sync += [timer.eq(self.divisor * 3 // 2 - 1), bits.eq(0)]
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    m.d.sync += [shreg.eq(Cat(shreg[1:], line)), bits.eq(bits + 1), timer.eq(self.divisor - 1)]
                    with m.If(bits == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(timer != 0):
                    m.d.sync += timer.eq(timer - 1)
                with m.Else():
                    with m.If(line):
                        m.d.sync += [self.data.payload.eq(shreg), self.data.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.error.eq(1)
                    m.next = "IDLE"
        return m


class UARTTransmitter(wiring.Component):
    """Bytes in on ``data``, the ``tx`` line out (idle high)."""

    data: In(stream.Signature(8))
    tx: Out(1, init=1)

    def __init__(self, divisor: int) -> None:
        self.divisor = _check_divisor(divisor)
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        timer = Signal(range(self.divisor))
        frame = Signal(10, init=0x3FF)  # stop, 8 data bits, start; shifted out LSB first
        left = Signal(range(11))
        m.d.comb += [self.tx.eq(frame[0]), self.data.ready.eq(left == 0)]
        with m.If(self.data.valid & self.data.ready):
            m.d.sync += [frame.eq(Cat(Const(0, 1), self.data.payload, Const(1, 1))), left.eq(10), timer.eq(self.divisor - 1)]
        with m.Elif(left != 0):
            with m.If(timer != 0):
                m.d.sync += timer.eq(timer - 1)
            with m.Else():
                m.d.sync += [frame.eq(Cat(frame[1:], Const(1, 1))), left.eq(left - 1), timer.eq(self.divisor - 1)]
        return m
