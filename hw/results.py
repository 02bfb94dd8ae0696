"""The engine's result buffer as a stream of values, each with its output channel.

The stage behind the engine in the whole-model design: a run writes, for x
row ``r`` and block ``b``, one entry of ``lanes`` accumulators at ``r *
blocks + b`` (:mod:`hw.engine`; the host reads the same entries,
:func:`hw.program.decode_result`).  :class:`ResultReader` reads them back
in that order and hands on one value a cycle, ``{value, channel}`` with
``channel = b * lanes + lane``, leaving out the lanes past the layer's
``channels`` (the last block's padding), so that the thresholds
(:mod:`hw.multithreshold`) or requantize (:mod:`hw.requantize`) can take
them straight.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int


class ResultReader(wiring.Component):
    """``rows * channels`` values out of a result buffer of ``lanes``-wide entries, one a cycle.

    ``start`` (a cycle) begins a pass over ``rows`` x rows of ``heads``
    parts of ``blocks`` entries each: part ``h`` of row ``t`` is the
    ``blocks`` entries from ``first + t * row_stride + h * head_stride``, and
    its lanes are the row's channels ``(h * blocks + b) * lanes + lane``
    (one run's result, ``heads = 1`` and ``row_stride = blocks``: entry
    ``t * blocks + b``; a window of a row's channels, e.g. K of a ``qkv``
    run: ``first`` its first block; every head's ``A V`` run one after
    another: ``head_stride`` a run's entries). ``channels`` (at most
    ``heads * blocks * lanes``) says how many lanes of a row are outputs.
    All are held while ``busy``.  The entry after the current one is read
    while its lanes go out, so with a ready sink a value leaves every cycle
    after the first entry's read.
    """

    def __init__(self, lanes: int, acc_bits: int, addr_bits: int, channel_bits: int = 16) -> None:
        self.lanes = _check_int(lanes, "lanes", 1, 64)
        self.acc_bits = _check_int(acc_bits, "acc_bits", 2, 64)
        self.addr_bits = _check_int(addr_bits, "addr_bits", 1, 24)
        self.channel_bits = _check_int(channel_bits, "channel_bits", 1, 24)
        super().__init__({
            "start": In(1),
            "rows": In(addr_bits + 1), "blocks": In(addr_bits + 1), "channels": In(channel_bits),
            "first": In(addr_bits), "row_stride": In(addr_bits + 1),
            "heads": In(range(1, 65), init=1), "head_stride": In(addr_bits + 1),
            "busy": Out(1),
            "result": In(ReadPort.Signature(addr_width=addr_bits, shape=data.ArrayLayout(signed(acc_bits), lanes))),
            "o": Out(stream.Signature(data.StructLayout({"value": signed(acc_bits), "channel": channel_bits}))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        lanes = self.lanes
        # the reads: entry `addr` is x row `row`'s block `blk`, whose first channel is `base`
        addr = Signal(self.addr_bits, reset_less=True)
        row = Signal(self.addr_bits + 1, reset_less=True)
        head = Signal(range(64), reset_less=True)
        blk = Signal(self.addr_bits + 1, reset_less=True)
        row_addr = Signal(self.addr_bits, reset_less=True)   # the row's first entry
        head_addr = Signal(self.addr_bits, reset_less=True)  # the row's part's first entry
        base = Signal(self.channel_bits, reset_less=True)
        more = Signal()             # entries left to read
        pending = Signal()          # the entry read last is on result.data (held there while en is low)
        pending_base = Signal.like(base, reset_less=True)
        # the entry whose lanes go out
        entry = Signal.like(self.result.data, reset_less=True)
        lane = Signal(range(lanes), reset_less=True)
        channel = Signal(self.channel_bits, reset_less=True)
        full = Signal()
        m.d.comb += [self.busy.eq(more | pending | full), self.result.addr.eq(addr),
                     self.o.valid.eq(full), self.o.payload.value.eq(entry[lane]), self.o.payload.channel.eq(channel)]

        # a block's lanes past the layer's channels are padding: its last output is the last channel;
        # `last` is worked out a cycle ahead (registered), so that no compare sits before the read enable
        last = Signal(reset_less=True)
        leaving = full & self.o.ready & last
        with m.If(full & self.o.ready & ~last):
            m.d.sync += [lane.eq(lane + 1), channel.eq(channel + 1),
                         last.eq((lane == lanes - 2) | (channel == self.channels - 2))]
        take = pending & (~full | leaving)
        read = more & (~pending | take)
        m.d.comb += self.result.en.eq(read)
        with m.If(take):
            m.d.sync += [entry.eq(self.result.data), full.eq(1), lane.eq(0), channel.eq(pending_base),
                         last.eq((lanes == 1) | (pending_base == self.channels - 1))]
        with m.Elif(leaving):
            m.d.sync += full.eq(0)
        with m.If(read):
            m.d.sync += [pending.eq(1), pending_base.eq(base), addr.eq(addr + 1)]
            last_blk, last_head = blk == self.blocks - 1, head == self.heads - 1
            m.d.sync += [blk.eq(Mux(last_blk, 0, blk + 1)), base.eq(base + lanes)]
            with m.If(last_blk & last_head):
                m.d.sync += [head.eq(0), row.eq(row + 1), base.eq(0), row_addr.eq(row_addr + self.row_stride),
                             head_addr.eq(row_addr + self.row_stride), addr.eq(row_addr + self.row_stride)]
                with m.If(row == self.rows - 1):
                    m.d.sync += more.eq(0)
            with m.Elif(last_blk):
                m.d.sync += [head.eq(head + 1), head_addr.eq(head_addr + self.head_stride),
                             addr.eq(head_addr + self.head_stride)]
        with m.Elif(take):
            m.d.sync += pending.eq(0)
        with m.If(self.start):
            m.d.sync += [addr.eq(self.first), row_addr.eq(self.first), head_addr.eq(self.first), row.eq(0), head.eq(0),
                         blk.eq(0), base.eq(0), more.eq((self.rows != 0) & (self.blocks != 0))]
        return m
