"""Argmax over a stream of logits: the index of the largest, the lowest index on a tie.

The gateware form of :func:`model.intops.argmax`, the last step of
:func:`model.intvit.forward` (numeric contract, section 9): the class of an
image from its summed int32 logits.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int, ceil_log2


class Argmax(wiring.Component):
    """The index and value of the largest of a row of signed ``value_bits`` integers, one a cycle.

    ``i`` carries ``{value, last}``: a row is the values up to and including
    one with ``last`` set, at most ``max_len`` long (indices count from 0 and
    wrap past it). A value replaces the best so far only when strictly
    larger, so the lowest index wins a tie. One value every
    :attr:`cycles_per_value` cycles (10 logits: 30 cycles an image). ``o``
    carries ``{index, value}`` of each row, registered: valid 3 cycles after
    the row's last value is accepted, held until taken; the next row streams
    in meanwhile (``i`` stalls only while a finished row waits to be taken).
    One comparator.
    """

    def __init__(self, value_bits: int, max_len: int) -> None:
        self.value_bits = _check_int(value_bits, "value_bits", 2, 64)
        self.max_len = _check_int(max_len, "max_len", 1, 1 << 16)
        index = unsigned(max(1, ceil_log2(max_len)))
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"value": signed(value_bits), "last": 1}))),
            "o": Out(stream.Signature(data.StructLayout({"index": index, "value": signed(value_bits)}))),
        })

    #: Cycles per value: accept, compare, update (the compare and the update each get a cycle, so that
    #: a 32-bit carry chain and the register enables behind it fit a 40 MHz UP5K cycle).
    cycles_per_value = 3

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i, o = self.i.payload, self.o.payload
        fresh = Signal(init=1)  # the next value starts a row
        best = Signal.like(i.value, reset_less=True)
        best_index = Signal.like(o.index, reset_less=True)
        value = Signal.like(i.value, reset_less=True)  # the value accepted, its index and flags
        index = Signal.like(o.index)
        last = Signal(reset_less=True)
        first = Signal(reset_less=True)
        take = Signal(reset_less=True)
        out = Signal.like(self.o.payload, reset_less=True)
        m.d.comb += self.o.payload.eq(out)
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.FSM():
            with m.State("accept"):
                m.d.comb += self.i.ready.eq(~self.o.valid | self.o.ready)
                with m.If(self.i.valid & self.i.ready):
                    m.d.sync += [value.eq(i.value), last.eq(i.last), first.eq(fresh), fresh.eq(i.last)]
                    m.next = "compare"
            with m.State("compare"):  # strictly larger: the lowest index wins a tie
                m.d.sync += take.eq(first | (value > best))
                m.next = "update"
            with m.State("update"):
                m.d.sync += index.eq(Mux(last, 0, index + 1))
                with m.If(take):
                    m.d.sync += [best.eq(value), best_index.eq(index)]
                with m.If(last):  # o is free: accept waited for it
                    m.d.sync += [out.index.eq(Mux(take, index, best_index)), out.value.eq(Mux(take, value, best)),
                                 self.o.valid.eq(1)]
                m.next = "accept"
        return m
