"""Buffers: one memory with ``banks`` items side by side per address.

A buffer is block RAM (:class:`amaranth.lib.memory.Memory`) everywhere, or,
when asked for and built for an iCE40 UltraPlus, the device's single-port
SPRAM (``SB_SPRAM256KA``, 16K x 16 bits each, synchronous read like block
RAM).  Simulation and Verilog output always use the :class:`Memory`, since
simulators have no SPRAM model.
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockSignal, Const, Instance, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory, ReadPort, WritePort
from amaranth.lib.wiring import Out

from hw.config import _check_int, ceil_log2

#: Words of one SB_SPRAM256KA.
SPRAM_DEPTH = 16384
#: Bits of one SB_SPRAM256KA word.
SPRAM_WIDTH = 16
#: SB_SPRAM256KA blocks per device, for the devices that have them.
SPRAM_BLOCKS = {"iCE40UP3K": 4, "iCE40UP5K": 4}


def spram_blocks_available(platform: object) -> int:
    """SPRAM blocks of the platform's device (0 without a platform or SPRAM)."""
    return SPRAM_BLOCKS.get(getattr(platform, "device", None), 0)


def nibble_banks(item_bits: int, banks: int) -> list[int]:
    """The bank of every 4-bit write-mask nibble of an SPRAM row.

    SPRAM masks writes per nibble, so each bank starts on a nibble: it takes
    ``ceil(item_bits / 4)`` nibbles; ``-1`` marks padding up to whole blocks.
    """
    per_bank = -(-item_bits // 4)
    nibbles = [bank for bank in range(banks) for _ in range(per_bank)]
    per_block = SPRAM_WIDTH // 4
    return nibbles + [-1] * (-len(nibbles) % per_block)


class Buffer(wiring.Component):
    """``depth`` addresses of ``banks`` items of ``item_bits`` each.

    The ports are seen from the memory's side, as :class:`Memory` sees
    them (``Out`` members): a user connects ``In(ReadPort.Signature(..))``.
    The write port writes one bank at a time (its ``en`` has one bit per
    bank); the read port reads every bank of one address, one cycle after the
    address (synchronous read, as block RAM does).  The operand buffers use
    one bank per lane, so that every lane reads its own row each cycle.

    With ``spram`` and a platform that has SPRAM (:data:`SPRAM_BLOCKS`), the
    buffer is :attr:`spram_blocks` SB_SPRAM256KA side by side.  SPRAM has one
    port: a cycle that writes does not read (the read data is undefined
    after it).  The accelerator never does both, since loads and runs are
    sequential (a RUN stalls the command stream until the engine is done).
    """

    def __init__(self, item_bits: int, banks: int, depth: int, spram: bool = False) -> None:
        self.item_bits = _check_int(item_bits, "item_bits", 1)
        self.banks = _check_int(banks, "banks", 1)
        self.depth = _check_int(depth, "depth", 1)
        if not isinstance(spram, bool):
            raise TypeError(f"spram must be a bool, got {type(spram).__name__}")
        if spram and depth > SPRAM_DEPTH:
            raise ValueError(f"depth must be <= {SPRAM_DEPTH} for an SPRAM buffer, got {depth}")
        self.spram = spram
        shape = data.ArrayLayout(unsigned(item_bits), banks)
        addr_width = ceil_log2(depth)
        super().__init__({
            "write": Out(WritePort.Signature(addr_width=addr_width, shape=shape, granularity=1)),
            "read": Out(ReadPort.Signature(addr_width=addr_width, shape=shape)),
        })

    @property
    def spram_blocks(self) -> int:
        """SB_SPRAM256KA blocks this buffer takes when it is in SPRAM."""
        return len(nibble_banks(self.item_bits, self.banks)) * 4 // SPRAM_WIDTH

    def uses_spram(self, platform: object) -> bool:
        """Whether the buffer is built from SPRAM on ``platform``."""
        return self.spram and spram_blocks_available(platform) > 0

    def elaborate(self, platform: object) -> Module:
        if self.uses_spram(platform):
            return self._spram()
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

    def _spram(self) -> Module:
        m = Module()
        owner = nibble_banks(self.item_bits, self.banks)
        pad = -self.item_bits % 4
        # every bank padded to whole nibbles, then the row padded to whole blocks
        wdata = Cat(*(Cat(self.write.data[b], Const(0, pad)) for b in range(self.banks)))
        wdata = Cat(wdata, Const(0, len(owner) * 4 - len(wdata)))
        rdata = Signal(len(owner) * 4)
        # the write is registered: it lands a cycle later, and the writer's
        # logic (the decoder's handshake) stays off the paths to the SPRAM
        # blocks in the die's corners
        wdata_r = Signal(len(wdata))
        mask = Signal(len(owner))
        waddr = Signal.like(self.write.addr)
        wren = Signal()
        m.d.sync += [
            wdata_r.eq(wdata),
            mask.eq(Cat(*(self.write.en[b] if b >= 0 else Const(0, 1) for b in owner))),
            waddr.eq(self.write.addr),
            wren.eq(self.write.en.any()),
        ]
        wdata = wdata_r
        addr = Signal(ceil_log2(SPRAM_DEPTH))
        m.d.comb += addr.eq(Mux(wren, waddr, self.read.addr))
        for i in range(self.spram_blocks):
            word = slice(i * SPRAM_WIDTH, (i + 1) * SPRAM_WIDTH)
            m.submodules[f"spram{i}"] = Instance(
                "SB_SPRAM256KA",
                i_ADDRESS=addr, i_DATAIN=wdata[word], i_MASKWREN=mask[i * 4:(i + 1) * 4],
                i_WREN=wren, i_CHIPSELECT=wren | self.read.en, i_CLOCK=ClockSignal(),
                i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1, o_DATAOUT=rdata[word],
            )
        width = self.item_bits + pad
        m.d.comb += [self.read.data[b].eq(rdata[b * width:b * width + self.item_bits]) for b in range(self.banks)]
        return m
