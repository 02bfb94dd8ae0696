"""The compute engine: the loop nest of a layer run through the datapath.

A RUN computes, for every x row ``a`` and block ``blk`` of ``lanes`` y rows,
``Y = offset + sum_pass (coef * P_pass) << shift`` where ``P_pass`` is the
primitive over the ``words`` words of the rows at the pass's plane bases.
The sequencer issues one (row, block, pass, word) item per cycle with no
bubbles; behind it the datapath is a fixed-latency pipeline without
back-pressure, so a run takes ``rows * blocks * passes * words +
latency`` cycles (the cycle model, :mod:`hw.cycles`).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort, WritePort
from amaranth.lib.wiring import In, Out

from hw.accumulate import PassAccumulator, WordAccumulator
from hw.config import STREAM_BITS, AccelConfig
from hw.cycles import engine_latency
from hw.descriptor import descriptor_layout
from hw.lanes import LaneArray, plane_word
from hw.pipeline import delay, pipe_signature
from hw.threshold import Threshold

#: Width of a count word on the command stream (LOAD, READ) and of the RUN arguments there.
COUNT_BITS = 16


def run_layout(config: AccelConfig) -> data.StructLayout:
    """The arguments of a RUN, as the engine holds them: each count in the bits of its bound.

    ``rows`` and ``blocks`` are at most ``result_depth``, ``words`` at most
    ``max_words``, ``passes`` at most ``prog_depth``: the request checker
    (:mod:`hw.checker`) refuses larger ones, so the sequencer's counters
    need no more bits (without the checks a larger count is taken modulo).
    """
    c = config
    return data.StructLayout({
        "rows": range(c.result_depth + 1), "blocks": range(c.result_depth + 1), "words": c.words_bits,
        "passes": range(c.prog_depth + 1), "offset": signed(c.acc_bits), "binary": 1,
    })


def index_bits(bound: int) -> int:
    """Bits of an index below ``bound`` (at least one)."""
    return max(1, (bound - 1).bit_length())


def nonzero_counts(args: data.View) -> object:
    """One bit per count of a run: whether it is non-zero (the run has work if all are)."""
    return Cat(args.rows != 0, args.blocks != 0, args.words != 0, args.passes != 0)


def item_layout(config: AccelConfig) -> data.StructLayout:
    """One issued (row, block, pass, word) item.

    The row offsets are kept modulo the buffers' address widths, as the
    addresses they go into.
    """
    c = config
    return data.StructLayout({
        "pass_idx": index_bits(c.prog_depth), "t": c.words_bits,
        "x_off": index_bits(c.x_depth), "y_off": index_bits(c.y_depth),
        "blk": index_bits(c.result_depth), "first_word": 1, "last_word": 1, "first_pass": 1, "last_pass": 1,
        "final": 1,
    })


class Sequencer(wiring.Component):
    """Issues the items of a run, one per cycle, words innermost.

    Loop order: x row, y block, pass, word.  ``x_off = row * words`` and
    ``y_off = blk * words`` are kept as running sums (no multiplier).  Each
    loop also counts down to its last iteration with a registered "last"
    flag, so the carry logic is one flag deep whatever the counter widths
    (the sequencer sat on the critical path of the UP5K build with
    compares against ``count - 1``).  A run with a zero count issues nothing.
    """

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            "start": In(1),
            "args": In(run_layout(config)),
            "nonempty": In(1),  # every count of args is non-zero (see Engine)
            "o": Out(pipe_signature(item_layout(config))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        a, o = self.args, self.o.payload
        words = Signal(self.config.words_bits)
        loops = []  # (forward counter, remaining, last flag, count - 1, count == 1), innermost first
        c = self.config
        for name, count, bits in (("t", a.words, c.words_bits), ("pidx", a.passes, index_bits(c.prog_depth)),
                                  ("blk", a.blocks, index_bits(c.result_depth)),
                                  ("row", a.rows, index_bits(c.result_depth))):
            forward = Signal(bits, name=name)
            left = Signal(bits, name=f"{name}_left")
            last = Signal(name=f"{name}_last")
            limit = Signal(bits, name=f"{name}_limit")
            single = Signal(name=f"{name}_single")
            loops.append((forward, left, last, limit, single))
            with m.If(self.start):
                m.d.sync += [forward.eq(0), left.eq(count - 1), last.eq(count == 1),
                             limit.eq(count - 1), single.eq(count == 1)]
        (t, _, last_word, _, _), (pidx, _, last_pass, _, _), (blk, _, last_blk, _, _), (_, _, last_row, _, _) = loops
        m.d.comb += [
            o.pass_idx.eq(pidx), o.t.eq(t), o.blk.eq(blk),
            o.first_word.eq(t == 0), o.last_word.eq(last_word),
            o.first_pass.eq(pidx == 0), o.last_pass.eq(last_pass),
            o.final.eq(last_word & last_pass & last_blk & last_row),
        ]
        with m.If(self.start):
            m.d.sync += [words.eq(a.words), self.o.valid.eq(self.nonempty), o.x_off.eq(0), o.y_off.eq(0)]
        with m.Elif(self.o.valid):
            carry = Const(1)  # this loop advances: every inner loop is at its last iteration
            for depth, (forward, left, last, limit, single) in enumerate(loops):
                with m.If(carry):
                    with m.If(last):
                        m.d.sync += [forward.eq(0), left.eq(limit), last.eq(single)]
                    with m.Else():
                        m.d.sync += [forward.eq(forward + 1), left.eq(left - 1), last.eq(left == 1)]
                carry = carry & last
                if depth == 1:  # a block is done
                    with m.If(carry):
                        m.d.sync += o.y_off.eq(Mux(last_blk, 0, o.y_off + words))
                if depth == 2:  # a row is done
                    with m.If(carry):
                        m.d.sync += o.x_off.eq(o.x_off + words)
            with m.If(carry):
                m.d.sync += self.o.valid.eq(0)
        return m


class Engine(wiring.Component):
    """Sequencer, operand reads, lanes, accumulators, threshold, result writes.

    ``busy`` rises the cycle after ``start`` and falls the cycle after the
    last result entry is written (an empty run: one cycle later).  Result entry
    ``row * blocks + blk`` holds the ``lanes`` values of that block.
    """

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        c = config
        lanes = c.lanes
        super().__init__({
            "start": In(1),
            "args": In(run_layout(c)),
            "busy": Out(1),
            "prog": In(ReadPort.Signature(
                addr_width=c.addr_bits(c.prog_depth), shape=data.ArrayLayout(descriptor_layout(c).size, 1))),
            "x": In(ReadPort.Signature(addr_width=c.addr_bits(c.x_depth), shape=data.ArrayLayout(c.entry_bits, 1))),
            "y": In(ReadPort.Signature(addr_width=c.addr_bits(c.y_depth), shape=data.ArrayLayout(c.entry_bits, lanes))),
            "thresh": In(ReadPort.Signature(
                addr_width=c.addr_bits(c.thresh_depth), shape=data.ArrayLayout(STREAM_BITS, lanes))),
            "result": In(WritePort.Signature(
                addr_width=c.addr_bits(c.result_depth), shape=data.ArrayLayout(c.acc_bits, lanes),
                granularity=1)),
        })

    def tag_layout(self) -> data.StructLayout:
        """Sideband fields carried along the datapath."""
        c = self.config
        return data.StructLayout({
            "first_word": 1, "last_word": 1, "first_pass": 1, "last_pass": 1, "final": 1,
            "blk": c.addr_bits(c.thresh_depth), "coef": signed(c.coef_bits), "shift": c.shift_bits,
        })

    @property
    def latency(self) -> int:
        """A non-empty run keeps ``busy`` high for ``items + latency`` cycles."""
        return engine_latency(self.config)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c = self.config
        tag = self.tag_layout()
        m.submodules.seq = seq = Sequencer(c)
        m.submodules.lanes = lanes = LaneArray(c.word_bits, c.lanes, tag, c.stage_levels, c.count_c)
        m.submodules.words = words = WordAccumulator(c.lanes, c.word_value_bits, c.row_value_bits, tag)
        m.submodules.passes = passes = PassAccumulator(
            c.lanes, c.row_value_bits, c.coef_bits, c.shift_bits, c.acc_bits, tag)
        m.submodules.threshold = threshold = Threshold(c.lanes, c.acc_bits, c.addr_bits(c.thresh_depth), tag)
        args = Signal(run_layout(c), reset_less=True)
        # The run starts a cycle after ``start``, from registered arguments and
        # registered "count is non-zero" flags: the emptiness test of four
        # 16-bit counts was the UP5K's longest path when taken in one cycle.
        go = Signal()
        nonzero = Signal(4)
        m.d.sync += go.eq(self.start)
        with m.If(self.start):
            m.d.sync += [args.eq(self.args), nonzero.eq(nonzero_counts(self.args))]
        m.d.comb += [seq.start.eq(go), seq.args.eq(args), seq.nonempty.eq(nonzero.all())]

        # stage 1: descriptor read, row offsets; stage 2: descriptor registered;
        # stage 3: addresses; stage 4: operand read; stages 5 and 6: operands
        # registered.  Block RAM read data is registered before any logic: its
        # clock-to-output time alone is half of a 100 MHz cycle on the ECP5.
        m.d.comb += self.prog.addr.eq(seq.o.payload.pass_idx)
        item = seq.o.payload
        x_row, y_row = Signal(index_bits(c.x_depth), reset_less=True), Signal(index_bits(c.y_depth), reset_less=True)
        tag1 = Signal(tag, reset_less=True)
        valid1 = Signal()
        m.d.sync += [x_row.eq(item.x_off + item.t), y_row.eq(item.y_off + item.t), valid1.eq(seq.o.valid)]
        for field in ("first_word", "last_word", "first_pass", "last_pass", "final", "blk"):
            m.d.sync += getattr(tag1, field).eq(getattr(item, field))
        desc = Signal(descriptor_layout(c), reset_less=True)
        m.d.sync += desc.eq(self.prog.data[0])
        x_addr = Signal(c.addr_bits(c.x_depth), reset_less=True)
        y_addr = Signal(c.addr_bits(c.y_depth), reset_less=True)
        tag2 = Signal(tag, reset_less=True)
        cmode2 = Signal(reset_less=True)
        valid2 = Signal()
        m.d.sync += [
            x_addr.eq(desc.x_base + delay(m, x_row, 1, "x_row", reset_less=True)),
            y_addr.eq(desc.y_base + delay(m, y_row, 1, "y_row", reset_less=True)),
            tag2.eq(delay(m, tag1, 1, "tag1", reset_less=True)), tag2.coef.eq(desc.coef), tag2.shift.eq(desc.shift),
            cmode2.eq(desc.cmode), valid2.eq(delay(m, valid1, 1, "valid1")),
        ]
        m.d.comb += [self.x.addr.eq(x_addr), self.y.addr.eq(y_addr)]
        # twice: the first register sits by its block RAM, the second feeds
        # the lanes (the x word goes to all of them, across the die)
        x_data = delay(m, self.x.data, 2, "x_data", reset_less=True)
        y_data = delay(m, self.y.data, 2, "y_data", reset_less=True)
        word = plane_word(c.word_bits)
        m.d.comb += [
            lanes.i.valid.eq(delay(m, valid2, 3, "valid3")),
            lanes.i.payload.tag.eq(delay(m, tag2, 3, "tag3", reset_less=True)),
            lanes.i.payload.cmode.eq(delay(m, cmode2, 3, "cmode3", reset_less=True)),
            lanes.i.payload.x.eq(word(x_data[0])),
        ]
        for lane in range(c.lanes):
            m.d.comb += lanes.i.payload.y[lane].eq(word(y_data[lane]))

        # datapath
        m.d.comb += [
            words.i.valid.eq(lanes.o.valid),
            words.i.payload.value.eq(lanes.o.payload.value),
            words.i.payload.first.eq(lanes.o.payload.tag.first_word),
            words.i.payload.last.eq(lanes.o.payload.tag.last_word),
            words.i.payload.tag.eq(lanes.o.payload.tag),
            passes.i.valid.eq(words.o.valid),
            passes.i.payload.p.eq(words.o.payload.p),
            passes.i.payload.coef.eq(words.o.payload.tag.coef),
            passes.i.payload.shift.eq(words.o.payload.tag.shift),
            passes.i.payload.first.eq(words.o.payload.tag.first_pass),
            passes.i.payload.last.eq(words.o.payload.tag.last_pass),
            passes.i.payload.tag.eq(words.o.payload.tag),
            passes.offset.eq(args.offset),
            threshold.i.valid.eq(passes.o.valid),
            threshold.i.payload.value.eq(passes.o.payload.value),
            threshold.i.payload.blk.eq(passes.o.payload.tag.blk),
            threshold.i.payload.tag.eq(passes.o.payload.tag),
            threshold.binary.eq(args.binary),
        ]
        wiring.connect(m, threshold.thresh, wiring.flipped(self.thresh))

        # result writes
        addr = Signal(c.addr_bits(c.result_depth))
        m.d.comb += [
            self.result.addr.eq(addr),
            self.result.en.eq(threshold.o.valid.replicate(c.lanes)),
        ]
        for lane in range(c.lanes):
            m.d.comb += self.result.data[lane].eq(threshold.o.payload.value[lane])
        with m.If(self.start):
            m.d.sync += [addr.eq(0), self.busy.eq(1)]
        with m.Elif(go & ~nonzero.all()):
            m.d.sync += self.busy.eq(0)
        with m.Elif(threshold.o.valid):
            m.d.sync += addr.eq(addr + 1)
            with m.If(threshold.o.payload.tag.final):
                m.d.sync += self.busy.eq(0)
        return m
