"""Codes to the engine's x entries: one row of codes in, its packed plane words out.

The stage between the thresholds (:mod:`hw.multithreshold`) and the
engine's x buffer in the whole-model design: a layer's input codes, one
value a cycle, become the entries :func:`hw.program.compile_layer` lays out
for a single-plane operand (``mask << word_bits | sign`` a word, words of a
row in order, rows one after another; :func:`model.golden.pack_planes` and
the implicit planes of ``hw.program``), so that the sequencer can write them
to the x buffer without the host; :class:`EntryWriter` writes them there,
each head's rows together where the operand is split by head (Q, K).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import WritePort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from model.golden import PlaneKind, check_word_bits


def check_packing(word_bits: int, kind: PlaneKind, code_bits: int) -> tuple[int, PlaneKind, int]:
    """The parameters every packing unit shares, checked: a contract word width, a plane kind, a code width."""
    if not isinstance(kind, PlaneKind):
        raise ValueError(f"kind must be a PlaneKind, got {kind!r}")
    return check_word_bits(word_bits), kind, _check_int(code_bits, "code_bits", 2, 8)


def packing_ports(word_bits: int, code_bits: int) -> dict:
    """A packing unit's ports: one signed code in a transfer, one entry ``mask << word_bits | sign`` out."""
    return {"i": In(stream.Signature(signed(code_bits))), "o": Out(stream.Signature(unsigned(2 * word_bits)))}


#: The plane kinds as a packing unit's ``kind`` port numbers them.
KIND_CODES = {PlaneKind.BIPOLAR: 0, PlaneKind.UNIPOLAR: 1, PlaneKind.TERNARY: 2}


def kind_value(kind: PlaneKind | Value) -> Value:
    """A plane kind as the 2-bit value of :data:`KIND_CODES` (a constant for a fixed kind, which synthesis folds)."""
    return Const(KIND_CODES[kind], 2) if isinstance(kind, PlaneKind) else kind


def plane_bits(kind: PlaneKind | Value, code: Value) -> tuple[Value, Value]:
    """A code's sign and mask bits in a plane of ``kind`` (a unipolar plane's sign and a bipolar one's mask are 1)."""
    k = kind_value(kind)
    sign = Mux(k == KIND_CODES[PlaneKind.UNIPOLAR], 1, code > 0)
    mask = Mux(k == KIND_CODES[PlaneKind.BIPOLAR], 1, code != 0)
    return sign, mask


class Packer(wiring.Component):
    """A row of ``n`` codes of one single-plane kind in, its ``ceil(n / word_bits)`` entries out.

    ``n`` and ``kind`` are also ports (``n`` up to the constructor's, ``kind``
    numbered as :data:`KIND_CODES`), initialised to the constructor's values:
    a design that leaves them undriven packs that one shape, and the
    whole-model core sets them per layer.

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
        self.word_bits, self.plane_kind, self.code_bits = check_packing(word_bits, kind, code_bits)
        self.max_n = _check_int(n, "n", 1, 1 << 16)
        super().__init__({**packing_ports(word_bits, code_bits),
                          "n": In(range(1, self.max_n + 1), init=self.max_n),
                          "kind": In(2, init=KIND_CODES[self.plane_kind])})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        wb = self.word_bits
        column = Signal(range(self.max_n), reset_less=True)
        position = Signal(range(wb), reset_less=True)
        sign = Signal(wb, reset_less=True)  # this word's bits so far, the next at `position`
        mask = Signal(wb, reset_less=True)
        entry = Signal(2 * wb, reset_less=True)
        full = Signal()
        m.d.comb += [self.o.valid.eq(full), self.o.payload.eq(entry)]
        with m.If(self.o.ready):
            m.d.sync += full.eq(0)

        sign_bit, mask_bit = plane_bits(self.kind, self.i.payload)
        m.d.comb += self.i.ready.eq(~full | self.o.ready)
        with m.If(self.i.valid & self.i.ready):
            here = (Const(1, wb) << position)[:wb]
            new_sign, new_mask = (sign | Mux(sign_bit, here, 0))[:wb], (mask | Mux(mask_bit, here, 0))[:wb]
            row_end = column == self.n - 1
            with m.If(row_end | (position == wb - 1)):
                # a unipolar plane's implicit sign covers the padding too
                padded_sign = Mux(self.kind == KIND_CODES[PlaneKind.UNIPOLAR], Const((1 << wb) - 1, wb), new_sign)
                m.d.sync += [entry.eq(Cat(padded_sign, new_mask)), full.eq(1),
                             sign.eq(0), mask.eq(0), position.eq(0)]
            with m.Else():
                m.d.sync += [sign.eq(new_sign), mask.eq(new_mask), position.eq(position + 1)]
            m.d.sync += column.eq(Mux(row_end, 0, column + 1))
        return m


class EntryWriter(wiring.Component):
    """Packed entries in, written to an operand buffer in the layout the engine reads.

    The entries come as a :class:`Packer` gives them for rows split into
    ``heads`` parts of ``words`` entries each (a token's Q or K codes, one
    head after another); entry ``w`` of head ``h`` of row ``t`` goes to
    ``base + h * head_stride + t * row_stride + w``: with ``head_stride =
    rows * words`` and ``row_stride = words`` (the constructor's, the
    ports' initial values) every head's operand is ``rows`` contiguous rows
    (one head: plain row order); the whole-model core sets the ports per
    layer (e.g. one head's part of rows of all heads: ``row_stride`` the
    whole row's words; the ports are as wide as the addresses, up to 64
    heads). ``start`` (a cycle) restarts at ``base``; ``written`` counts the
    entries since. Always ready: one entry a cycle.
    """

    def __init__(self, entry_bits: int, addr_bits: int, rows: int, words: int, heads: int = 1) -> None:
        self.entry_bits = _check_int(entry_bits, "entry_bits", 2, 128)
        self.addr_bits = _check_int(addr_bits, "addr_bits", 1, 24)
        self.rows = _check_int(rows, "rows", 1, 1 << 16)
        _check_int(words, "words", 1, 1 << 16)
        _check_int(heads, "heads", 1, 64)
        if heads * rows * words > 1 << addr_bits:
            raise ValueError(f"addr_bits {addr_bits} cannot address {heads} x {rows} x {words} entries")
        space = 1 << addr_bits
        super().__init__({
            "i": In(stream.Signature(unsigned(entry_bits))),
            "start": In(1), "base": In(addr_bits),
            "words": In(range(1, space + 1), init=words), "heads": In(range(1, 65), init=heads),
            "head_stride": In(addr_bits + 1, init=rows * words), "row_stride": In(addr_bits + 1, init=words),
            "written": Out(range(space + 1)),
            "write": In(WritePort.Signature(addr_width=addr_bits, shape=data.ArrayLayout(entry_bits, 1))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        word = Signal(range(1 << self.addr_bits), reset_less=True)
        head = Signal(range(64), reset_less=True)
        head_offset = Signal(self.addr_bits, reset_less=True)  # h * head_stride
        row_offset = Signal(self.addr_bits, reset_less=True)   # t * row_stride
        m.d.comb += [self.i.ready.eq(1), self.write.addr.eq(self.base + head_offset + row_offset + word),
                     self.write.data[0].eq(self.i.payload), self.write.en.eq(self.i.valid)]
        with m.If(self.i.valid):
            m.d.sync += [self.written.eq(self.written + 1), word.eq(word + 1)]
            with m.If(word == self.words - 1):
                m.d.sync += [word.eq(0), head.eq(head + 1), head_offset.eq(head_offset + self.head_stride)]
                with m.If(head == self.heads - 1):
                    m.d.sync += [head.eq(0), head_offset.eq(0), row_offset.eq(row_offset + self.row_stride)]
        with m.If(self.start):
            m.d.sync += [word.eq(0), head.eq(0), head_offset.eq(0), row_offset.eq(0), self.written.eq(0)]
        return m


class LaneWriter(wiring.Component):
    """Packed entries in, written as the rows of a y operand: one lane of the lane-banked y buffer each.

    The y buffer holds word ``w`` of y rows ``b*lanes .. b*lanes + lanes-1``
    at bank row ``b * words + w``, y row ``r``'s in lane ``r % lanes``
    (:func:`hw.program.y_layout`). The entries come row by row, each row in
    ``heads`` parts of ``words`` entries (K: a token's codes, head after
    head, every head its own operand of the tokens as rows; V transposed,
    ``heads = 1``: a channel's entries over the tokens, the channels as
    rows); entry ``w`` of part ``h`` of row ``r`` goes to lane ``r % lanes``
    of bank row ``base + h * head_stride + (r // lanes) * words + w``.
    ``start`` (a cycle) restarts at ``base``; ``written`` counts the entries
    since. Always ready: one entry a cycle.
    """

    def __init__(self, entry_bits: int, lanes: int, addr_bits: int, max_words: int, max_entries: int) -> None:
        self.entry_bits = _check_int(entry_bits, "entry_bits", 2, 128)
        self.lanes = _check_int(lanes, "lanes", 1, 64)
        self.addr_bits = _check_int(addr_bits, "addr_bits", 1, 24)
        self.max_words = _check_int(max_words, "max_words", 1, 1 << 16)
        super().__init__({
            "i": In(stream.Signature(unsigned(entry_bits))),
            "start": In(1), "base": In(addr_bits),
            "words": In(range(1, max_words + 1)), "heads": In(range(1, 65), init=1), "head_stride": In(addr_bits + 1),
            "written": Out(range(_check_int(max_entries, "max_entries", 1, 1 << 24) + 1)),
            "write": In(WritePort.Signature(addr_width=addr_bits, shape=data.ArrayLayout(entry_bits, lanes),
                                            granularity=1)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        word = Signal(range(self.max_words), reset_less=True)
        head = Signal(range(64), reset_less=True)
        lane = Signal(range(self.lanes), reset_less=True)
        head_offset = Signal(self.addr_bits, reset_less=True)   # h * head_stride
        block_offset = Signal(self.addr_bits, reset_less=True)  # (r // lanes) * words
        m.d.comb += [self.i.ready.eq(1), self.write.addr.eq(self.base + head_offset + block_offset + word),
                     self.write.en.eq(Mux(self.i.valid, 1 << lane, 0))]
        m.d.comb += [self.write.data[k].eq(self.i.payload) for k in range(self.lanes)]
        with m.If(self.i.valid):
            m.d.sync += [self.written.eq(self.written + 1), word.eq(word + 1)]
            with m.If(word == self.words - 1):
                m.d.sync += [word.eq(0), head.eq(head + 1), head_offset.eq(head_offset + self.head_stride)]
                with m.If(head == self.heads - 1):
                    m.d.sync += [head.eq(0), head_offset.eq(0), lane.eq(lane + 1)]
                    with m.If(lane == self.lanes - 1):
                        m.d.sync += [lane.eq(0), block_offset.eq(block_offset + self.words)]
        with m.If(self.start):
            m.d.sync += [word.eq(0), head.eq(0), lane.eq(0), head_offset.eq(0), block_offset.eq(0), self.written.eq(0)]
        return m
