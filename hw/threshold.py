"""Threshold compare for binary outputs: ``bit = direction*Y >= threshold``."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import STREAM_BITS, VALUE_BITS, _check_int
from hw.pipeline import pipe_signature


class Threshold(wiring.Component):
    """Compares each lane's accumulator with its column's threshold.

    The thresholds of block ``blk`` (one 32-bit word per lane: bit 31 set
    for direction -1, bits 0..30 the signed threshold, see
    :func:`hw.isa.threshold_word`) are read from the threshold buffer through
    ``thresh`` while the values wait one cycle; the direction is applied and
    the compare made in two more stages (each a carry chain on the UP5K).  With ``binary`` low the
    values pass through unchanged, so the stage has the same latency either
    way.  Output values are the accumulators or 0/1.
    """

    def __init__(self, lanes: int, acc_bits: int, addr_bits: int, tag_shape: object) -> None:
        self.lanes = _check_int(lanes, "lanes", 1)
        self.acc_bits = _check_int(acc_bits, "acc_bits", 2, VALUE_BITS - 1)
        values = data.ArrayLayout(signed(acc_bits), lanes)
        super().__init__({
            "i": In(pipe_signature(data.StructLayout({"value": values, "blk": addr_bits, "tag": tag_shape}))),
            "binary": In(1),
            "thresh": In(ReadPort.Signature(addr_width=addr_bits, shape=data.ArrayLayout(STREAM_BITS, lanes))),
            "o": Out(pipe_signature(data.StructLayout({"value": values, "tag": tag_shape}))),
        })

    latency = 3

    def elaborate(self, platform: object) -> Module:
        m = Module()
        # stage 1: the threshold read; stage 2: direction applied; stage 3: compare
        held = Signal.like(self.i.payload)
        valid = Signal()
        m.d.comb += self.thresh.addr.eq(self.i.payload.blk)
        m.d.sync += [held.eq(self.i.payload), valid.eq(self.i.valid)]
        directed = Signal.like(held, name="directed")
        thresholds = [Signal(signed(VALUE_BITS), name=f"threshold{lane}") for lane in range(self.lanes)]
        values = [Signal(signed(self.acc_bits + 1), name=f"directed{lane}") for lane in range(self.lanes)]
        valid2 = Signal()
        for lane in range(self.lanes):
            word = self.thresh.data[lane]
            value = held.value[lane]
            m.d.sync += [
                values[lane].eq(Mux(word[VALUE_BITS], -value, value)),
                thresholds[lane].eq(word[:VALUE_BITS].as_signed()),
            ]
        m.d.sync += [directed.eq(held), valid2.eq(valid)]
        for lane in range(self.lanes):
            bit = values[lane] >= thresholds[lane]
            m.d.sync += self.o.payload.value[lane].eq(Mux(self.binary, bit, directed.value[lane]))
        m.d.sync += [self.o.valid.eq(valid2), self.o.payload.tag.eq(directed.tag)]
        return m
