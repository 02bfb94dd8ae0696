"""Argmax over a stream of logits: the index of the largest, the lowest index on a tie.

The gateware form of :func:`model.intops.argmax`, the last step of
:func:`model.intvit.forward` (numeric contract, section 9): the class of an
image from its summed int32 logits.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int, ceil_log2


class Argmax(wiring.Component):
    """The index and value of the largest of a row of signed ``value_bits`` integers, one a cycle.

    ``i`` carries ``{value, last}``: a row is the values up to and including
    one with ``last`` set, at most ``max_len`` long (indices count from 0 and
    wrap past it). A value replaces the best so far only when strictly
    larger, so the lowest index wins a tie. ``o`` carries ``{index, value}``
    of each row, registered: valid the cycle after the row's last value, held
    until taken; the next row streams in meanwhile (``i`` stalls only while a
    finished row waits to be taken and another ends). One comparator.
    """

    def __init__(self, value_bits: int, max_len: int) -> None:
        self.value_bits = _check_int(value_bits, "value_bits", 2, 64)
        self.max_len = _check_int(max_len, "max_len", 1, 1 << 16)
        index = unsigned(max(1, ceil_log2(max_len)))
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"value": signed(value_bits), "last": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"index": index, "value": signed(value_bits)}))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i, o = self.i.payload, self.o.payload
        fresh = Signal(init=1)  # the next value starts a row
        best = Signal.like(i.value, reset_less=True)
        best_index = Signal.like(o.index, reset_less=True)
        index = Signal.like(o.index)
        out = Signal.like(self.o.payload, reset_less=True)
        m.d.comb += [self.o.payload.eq(out), self.i.ready.eq(~self.o.valid | self.o.ready)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(self.i.valid & self.i.ready):
            take = fresh | (i.value > best)
            new_best = Signal.like(best)
            new_index = Signal.like(best_index)
            m.d.comb += [new_best.eq(best), new_index.eq(best_index)]
            with m.If(take):
                m.d.comb += [new_best.eq(i.value), new_index.eq(index)]
            m.d.sync += [best.eq(new_best), best_index.eq(new_index), fresh.eq(i.last),
                         index.eq(index + 1)]
            with m.If(i.last):
                m.d.sync += [out.index.eq(new_index), out.value.eq(new_best), self.o.valid.eq(1), index.eq(0)]
        return m
