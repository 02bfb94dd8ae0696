"""Codes in row order to the x entries of their transpose: Value as the y operand of ``A V``.

``A V`` takes V transposed (per head: a row per channel, the tokens along
it; numeric contract §4, ``hw.program``'s layout of a y operand is the same
entries as an x operand's).  The thresholds hand V's codes over token by
token, so :class:`TransposePacker` keeps them, one bit a code in a memory
word per channel, and then gives each channel's row of ``rows`` codes as
packed entries, as :class:`hw.packer.Packer` packs a row.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In
from amaranth.lib.memory import Memory

from hw.config import _check_int
from hw.packer import KIND_CODES, check_packing, packing_ports, plane_bits
from model.golden import PlaneKind, words_for


class TransposePacker(wiring.Component):
    """``rows x cols`` codes in, row-major; the ``cols x rows`` transpose's entries out, row by row.

    ``i`` carries one signed ``code_bits`` code a transfer: the ``cols``
    codes of row 0, then of row 1, up to row ``rows - 1`` (the unit
    counts). Each code sets its bit in its column's word (sign: ``code >
    0``, mask: ``code != 0``; the first row clears the word), one code a
    cycle; ``cols`` is at least 3, so that a column's word is written before
    the column's next code reads it. After the last, ``o`` gives for each column in order its
    ``ceil(rows / word_bits)`` entries ``mask << word_bits | sign`` (a
    bipolar plane's mask the valid positions, a unipolar plane's sign all
    ones, zeros past the end): ``2 + ceil(rows / word_bits)`` cycles a
    column with a ready sink (its word's read, then an entry a cycle); then
    the next matrix may come in. ``kind`` is also a port, as the
    :class:`~hw.packer.Packer`'s (initialised to the constructor's).
    """

    def __init__(self, word_bits: int, rows: int, cols: int, kind: PlaneKind, code_bits: int = 2) -> None:
        self.word_bits, self.plane_kind, self.code_bits = check_packing(word_bits, kind, code_bits)
        self.rows = _check_int(rows, "rows", 1, 1 << 12)
        self.cols = _check_int(cols, "cols", 3, 1 << 12)
        super().__init__({**packing_ports(word_bits, code_bits), "kind": In(2, init=KIND_CODES[self.plane_kind])})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb, rows, cols = self.word_bits, self.rows, self.cols
        words = words_for(rows, wb)
        width = words * wb  # a column's word, padded to whole entries
        m.submodules.bits = bits = Memory(shape=unsigned(2 * width), depth=cols, init=[])  # mask << width | sign
        wr = bits.write_port()
        rd = bits.read_port()
        row = Signal(range(rows), reset_less=True)
        col = Signal(range(cols), reset_less=True)
        # a code's column word: read in its accept cycle, its bit set in the next (from the read port: block
        # RAM output into an OR, registered), written in the one after; the same column comes back no sooner
        # than `cols` >= 3 cycles later, after that write
        setting = Signal()
        s_col = Signal.like(col, reset_less=True)
        s_row = Signal.like(row, reset_less=True)
        s_sign, s_mask = Signal(reset_less=True), Signal(reset_less=True)
        here = (Const(1, width) << s_row)[:width]
        old_sign = Mux(s_row == 0, 0, rd.data[:width])
        old_mask = Mux(s_row == 0, 0, rd.data[width:])
        writing = Signal()
        m.d.sync += [writing.eq(setting), wr.addr.eq(s_col),
                     wr.data.eq(Cat(old_sign | Mux(s_sign, here, 0), old_mask | Mux(s_mask, here, 0)))]
        m.d.comb += wr.en.eq(writing)
        sign_bit, mask_bit = plane_bits(self.kind, self.i.payload)
        # the output: a column's word read, then its entries
        column = Signal(unsigned(2 * width), reset_less=True)
        word = Signal(range(words), reset_less=True)
        out_col = Signal.like(col, reset_less=True)
        sign_out = Mux(self.kind == KIND_CODES[PlaneKind.UNIPOLAR], Const((1 << wb) - 1, wb),
                       column[:width].word_select(word, wb))
        m.d.comb += self.o.payload.eq(Cat(sign_out, column[width:].word_select(word, wb)))
        m.d.sync += setting.eq(0)

        with m.FSM():
            with m.State("collect"):
                m.d.comb += [self.i.ready.eq(1), rd.addr.eq(col)]
                with m.If(self.i.valid):
                    m.d.sync += [setting.eq(1), s_col.eq(col), s_row.eq(row), s_sign.eq(sign_bit), s_mask.eq(mask_bit),
                                 col.eq(Mux(col == cols - 1, 0, col + 1))]
                    with m.If(col == cols - 1):
                        m.d.sync += row.eq(Mux(row == rows - 1, 0, row + 1))
                        with m.If(row == rows - 1):
                            m.d.sync += out_col.eq(0)
                            m.next = "settle"
            with m.State("settle"):  # the last code's bit is set
                m.next = "written"
            with m.State("written"):  # and its word written
                m.next = "fetch"
            with m.State("fetch"):  # column out_col's word on the read port
                m.d.comb += rd.addr.eq(out_col)
                m.next = "load"
            with m.State("load"):
                m.d.sync += [column.eq(rd.data), word.eq(0)]
                m.next = "emit"
            with m.State("emit"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    with m.If(word == words - 1):
                        m.d.sync += out_col.eq(out_col + 1)
                        with m.If(out_col == cols - 1):
                            m.next = "collect"
                        with m.Else():
                            m.next = "fetch"
                    with m.Else():
                        m.d.sync += word.eq(word + 1)
        return m
