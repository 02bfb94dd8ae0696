"""Threshold compare for binary outputs: ``bit = direction*Y >= threshold``."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import STREAM_BITS, VALUE_BITS, _check_int
from hw.cycles import THRESHOLD_LATENCY
from hw.pipeline import pipe_signature


class Threshold(wiring.Component):
    """Compares each lane's accumulator with its column's threshold.

    The threshold words of block ``blk`` (one 32-bit word per lane, see
    :func:`hw.isa.threshold_word`: bit 31 the direction -1, bits 0..30 a
    signed ``t`` with ``bit = (Y >= t) XOR direction``) are read from the
    threshold buffer through ``thresh`` while the values wait one cycle; the
    read data is registered, then compared (one carry chain per lane).  With
    ``binary`` low the values pass through unchanged, so the stage has the
    same latency either way.  Output values are the accumulators or 0/1.
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

    latency = THRESHOLD_LATENCY

    def elaborate(self, platform: object) -> Module:
        m = Module()
        # stage 1: the threshold read; stage 2: its data registered (block RAM
        # output is slow on the ECP5); stage 3: the compare
        m.d.comb += self.thresh.addr.eq(self.i.payload.blk)
        held = [Signal.like(self.i.payload, name=f"held{stage}", reset_less=True) for stage in (1, 2)]
        valid = [Signal(name=f"valid{stage}") for stage in (1, 2)]
        m.d.sync += [held[0].eq(self.i.payload), valid[0].eq(self.i.valid), held[1].eq(held[0]), valid[1].eq(valid[0])]
        thresholds = Signal.like(self.thresh.data, reset_less=True)
        m.d.sync += thresholds.eq(self.thresh.data)
        out = Signal.like(self.o.payload, reset_less=True)
        for lane in range(self.lanes):
            word, value = thresholds[lane], held[1].value[lane]
            bit = (value >= word[:VALUE_BITS].as_signed()) ^ word[VALUE_BITS]
            m.d.sync += out.value[lane].eq(Mux(self.binary, bit, value))
        m.d.sync += [self.o.valid.eq(valid[1]), out.tag.eq(held[1].tag)]
        m.d.comb += self.o.payload.eq(out)
        return m
