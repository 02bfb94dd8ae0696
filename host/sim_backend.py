"""The SimBackend: the board's gateware in the Amaranth simulator behind the real protocol.

:class:`SimLink` is a :class:`~host.protocol.Link` whose far end is the
design of :class:`hw.top.Top`, the frame bridge and the accelerator, running
in Amaranth's simulator; :class:`SimBackend` is the
:class:`~host.device.DeviceBackend` over it, so the host code, the frames and
the gateware are the ones a board runs.

Speed decides how the bytes cross.  The simulator runs the design at a few
thousand cycles per second here, and one image of the TINY model moves
about 50 KB (results come back as 32-bit words), so:

* by default (``uart=False``) a byte enters the bridge's ``rx`` stream and
  leaves its ``tx`` stream in one cycle each: the UART PHYs
  (``hw/uart.py``, tested on their own) are bypassed, the line is a byte
  stream as fast as the clock;
* with ``uart=True`` the whole :class:`~hw.top.Top`, UARTs included, runs;
  the bytes cross a bit-level serial line at ``divisor`` (default 4) clock
  cycles per bit, 40 cycles a byte, from and to a UART transmitter and
  receiver of ``hw/uart.py`` at the host's end: ten times slower, for short
  tests.

The host's end of the line is gateware too (two byte rings, see
:class:`_Line`), so Python touches the simulation every ``_STEP`` cycles,
not in every cycle.  A read waits in *simulated* time: it returns the bytes
the device sent as soon as there are some, nothing once ``timeout``
simulated seconds passed at ``clock_hz``, and nothing as soon as the device
is provably idle (nothing queued, bridge and accelerator quiet for longer
than the bridge's idle timeout, so no partial frame is left), since
nothing can arrive then.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import replace

from amaranth.hdl import Elaboratable, Module, ResetInserter, Signal
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from host.device import DeviceBackend
from host.protocol import Link, Transport
from hw.accelerator import Accelerator
from hw.bridge import Bridge
from hw.config import AccelConfig, preset
from hw.top import Top
from hw.uart import UARTReceiver, UARTTransmitter

#: The default configuration with a y buffer big enough for the resident
#: weights of the models the tests run (the UP5K's 128 bank rows are not).
#: ``max_n`` is ``min(x_depth, y_depth) * word_bits``, so the x buffer is
#: halved to keep the default's 2048 and its 30-bit accumulator.
SIM_CONFIG = replace(preset("default"), x_depth=128, y_depth=4096)
#: Simulated cycles between two looks of the host at the line.
_STEP = 64
#: Bytes each of the line's two rings holds.
_RING = 2048
#: Marker in the line queue: pulse the device's reset there.
_RESET = -1


class _Line(Elaboratable):
    """The board's design under a reset input, and the host's end of the line in gateware.

    The host's bytes wait in the ring ``rx_mem`` (the host advances
    ``rx_head``, the line ``rx_tail``) and enter the bridge's ``rx`` stream
    one a cycle, or, with ``divisor``, a UART transmitter that drives the
    :class:`~hw.top.Top`'s ``rx`` pin while a UART receiver decodes its
    ``tx`` pin.  The device's bytes go into the ring ``tx_mem`` at
    ``tx_head``.  ``quiet`` counts the cycles since anything moved.  Only
    the device is under ``rst``: a reset does not touch the line.
    """

    def __init__(self, config: AccelConfig, buffer_words: int, divisor: int | None):
        self.divisor = divisor
        self.rst = Signal()
        self.rx_mem = Memory(shape=8, depth=_RING, init=[])
        self.tx_mem = Memory(shape=8, depth=_RING, init=[])
        self.rx_head, self.rx_tail, self.tx_head = Signal(16), Signal(16), Signal(16)
        self.quiet = Signal(32)
        self.top: Top | None = None
        if divisor is None:
            self.idle_timeout = 32
            self.bridge = Bridge(config, buffer_words, self.idle_timeout)
            self.accelerator = Accelerator(config)
        else:
            self.top = Top(config, divisor, buffer_words)
            self.idle_timeout = self.top.idle_timeout

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.rx_mem, m.submodules.tx_mem = self.rx_mem, self.tx_mem
        rd, wr = self.rx_mem.read_port(domain="comb"), self.tx_mem.write_port()
        pending = self.rx_head != self.rx_tail
        device = Module()
        if self.top is None:
            device.submodules.bridge, device.submodules.accelerator = self.bridge, self.accelerator
            wiring.connect(device, self.bridge.cmd, self.accelerator.cmd)
            wiring.connect(device, self.accelerator.rsp, self.bridge.rsp)
            into, out = self.bridge.rx, self.bridge.tx
            m.d.comb += out.ready.eq(1)
            busy = self.bridge.busy | out.valid  # busy: also while it checks a frame, before any word moves
        else:
            device.submodules.top = self.top
            m.submodules.host_tx = host_tx = UARTTransmitter(self.divisor)
            m.submodules.host_rx = host_rx = UARTReceiver(self.divisor)
            m.d.comb += [self.top.rx.eq(host_tx.tx), host_rx.rx.eq(self.top.tx)]
            into, out = host_tx.data, host_rx.data
            busy = self.top.busy | ~self.top.tx | ~self.top.rx | ~into.ready
        m.submodules.device = ResetInserter(self.rst)(device)
        m.d.comb += [rd.addr.eq(self.rx_tail), into.valid.eq(pending), into.payload.eq(rd.data)]
        with m.If(into.valid & into.ready):
            m.d.sync += self.rx_tail.eq(self.rx_tail + 1)
        m.d.comb += [wr.addr.eq(self.tx_head), wr.data.eq(out.payload), wr.en.eq(out.valid)]
        with m.If(out.valid):
            m.d.sync += self.tx_head.eq(self.tx_head + 1)
        with m.If(pending | busy | out.valid):
            m.d.sync += self.quiet.eq(0)
        with m.Elif(~self.quiet.all()):
            m.d.sync += self.quiet.eq(self.quiet + 1)
        return m


class SimLink(Link):
    """A simulated serial line to the simulated board (see the module docstring)."""

    def __init__(self, config: AccelConfig = SIM_CONFIG, buffer_words: int = 256, uart: bool = False,
                 divisor: int = 4, clock_hz: float = 40e6):
        if clock_hz <= 0:
            raise ValueError(f"clock_hz must be > 0, got {clock_hz}")
        self.config, self.clock_hz = config, clock_hz
        self.line = _Line(config, buffer_words, divisor if uart else None)
        #: simulated clock cycles so far
        self.cycle = 0
        self._queue: deque[int] = deque()   # bytes not yet in the ring, and _RESET markers
        self._out = bytearray()
        self._quiet = 0
        self._rx_head = self._tx_tail = 0
        per_byte = 10 * divisor if uart else 1
        self._idle_after = self.line.idle_timeout + 2 * per_byte + 16
        self.sim = Simulator(self.line)
        self.sim.add_clock(1 / clock_hz)
        self.sim.add_testbench(self._host, background=True)

    def write(self, data: bytes) -> None:
        self._queue.extend(data)

    def read(self, timeout: float) -> bytes:
        deadline = self.cycle + max(1, int(timeout * self.clock_hz))
        while not self._out and self.cycle < deadline:
            if not self._queue and self._quiet > self._idle_after:
                break   # the device is idle and nothing is on its way: nothing can arrive
            self.cycle += _STEP
            self.sim.run_until(self.cycle / self.clock_hz)
        data = bytes(self._out)
        self._out.clear()
        return data

    def reset_device(self) -> None:
        """Pulse the device's reset once the bytes written so far have entered it."""
        self._queue.append(_RESET)

    async def _host(self, ctx: object) -> None:
        """Every ``_STEP`` cycles: take the device's bytes, give it the queued ones."""
        line = self.line
        while True:
            await ctx.delay(_STEP / self.clock_hz)
            tx_head, rx_tail = ctx.get(line.tx_head), ctx.get(line.rx_tail)
            self._quiet = ctx.get(line.quiet)
            while self._tx_tail != tx_head:
                self._out.append(ctx.get(line.tx_mem.data[self._tx_tail % _RING]))
                self._tx_tail = (self._tx_tail + 1) & 0xFFFF
            if self._queue and self._queue[0] == _RESET and rx_tail == self._rx_head:
                self._queue.popleft()
                ctx.set(line.rst, 1)
                await ctx.tick()
                ctx.set(line.rst, 0)
                self._quiet = 0
            while self._queue and self._queue[0] != _RESET and (self._rx_head - rx_tail) & 0xFFFF < _RING:
                ctx.set(line.rx_mem.data[self._rx_head % _RING], self._queue.popleft())
                self._rx_head = (self._rx_head + 1) & 0xFFFF
                self._quiet = 0
            ctx.set(line.rx_head, self._rx_head)


class FaultyLink(Link):
    """A seeded faulty line in front of a :class:`SimLink`, for fault injection.

    Each write (a command frame), and each ``per_bytes`` bytes read, is hit
    with probability ``p`` by one fault: dropped bytes, a flipped bit, a
    duplicated frame (writes only) or a device reset mid-transfer (a write is
    cut in two around a reset; a read resets the device while it executes or
    answers).  ``cut`` loses every byte, so the transport runs out of
    retries.  ``faults`` counts them by kind.
    """

    KINDS = ("drop", "flip", "duplicate", "reset")

    def __init__(self, link: SimLink, p: float, seed: int = 0, per_bytes: int = 256):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in 0..1, got {p}")
        self.link, self.p, self.per_bytes, self.rng = link, p, per_bytes, random.Random(seed)
        self.cut = False
        self.faults = dict.fromkeys(self.KINDS, 0)

    def _fault(self, data: bytes, p: float, kinds: tuple[str, ...]) -> tuple[str | None, bytes, int]:
        """``(kind, damaged data, position)``: no kind when the data passes unharmed."""
        if not data or self.rng.random() >= p:
            return None, data, 0
        kind, buf = self.rng.choice(kinds), bytearray(data)
        i = self.rng.randrange(len(buf))
        self.faults[kind] += 1
        if kind == "drop":
            del buf[i:i + self.rng.randint(1, 3)]
        elif kind == "flip":
            buf[i] ^= 1 << self.rng.randrange(8)
        elif kind == "duplicate":
            buf += data
        return kind, bytes(buf), i

    def write(self, data: bytes) -> None:
        if self.cut:
            return
        kind, data, i = self._fault(data, self.p, self.KINDS)
        if kind == "reset":
            self.link.write(data[:i])
            self.link.reset_device()
            data = data[i:]
        self.link.write(data)

    def read(self, timeout: float) -> bytes:
        if self.cut:
            return b""
        data = self.link.read(timeout)
        p = 1 - (1 - self.p) ** (len(data) / self.per_bytes)
        kind, data, _ = self._fault(data, p, ("drop", "flip", "reset"))
        if kind == "reset":
            self.link.reset_device()
        return data


class SimBackend(DeviceBackend):
    """The DeviceBackend over a :class:`SimLink` (or over ``link``, e.g. a faulty wrapper of one).

    ``clock_hz`` is the simulated clock, for the line and for the host's run timeouts.
    """

    def __init__(self, config: AccelConfig = SIM_CONFIG, uart: bool = False, link: Link | None = None,
                 timeout: float = 0.01, retries: int = 5, buffer_words: int = 256, clock_hz: float = 40e6,
                 **kwargs: object):
        self.link = link if link is not None else SimLink(config, buffer_words, uart, clock_hz=clock_hz)
        super().__init__(Transport(self.link, timeout, retries), config, buffer_words, clock_hz=clock_hz, **kwargs)
