"""Block RAM buffers: one memory with ``banks`` items side by side per address."""

from __future__ import annotations

from amaranth.hdl import Module, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from hw.config import _check_int, ceil_log2


class Buffer(wiring.Component):
    """``depth`` addresses of ``banks`` items of ``item_bits`` each.

    The ports are seen from the memory's side, as :class:`Memory` sees
    them (``Out`` members): a user connects ``In(ReadPort.Signature(..))``.
    The write port writes one bank at a time (its ``en`` has one bit per
    bank); the read port reads every bank of one address, one cycle after the
    address (synchronous read, as block RAM does).  The operand buffers use
    one bank per lane, so that every lane reads its own row each cycle.
    """

    def __init__(self, item_bits: int, banks: int, depth: int) -> None:
        self.item_bits = _check_int(item_bits, "item_bits", 1)
        self.banks = _check_int(banks, "banks", 1)
        self.depth = _check_int(depth, "depth", 1)
        shape = data.ArrayLayout(unsigned(item_bits), banks)
        addr_width = ceil_log2(depth)
        super().__init__({
            "write": Out(WritePort.Signature(addr_width=addr_width, shape=shape, granularity=1)),
            "read": Out(ReadPort.Signature(addr_width=addr_width, shape=shape)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(shape=self.write.data.shape(), depth=self.depth, init=[])
        wr = mem.write_port(granularity=1)
        rd = mem.read_port()
        m.d.comb += [
            wr.addr.eq(self.write.addr),
            wr.data.eq(self.write.data),
            wr.en.eq(self.write.en),
            rd.addr.eq(self.read.addr),
            rd.en.eq(self.read.en),
            self.read.data.eq(rd.data),
        ]
        return m
