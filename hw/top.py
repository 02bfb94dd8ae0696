"""The board-independent top: UART, frame bridge and accelerator.

Board tops (``hw/boards/``) wrap it with a platform's pins and clock; the
SimBackend (``host/sim_backend.py``) simulates it with its serial line, so the
simulated and the real device are the same design.
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.accelerator import Accelerator, SkidBuffer
from hw.bridge import Bridge
from hw.config import AccelConfig
from hw.uart import UARTReceiver, UARTTransmitter


class Top(wiring.Component):
    """``rx``/``tx`` serial lines in and out; ``busy`` for a status LED."""

    rx: In(1, init=1)
    tx: Out(1, init=1)
    busy: Out(1)

    def __init__(self, config: AccelConfig, divisor: int, buffer_words: int = 256, idle_timeout: int | None = None) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config, self.divisor, self.buffer_words = config, divisor, buffer_words
        # a gap of two byte times inside a frame drops it
        self.idle_timeout = idle_timeout if idle_timeout is not None else 20 * divisor
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.uart_rx = rx = UARTReceiver(self.divisor)
        m.submodules.uart_tx = tx = UARTTransmitter(self.divisor)
        m.submodules.bridge = bridge = Bridge(self.config, self.buffer_words, self.idle_timeout)
        m.submodules.accelerator = accel = Accelerator(self.config)
        wiring.connect(m, rx.data, bridge.rx)
        # registered, so that the bridge's byte logic sees the UART's ready from a flip-flop
        m.submodules.tx_reg = tx_reg = SkidBuffer(8)
        wiring.connect(m, bridge.tx, tx_reg.i)
        wiring.connect(m, tx_reg.o, tx.data)
        wiring.connect(m, bridge.cmd, accel.cmd)
        wiring.connect(m, accel.rsp, bridge.rsp)
        m.d.comb += [rx.rx.eq(self.rx), self.tx.eq(tx.tx), self.busy.eq(bridge.busy)]
        return m
