"""Softmax to attention levels: ``[table[min(max s - s_j, L-1)] * 2**frac >= A_l * Z]``, counted by group.

The gateware form of :func:`model.intops.attention_codes` (with
:func:`model.intops.softmax_exp` and :func:`model.intops.softmax_level`;
numeric contract, section 12): one row of attention scores in, one code per
x group of ``A V`` out for each column, with no division.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory, ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int, ceil_log2


def level_words(levels: np.ndarray) -> tuple[list[int], int]:
    """The threshold memory's contents for the contract's ``A`` (levels, heads, T, T), and the words per row.

    Word ``((h*T + i)*T + j)*levels + l`` holds ``A[l, h, i, j]``: row ``i``
    of head ``h`` starts at ``(h*T + i) * T * levels`` (the ``base`` sent with
    the row's scores).
    """
    levels = np.asarray(levels)
    if levels.dtype.kind not in "iu" or levels.ndim != 4:
        raise ValueError(f"levels must be an integer array (levels, heads, T, T), got {levels.dtype} {levels.shape}")
    return [int(a) for a in np.moveaxis(levels, 0, -1).reshape(-1)], levels.shape[-1] * levels.shape[0]


class SoftmaxLevels(wiring.Component):
    """The attention codes of one row of scores at a time.

    Parameters: ``score_bits`` (signed scores), ``max_len`` (the longest row,
    T), ``table_len`` (L, the exp table's entries), ``counts`` (levels per
    code group: ``(1, 1, 1)`` for GSB's three steps, ``(2**b - 1,)`` for a
    ``uint<b>`` map), ``frac_bits`` (the contract's ``attn_frac``, 16),
    ``exp_bits`` (an entry's width, 16), ``threshold_bits`` (an ``A``'s
    width, 17 for ``0 .. 2**16 + 1``) and ``thresh_addr_bits``.

    ``i`` carries ``{score, last, base}``; ``base`` (read with a row's first
    score) is the row's first word in the threshold memory, read through
    ``thresh`` (:func:`level_words`); the exp table is read through ``table``.
    Both are synchronous read ports. ``o`` carries each column's codes, one
    per group, ``j = 0`` first.

    The steps, for a row of ``n`` scores (an internal buffer of ``max_len``
    words holds the row):

    1. one score a cycle: store it, keep the row maximum ``M``;
    2. one score a cycle, pipelined (buffer read, ``M - s_j``, table read):
       ``e_j = table[min(M - s_j, L - 1)]`` overwrites the score, ``Z += e_j``
       (``n + 3`` cycles);
    3. per column: one level a cycle, ``e_j * 2**frac >= A_l * Z``, in a
       pipeline (``A`` and ``e_j`` registered; ``A``'s products with ``Z``'s
       low 16 and high bits, a DSP block each; their sum; the compare), the
       bit counted into its group's code in one of :attr:`SLOTS` code
       registers, the column's; the next column's levels follow its last
       without a gap while a slot is free, and ``o`` gives the slots' codes
       in column order, each held until taken.  The next row's scores are
       taken while the last column's codes are still in the pipeline.

    Cycles per row with a ready sink: ``n + (n + 3) + 1 + n * levels``
    (:meth:`row_cycles`); the last column's codes follow :attr:`DRAIN`
    cycles after its last level.
    """

    #: code registers: columns in flight between their first level and their codes taken
    SLOTS = 4
    #: cycles from a column's last level to its codes on ``o``
    DRAIN = 5

    def __init__(self, score_bits: int, max_len: int, table_len: int, counts: tuple[int, ...],
                 frac_bits: int = 16, exp_bits: int = 16, threshold_bits: int = 17, thresh_addr_bits: int = 16) -> None:
        self.score_bits = _check_int(score_bits, "score_bits", 2, 48)
        self.max_len = _check_int(max_len, "max_len", 1, 1 << 12)
        self.table_len = _check_int(table_len, "table_len", 2, 1 << 16)
        if not isinstance(counts, (tuple, list)) or not counts:
            raise ValueError(f"counts must be a non-empty tuple of level counts, got {counts!r}")
        self.counts = tuple(_check_int(c, "counts", 1, 255) for c in counts)
        self.levels = sum(self.counts)
        self.frac_bits = _check_int(frac_bits, "frac_bits", 0, 24)
        self.exp_bits = _check_int(exp_bits, "exp_bits", 1, 24)
        self.threshold_bits = _check_int(threshold_bits, "threshold_bits", 1, 26)
        self.thresh_addr_bits = _check_int(thresh_addr_bits, "thresh_addr_bits", 0, 24)
        self.z_bits = exp_bits + max_len.bit_length()  # Z <= T * (2**exp_bits - 1)
        self.code_bits = max(self.counts).bit_length()
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "score": signed(score_bits), "last": 1, "base": unsigned(thresh_addr_bits)}))),
            "table": In(ReadPort.Signature(addr_width=ceil_log2(table_len), shape=unsigned(exp_bits))),
            "thresh": In(ReadPort.Signature(addr_width=thresh_addr_bits, shape=unsigned(threshold_bits))),
            "o": Out(stream.Signature(data.ArrayLayout(unsigned(self.code_bits), len(self.counts)))),
        })

    def row_cycles(self, n: int) -> int:
        """Cycles for a row of ``n`` scores, from its first score to the next row's first, with no stalls."""
        return n + (n + 3) + 1 + n * self.levels

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i = self.i.payload
        wide = max(self.score_bits, self.exp_bits)
        m.submodules.buf = buf = Memory(shape=unsigned(wide), depth=self.max_len, init=[])
        wr, rd = buf.write_port(), buf.read_port()
        index = range(self.max_len + 1)
        j = Signal(index, reset_less=True)        # the column being stored, computed or compared
        n_last = Signal(index, reset_less=True)   # the row's last column
        first = Signal(init=1)                     # the next score starts a row
        top = Signal(signed(self.score_bits), reset_less=True)  # M
        base = Signal(unsigned(self.thresh_addr_bits), reset_less=True)
        addr = Signal(unsigned(self.thresh_addr_bits), reset_less=True)
        z = Signal(unsigned(self.z_bits), reset_less=True)
        # the exp pipeline
        rd_j = Signal(index, reset_less=True)
        valid1, valid_k, valid2 = Signal(), Signal(), Signal()
        j1, j_k, j2 = (Signal(index, name=name, reset_less=True) for name in ("j1", "j_k", "j2"))
        k = Signal(unsigned(self.score_bits + 1), reset_less=True)  # max - s >= 0
        # the compares
        level = Signal(range(self.levels + 1), reset_less=True)
        slot = Signal(range(self.SLOTS), reset_less=True)      # the column being issued: its code register
        taken = Signal(range(self.SLOTS), reset_less=True)     # the next code register o gives
        codes_layout = data.ArrayLayout(unsigned(self.code_bits), len(self.counts))
        codes = [Signal(codes_layout, name=f"codes{n}", reset_less=True) for n in range(self.SLOTS)]
        busy = Signal(self.SLOTS)  # a column issued into the slot, its codes not yet taken
        done = Signal(self.SLOTS)  # the slot's codes complete
        m.d.comb += self.o.valid.eq(done.bit_select(taken, 1))
        with m.Switch(taken):
            for n in range(self.SLOTS):
                with m.Case(n):
                    m.d.comb += self.o.payload.eq(codes[n])
        freed = Signal(self.SLOTS)
        claimed = Signal(self.SLOTS)
        finished = Signal(self.SLOTS)
        with m.If(self.o.valid & self.o.ready):
            m.d.comb += freed.eq(1 << taken)
            m.d.sync += taken.eq(taken + 1)
        m.d.sync += [busy.eq((busy | claimed) & ~freed), done.eq((done | finished) & ~freed)]
        # the compares, a pipeline behind the threshold reads (each step registered: the ECP5's block RAM and
        # DSP outputs are slow): A and e; A's partial products with Z's low 16 and high bits (a DSP block
        # each); their sum; the compare with e * 2**frac, counted into the level's group of the column's slot
        z_split = min(16, self.z_bits)
        a = Signal(unsigned(self.threshold_bits), reset_less=True)
        part_lo = Signal(unsigned(self.threshold_bits + z_split), reset_less=True)
        part_hi = Signal(unsigned(self.threshold_bits + max(1, self.z_bits - z_split)), reset_less=True)
        product = Signal(unsigned(self.threshold_bits + self.z_bits), reset_less=True)
        e = [Signal(unsigned(self.exp_bits), name=f"e_{n}", reset_less=True) for n in range(3)]
        stage_level = [Signal.like(level, name=f"level_{n}", reset_less=True) for n in range(3)]
        stage_slot = [Signal.like(slot, name=f"slot_{n}", reset_less=True) for n in range(3)]
        stage_valid = [Signal(name=f"valid_{n}") for n in range(3)]
        m.d.sync += [part_lo.eq(a * z[:z_split]), part_hi.eq(a * z[z_split:]), product.eq((part_hi << z_split) + part_lo),
                     e[1].eq(e[0]), e[2].eq(e[1]),
                     stage_level[1].eq(stage_level[0]), stage_level[2].eq(stage_level[1]),
                     stage_slot[1].eq(stage_slot[0]), stage_slot[2].eq(stage_slot[1]),
                     stage_valid[0].eq(0), stage_valid[1].eq(stage_valid[0]), stage_valid[2].eq(stage_valid[1])]
        with m.If(stage_valid[2]):
            bit = (e[2] << self.frac_bits) >= product
            with m.Switch(stage_slot[2]):
                for n in range(self.SLOTS):
                    with m.Case(n):
                        start = 0
                        for g, count in enumerate(self.counts):
                            with m.If((stage_level[2] >= start) & (stage_level[2] < start + count)):
                                # a column's first level starts its codes
                                m.d.sync += codes[n][g].eq(Mux(stage_level[2] == 0, 0, codes[n][g]) + bit)
                            with m.Elif(stage_level[2] == 0):
                                m.d.sync += codes[n][g].eq(0)
                            start += count
            with m.If(stage_level[2] == self.levels - 1):
                m.d.comb += finished.eq(1 << stage_slot[2])

        with m.FSM():
            with m.State("max"):
                m.d.comb += [self.i.ready.eq(1), wr.addr.eq(j), wr.data.eq(i.score.as_unsigned()), wr.en.eq(self.i.valid)]
                with m.If(self.i.valid):
                    m.d.sync += [top.eq(Mux(first | (i.score > top), i.score, top)), first.eq(i.last), j.eq(j + 1)]
                    with m.If(first):
                        m.d.sync += base.eq(i.base)
                    with m.If(i.last):
                        m.d.sync += [n_last.eq(j), rd_j.eq(0), valid1.eq(0), valid_k.eq(0), valid2.eq(0), z.eq(0)]
                        m.next = "exp"
            with m.State("exp"):
                # read score rd_j; a cycle later k = max - s; a cycle later look it up; a cycle later add and store its exp
                m.d.comb += rd.addr.eq(rd_j)
                m.d.sync += [valid1.eq(rd_j <= n_last), j1.eq(rd_j), rd_j.eq(rd_j + 1),
                             k.eq(top - rd.data[:self.score_bits].as_signed()), valid_k.eq(valid1), j_k.eq(j1),
                             valid2.eq(valid_k), j2.eq(j_k)]
                m.d.comb += self.table.addr.eq(Mux(k >= self.table_len - 1, self.table_len - 1, k))
                m.d.comb += [wr.addr.eq(j2), wr.data.eq(self.table.data), wr.en.eq(valid2)]
                with m.If(valid2):
                    m.d.sync += z.eq(z + self.table.data)
                    with m.If(j2 == n_last):
                        m.d.sync += [j.eq(0), addr.eq(base)]
                        m.next = "fetch"
            with m.State("fetch"):  # present column 0's exp and its first threshold
                m.d.comb += [rd.addr.eq(j), self.thresh.addr.eq(addr)]
                m.d.sync += [addr.eq(addr + 1), level.eq(0)]
                m.next = "compare"
            with m.State("compare"):  # threshold `level` of column j on the port: into the pipeline; read the next
                last_level = level == self.levels - 1
                # a column's first level waits for a free slot; the read ports hold their words meanwhile
                go = (level != 0) | ~busy.bit_select(slot, 1)
                m.d.comb += [rd.addr.eq(Mux(go & last_level, j + 1, j)),
                             self.thresh.addr.eq(Mux(go, addr, addr - 1))]
                with m.If(go):
                    m.d.sync += [a.eq(self.thresh.data), e[0].eq(rd.data[:self.exp_bits]), stage_level[0].eq(level),
                                 stage_slot[0].eq(slot), stage_valid[0].eq(1), addr.eq(addr + 1), level.eq(level + 1)]
                    with m.If(level == 0):
                        m.d.comb += claimed.eq(1 << slot)
                    with m.If(last_level):
                        m.d.sync += [level.eq(0), slot.eq(slot + 1), j.eq(j + 1)]
                        with m.If(j == n_last):  # the row's last column: its codes drain while the next row comes in
                            m.d.sync += j.eq(0)
                            m.next = "max"
        return m
