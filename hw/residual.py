"""The residual add in place: ``R[t, c] = saturate(R[t, c] + bias[c] + rq(Y[t, c]))`` as the values stream by.

The stage behind the proj and fc2 products in the whole-model design:
:class:`ResidualAdd` takes the engine's outputs in row and channel order
(:class:`hw.results.ResultReader`), reads each one's residual value and its
channel's bias, sends the three through :class:`hw.requantize.Requantize`
and writes the sum back over the residual value (numeric contract §8;
:func:`model.intops.requantize`, :func:`model.intops.saturate`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from hw.requantize import Requantize


class ResidualAdd(wiring.Component):
    """``rows * channels`` values in, each added into the residual memory at its place.

    ``i`` carries ``{value, channel}``, every channel of every row in order
    (the residual's words are rows of ``channels`` values, row 0 from
    ``r_base``); ``start`` (a cycle) sets the first word to ``r_base``, and
    ``multiplier`` and ``shift`` are the layer's requantizer, held while
    ``busy``. The residual is read through ``r_read`` and written back
    through ``r_write`` (the same memory: each word is read before its sum
    comes back, and no word twice), the biases through ``bias`` by channel.
    One value a cycle; the writes follow the reads by two stages and the
    requantizer's latency, in the same order, so the write address is a
    second counter.
    """

    def __init__(self, y_bits: int, r_bits: int = 16, bias_bits: int = 26, addr_bits: int = 12,
                 channel_bits: int = 8) -> None:
        self.y_bits = _check_int(y_bits, "y_bits", 2, 48)
        self.r_bits = _check_int(r_bits, "r_bits", 2, 32)
        self.bias_bits = _check_int(bias_bits, "bias_bits", 1, 48)
        self.addr_bits = _check_int(addr_bits, "addr_bits", 1, 24)
        self.channel_bits = _check_int(channel_bits, "channel_bits", 1, 24)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"value": signed(y_bits), "channel": channel_bits}))),
            "start": In(1), "r_base": In(addr_bits),
            "multiplier": In(16), "shift": In(6),
            "busy": Out(1),
            "r_read": In(ReadPort.Signature(addr_width=addr_bits, shape=signed(r_bits))),
            "r_write": In(WritePort.Signature(addr_width=addr_bits, shape=signed(r_bits))),
            "bias": In(ReadPort.Signature(addr_width=channel_bits, shape=signed(bias_bits))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.requantize = rq = Requantize(self.y_bits, self.r_bits, self.bias_bits, self.r_bits)
        m.d.comb += [rq.multiplier.eq(self.multiplier), rq.shift.eq(self.shift)]
        read_addr = Signal(self.addr_bits, reset_less=True)
        write_addr = Signal(self.addr_bits, reset_less=True)
        in_flight = Signal(range(rq.latency + 4))  # values read and not yet written
        # stage 1: an accepted value, its reads under way; stage 2: the value with its residual and bias, registered
        # (block RAM outputs are slow on the ECP5), to requantize; each stage moves when the next one takes its item
        y = Signal(signed(self.y_bits), reset_less=True)
        held = Signal()
        item = Signal.like(rq.i.payload, reset_less=True)
        ready = Signal()
        advance_item = ~ready | rq.i.ready
        advance = ~held | advance_item
        m.d.comb += [self.i.ready.eq(advance),
                     self.r_read.addr.eq(read_addr), self.bias.addr.eq(self.i.payload.channel),
                     self.r_read.en.eq(advance), self.bias.en.eq(advance),  # a held value's words stay on the ports
                     rq.i.valid.eq(ready), rq.i.payload.eq(item)]
        accepted = self.i.valid & advance
        with m.If(advance):
            m.d.sync += [held.eq(self.i.valid), y.eq(self.i.payload.value)]
        with m.If(advance_item):
            m.d.sync += [ready.eq(held), item.y.eq(y), item.r.eq(self.r_read.data), item.bias.eq(self.bias.data)]
        with m.If(accepted):
            m.d.sync += read_addr.eq(read_addr + 1)
        # the sums, in order: written back at the second counter
        m.d.comb += [rq.o.ready.eq(1), self.r_write.addr.eq(write_addr), self.r_write.data.eq(rq.o.payload),
                     self.r_write.en.eq(rq.o.valid)]
        with m.If(rq.o.valid):
            m.d.sync += write_addr.eq(write_addr + 1)
        m.d.sync += in_flight.eq(in_flight + accepted - rq.o.valid)
        m.d.comb += self.busy.eq(in_flight != 0)
        with m.If(self.start):
            m.d.sync += [read_addr.eq(self.r_base), write_addr.eq(self.r_base)]
        return m
