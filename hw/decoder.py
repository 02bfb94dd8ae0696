"""The command decoder: commands in, buffer writes, runs and answers out."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from hw.config import STREAM_BITS, AccelConfig, _check_int
from hw.descriptor import descriptor_layout, unpack_descriptor
from hw.engine import COUNT_BITS, run_layout
from hw.isa import DESC_WORDS, LOAD_OPS, Op, entry_words
from hw.pipeline import duplicate

#: banks a register of the load data feeds: a block-RAM buffer with more
#: banks (16 on the ECP5) gets a register per region of the die first, and
#: its writes land a cycle later (one register level could not reach 16
#: banks across the die in a 100 MHz cycle: the ECP5 build's critical path)
REGION_BANKS = 4


class CycleCounter(wiring.Component):
    """A ``bits``-wide counter of ``enable`` cycles, in segments of ``segment_bits``.

    The carry out of each segment into the next is registered, so segment
    ``k`` counts ``k`` cycles late; ``count`` is exact whenever ``enable``
    has been low for as many cycles as there are segments less one (the
    decoder reads it only between runs).  A 64-bit ripple carry was the
    longest path of a UP5K build, a 32-bit one still too long at 40 MHz.
    """

    def __init__(self, bits: int, segment_bits: int) -> None:
        self.bits = _check_int(bits, "bits", 2)
        self.segment_bits = _check_int(segment_bits, "segment_bits", 1, bits - 1)
        super().__init__({"enable": In(1), "clear": In(1), "count": Out(bits)})

    @property
    def lag(self) -> int:
        """Idle cycles after which ``count`` is exact."""
        return -(-self.bits // self.segment_bits) - 1

    def elaborate(self, platform: object) -> Module:
        m = Module()
        step = self.enable
        for start in range(0, self.bits, self.segment_bits):
            segment = self.count[start:start + self.segment_bits]
            carry = Signal(name=f"carry{start}")
            with m.If(self.clear):
                m.d.sync += [segment.eq(0), carry.eq(0)]
            with m.Elif(step):
                m.d.sync += Cat(segment, carry).eq(segment + 1)
            with m.Else():
                m.d.sync += carry.eq(0)
            step = carry
        return m


def load_targets(config: AccelConfig) -> tuple[tuple[int, int, int, int], ...]:
    """(banks, words per item, item bits, depth) of the buffer each opcode of ``LOAD_OPS`` writes."""
    c = config
    return (
        (1, entry_words(c), c.entry_bits, c.x_depth),
        (c.lanes, entry_words(c), c.entry_bits, c.y_depth),
        (c.lanes, 1, STREAM_BITS, c.thresh_depth),
        (1, DESC_WORDS, descriptor_layout(c).size, c.prog_depth),
    )


class Decoder(wiring.Component):
    """Reads commands from ``cmd`` and answers on ``rsp``, both 32-bit streams.

    LOAD commands write their data words into the operand, threshold and
    program buffers (one entry per ``entry_words`` words, bank by bank; a
    descriptor's three words are stored as its used fields only), each entry
    in the cycle its last word is taken;
    RUN starts the engine and waits until it is done; READ/READ_BITS stream
    result entries out; READ_CYCLES streams the cycle counter (the number of
    cycles the engine was busy since the last RESET or reset).  ``cmd.ready``
    and ``rsp.valid`` depend on the decoder state only, never on the other
    side's ``valid``/``ready``.  Unknown opcodes are skipped (one word).
    """

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = c = config
        #: (banks, words per item, item bits, depth) of the buffer each LOAD opcode writes.
        self.targets = load_targets(c)
        members = {
            "cmd": In(stream.Signature(STREAM_BITS)),
            "rsp": Out(stream.Signature(STREAM_BITS)),
            "start": Out(1),
            "args": Out(run_layout(c)),
            "busy": In(1),
            "result": In(ReadPort.Signature(
                addr_width=c.addr_bits(c.result_depth), shape=data.ArrayLayout(c.acc_bits, c.lanes))),
        }
        for op, (banks, _, item_bits, depth) in zip(LOAD_OPS, self.targets):
            members[op.name.lower()] = In(WritePort.Signature(
                addr_width=c.addr_bits(depth), shape=data.ArrayLayout(item_bits, banks), granularity=1))
        super().__init__(members)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c = self.config
        cmd, rsp = self.cmd, self.rsp
        opcode = Signal(8)
        arg = Signal(STREAM_BITS - 8)
        count = Signal(COUNT_BITS)
        count_last = Signal()  # count == 1, registered (keeps the compare off the FSM's paths)
        m.submodules.cycles = counter = CycleCounter(c.cycle_bits, 16)
        cycles = counter.count
        m.d.comb += counter.enable.eq(self.busy)

        # -- loads: words gather into an item, written with its last word
        max_item_words = max(words for _, words, _, _ in self.targets)
        item = Signal((max_item_words - 1) * STREAM_BITS, reset_less=True)
        word_idx = Signal(range(max(max_item_words, DESC_WORDS + 1)))  # also counts RUN and CYCLES words
        target = Signal(range(len(self.targets)))
        lane = Signal(range(c.lanes))
        waddr = Signal(COUNT_BITS)
        loading = Signal()  # a load word is being taken this cycle
        item_last = Signal.like(word_idx)  # the target's words per item - 1
        lane_last = Signal.like(lane)  # the target's banks - 1 (for reads: answer words per entry - 1)
        # registered "at the last word / lane" flags keep the compares off the FSM's paths
        word_is_last = Signal()
        lane_is_last = Signal()
        item_done = loading & word_is_last
        # the writes are registered (they land a cycle later): the write
        # enables reach block RAMs all over the die, the FSM's logic stays here
        written = Signal(max_item_words * STREAM_BITS, reset_less=True)
        written_addr = Signal(COUNT_BITS, reset_less=True)
        written_later = Signal(COUNT_BITS, reset_less=True)  # written_addr a cycle later (REGION_BANKS)
        m.d.sync += [written.eq(Cat(item, cmd.payload)), written_addr.eq(waddr), written_later.eq(written_addr)]
        for index, (op, (banks, words, item_bits, _)) in enumerate(zip(LOAD_OPS, self.targets)):
            port = getattr(self, op.name.lower())
            name = op.name.lower()
            enable = Signal(banks, name=f"{name}_en")
            m.d.sync += enable.eq((item_done & (target == index)) << lane)
            addr = written_addr
            if banks > 1 and name.removeprefix("load_") not in c.spram:
                # a block-RAM buffer with a bank per lane spans the die: one
                # register per bank, by its block RAMs (an SPRAM buffer
                # registers its writes itself)
                now = Cat(item[:(words - 1) * STREAM_BITS], cmd.payload)[:item_bits]
                if banks > REGION_BANKS:
                    regions = duplicate(m, now, banks // REGION_BANKS, f"{name}_region")
                    data = Cat(*(duplicate(m, regions[k // REGION_BANKS], 1, f"{name}_data{k}")[0] for k in range(banks)))
                    later = Signal(banks, name=f"{name}_en_later")
                    m.d.sync += later.eq(enable)
                    enable, addr = later, written_later
                else:
                    data = Cat(*duplicate(m, now, banks, f"{name}_data"))
            else:
                raw = Cat(written[:(words - 1) * STREAM_BITS], written[(max_item_words - 1) * STREAM_BITS:])
                data = (unpack_descriptor(c, raw) if op == Op.LOAD_PROG else raw[:item_bits]).replicate(banks)
            m.d.comb += [
                port.addr.eq(addr),
                port.data.eq(data),
                port.en.eq(enable),
            ]

        # -- reads: one result entry per address, lane by lane
        raddr = Signal(c.addr_bits(c.result_depth))
        m.d.comb += self.result.addr.eq(raddr)
        # registered, and shifted down a lane per answer word sent: the answer
        # is always lane 0, a flip-flop, with no lane mux before the response
        # register (that mux was an ECP5 critical path)
        entry = Signal.like(self.result.data, reset_less=True)
        packed = Signal()
        reading = Signal()  # the command is a READ or READ_BITS


        with m.FSM():
            with m.State("HEADER"):
                m.d.comb += cmd.ready.eq(1)
                with m.If(cmd.valid):
                    m.d.sync += [opcode.eq(cmd.payload[:8]), arg.eq(cmd.payload[8:]), word_idx.eq(0)]
                    m.next = "DISPATCH"
            with m.State("DISPATCH"):  # decodes the registered opcode (decoding the stream's word was a UP5K critical path)
                m.next = "HEADER"
                # what the opcode alone decides, ready for COUNT
                m.d.sync += [
                    reading.eq((opcode == Op.READ) | (opcode == Op.READ_BITS)),
                    packed.eq(opcode == Op.READ_BITS), lane_last.eq(Mux(opcode == Op.READ_BITS, 0, c.lanes - 1)),
                    lane_is_last.eq((opcode == Op.READ_BITS) | (c.lanes == 1)),
                ]
                for index, (op, (banks, words, _, _)) in enumerate(zip(LOAD_OPS, self.targets)):
                    with m.If(opcode == op):
                        m.d.sync += [
                            target.eq(index), item_last.eq(words - 1), lane_last.eq(banks - 1),
                            word_is_last.eq(words == 1), lane_is_last.eq(banks == 1),
                        ]
                with m.Switch(opcode):
                    with m.Case(*LOAD_OPS, Op.READ, Op.READ_BITS):
                        m.next = "COUNT"
                    with m.Case(Op.RUN):
                        m.next = "RUN_ARGS"
                    with m.Case(Op.READ_CYCLES):
                        m.next = "CYCLES"
                    with m.Case(Op.RESET):
                        m.d.comb += counter.clear.eq(1)
            with m.State("COUNT"):
                m.d.comb += cmd.ready.eq(1)
                with m.If(cmd.valid):
                    n = cmd.payload[:COUNT_BITS]
                    m.d.sync += [count.eq(n), count_last.eq(n == 1), raddr.eq(arg), waddr.eq(arg), lane.eq(0)]
                    with m.If(n == 0):
                        m.next = "HEADER"
                    with m.Elif(reading):
                        m.next = "READ_WAIT"
                    with m.Else():
                        m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += [cmd.ready.eq(1), loading.eq(cmd.valid)]
                with m.If(cmd.valid):
                    m.d.sync += [item.word_select(word_idx, STREAM_BITS).eq(cmd.payload), word_idx.eq(word_idx + 1)]
                    m.d.sync += word_is_last.eq(word_idx + 1 == item_last)
                    with m.If(item_done):
                        m.d.sync += [word_idx.eq(0), word_is_last.eq(item_last == 0)]
                        m.d.sync += [lane.eq(lane + 1), lane_is_last.eq(lane + 1 == lane_last)]
                        with m.If(lane_is_last):
                            m.d.sync += [lane.eq(0), lane_is_last.eq(lane_last == 0)]
                            m.d.sync += [waddr.eq(waddr + 1), count.eq(count - 1), count_last.eq(count == 2)]
                            with m.If(count_last):
                                m.next = "HEADER"
            with m.State("RUN_ARGS"):
                m.d.comb += cmd.ready.eq(1)
                args = self.args
                with m.If(cmd.valid):
                    m.d.sync += word_idx.eq(word_idx + 1)
                    with m.Switch(word_idx):
                        with m.Case(0):
                            m.d.sync += [args.rows.eq(cmd.payload[:16]), args.blocks.eq(cmd.payload[16:])]
                        with m.Case(1):
                            m.d.sync += [args.words.eq(cmd.payload[:16]), args.passes.eq(cmd.payload[16:])]
                        with m.Case(2):
                            m.d.sync += [args.offset.eq(cmd.payload), args.binary.eq(arg[0])]
                            m.next = "RUN_START"
            with m.State("RUN_START"):
                m.d.comb += self.start.eq(1)
                m.next = "RUN_WAIT"
            with m.State("RUN_WAIT"):
                with m.If(~self.busy):
                    m.next = "HEADER"
            with m.State("READ_WAIT"):
                m.next = "READ_LATCH"
            with m.State("READ_LATCH"):
                m.d.sync += entry.eq(self.result.data)
                m.next = "READ_SEND"
            with m.State("READ_SEND"):
                m.d.comb += rsp.valid.eq(1)
                with m.If(packed):
                    m.d.comb += rsp.payload.eq(Cat(*(entry[i][0] for i in range(c.lanes))))
                with m.Else():
                    m.d.comb += rsp.payload.eq(entry[0].as_signed())
                with m.If(rsp.ready):
                    m.d.sync += [lane.eq(lane + 1), lane_is_last.eq(lane + 1 == lane_last),
                                 entry.eq(entry.as_value()[c.acc_bits:])]
                    with m.If(lane_is_last):
                        m.d.sync += [lane.eq(0), lane_is_last.eq(lane_last == 0)]
                        m.d.sync += [raddr.eq(raddr + 1), count.eq(count - 1), count_last.eq(count == 2)]
                        m.next = "READ_WAIT"
                        with m.If(count_last):
                            m.next = "HEADER"
            with m.State("CYCLES"):  # 3 cycles or more after the engine was busy: the count is exact
                m.d.comb += [rsp.valid.eq(1), rsp.payload.eq(cycles.word_select(word_idx, STREAM_BITS))]
                with m.If(rsp.ready):
                    m.d.sync += word_idx.eq(word_idx + 1)
                    with m.If(word_idx == c.cycle_bits // STREAM_BITS - 1):
                        m.next = "HEADER"
        return m
