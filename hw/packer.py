"""Codes to the engine's x entries: one row of codes in, its packed plane words out.

The stage between the thresholds (:mod:`hw.multithreshold`) and the
engine's x buffer in the whole-model design: a layer's input codes, one
value a cycle, become the entries :func:`hw.program.compile_layer` lays out
for a single-plane operand (``mask << word_bits | sign`` a word, words of a
row in order, rows one after another; :func:`model.golden.pack_planes` and
the implicit planes of ``hw.program``), so that the sequencer can write them
to the x buffer without the host.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from model.golden import PlaneKind, check_word_bits


class Packer(wiring.Component):
    """A row of ``n`` codes of one single-plane kind in, its ``ceil(n / word_bits)`` entries out.

    ``i`` carries one signed ``code_bits`` code a transfer, rows back to back
    (the unit counts the columns); ``o`` one entry ``mask << word_bits |
    sign`` per word, held until taken.  The sign bit is ``code > 0`` and the
    mask bit ``code != 0``; a bipolar plane's mask is the row's valid
    positions and a unipolar plane's sign is all ones (the planes the
    contract leaves implicit), and positions past the row's end are zero.
    A code a cycle with a ready sink; a word's entry leaves the cycle after
    its last code.
    """

    def __init__(self, word_bits: int, n: int, kind: PlaneKind, code_bits: int = 2) -> None:
        self.word_bits = check_word_bits(word_bits)
        self.n = _check_int(n, "n", 1, 1 << 16)
        if not isinstance(kind, PlaneKind):
            raise ValueError(f"kind must be a PlaneKind, got {kind!r}")
        self.kind = kind
        self.code_bits = _check_int(code_bits, "code_bits", 2, 8)
        super().__init__({
            "i": In(stream.Signature(signed(code_bits))),
            "o": Out(stream.Signature(unsigned(2 * word_bits))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.word_bits
        column = Signal(range(self.n), reset_less=True)
        position = Signal(range(wb), reset_less=True)
        sign = Signal(wb, reset_less=True)  # this word's bits so far, the next at `position`
        mask = Signal(wb, reset_less=True)
        entry = Signal(2 * wb, reset_less=True)
        full = Signal()
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(entry)]
        with m.If(self.o.ready):
            m.d.sync += full.eq(0)

        code = self.i.payload
        sign_bit = Const(1) if self.kind is PlaneKind.UNIPOLAR else code > 0
        mask_bit = Const(1) if self.kind is PlaneKind.BIPOLAR else code != 0
        m.d.comb += self.i.ready.eq(~full | self.o.ready)
        with m.If(self.i.valid & self.i.ready):
            here = (Const(1, wb) << position)[:wb]
            new_sign, new_mask = (sign | Mux(sign_bit, here, 0))[:wb], (mask | Mux(mask_bit, here, 0))[:wb]
            row_end = column == self.n - 1
            with m.If(row_end | (position == wb - 1)):
                # a unipolar plane's implicit sign covers the padding too
                padded_sign = Const((1 << wb) - 1, wb) if self.kind is PlaneKind.UNIPOLAR else new_sign
                m.d.sync += [entry.eq(Cat(padded_sign, new_mask)), full.eq(1),
                             sign.eq(0), mask.eq(0), position.eq(0)]
            with m.Else():
                m.d.sync += [sign.eq(new_sign), mask.eq(new_mask), position.eq(position + 1)]
            m.d.sync += column.eq(Mux(row_end, 0, column + 1))
        return m
