"""The request checker: the bridge runs a request only if all of it is well formed.

A request (a command frame's payload) is an answer count and command words.
The decoder trusts its command stream: a command cut short takes the next
frame's words as its data, an answer count that differs from the answers of
the commands stalls one side of the bridge for good, a RUN with huge counts
runs for hours, and a LOAD or READ past the end of a buffer wraps around onto
resident data.  So the bridge streams every request through a
:class:`RequestChecker` before the decoder sees any of it, and refuses (status
``REFUSED``) what it rejects: nothing of a refused request is executed.
"""

from amaranth.hdl import Cat, Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import STREAM_BITS, AccelConfig
from hw.decoder import load_targets
from hw.engine import COUNT_BITS
from hw.isa import LOAD_OPS, Op

#: A word of a request on its way to the checker, with the flag of its last word.
word_layout = data.StructLayout({"word": STREAM_BITS, "last": 1})
#: The most answer words a response holds (its len field counts bytes in 16 bits).
MAX_ANSWERS = 0xFFFF // 4
#: Answer words of READ_CYCLES.
CYCLES_ANSWERS = 2


def counted_commands(config: AccelConfig) -> dict[Op, tuple[int, int, int]]:
    """For each command with a count word: (data words, answer words) per counted item, and
    the depth of the buffer that ``first + count`` must fit."""
    c = config
    commands = {op: (banks * words, 0, depth) for op, (banks, words, _, depth) in zip(LOAD_OPS, load_targets(c))}
    commands[Op.READ] = (0, c.lanes, c.result_depth)
    commands[Op.READ_BITS] = (0, 1, c.result_depth)
    return commands


def times(value: Value, k: int) -> Value:
    """``value * k`` for a constant ``k`` >= 1, as shifts and adds (yosys would spend a DSP block on a product)."""
    terms = [value << i for i in range(k.bit_length()) if k >> i & 1]
    return sum(terms[1:], terms[0])


def bases_layout(config: AccelConfig) -> data.StructLayout:
    """The plane bases of a descriptor, as the checker's shadow of the program buffer holds them."""
    return data.StructLayout({"x": config.addr_bits(config.x_depth), "y": config.addr_bits(config.y_depth)})


class RequestChecker(wiring.Component):
    """Takes the words of one request on ``i``, then answers on ``o`` whether it may run.

    A request is good when its first word, the answer count, equals the
    answer words of its commands (at most :data:`MAX_ANSWERS`); its last word
    ends a command; every opcode is known; every count word fits 16 bits; every
    LOAD and READ stays inside its buffer (``first + count <= depth``); and
    every RUN is in range: ``rows`` and ``blocks`` at most ``result_depth``
    (and ``blocks`` at most ``thresh_depth`` for a binary run), ``words`` at
    most ``max_words``, ``passes`` at most ``prog_depth``, an offset that fits
    the accumulator, ``rows * blocks <= result_depth``, and for each of its
    ``passes`` descriptors ``x_base + rows * words <= x_depth`` and ``y_base +
    blocks * words <= y_depth`` (so ``rows * words`` and ``blocks * words``
    are checked for every run that reads a descriptor; a run without passes
    reads no operand), with the descriptors as the RUN will find them: loaded
    by earlier requests or earlier in the same one.  That bounds a run's time
    and keeps every address it reads or writes inside its buffer.

    A word is registered before it is looked at: the checker takes one every
    other cycle.  Once a request is refused, the rest of it is only parsed
    until its last word, so every register holds only the bits of values in
    range.  The RUN checks spend cycles, not logic (a request's words arrive
    far slower over the UART): each product is summed a term a cycle onto its
    base, with one adder, and the sum compared with the buffer's depth, the
    descriptors one after the other: about ``rows + passes * (rows + blocks +
    2)`` cycles for a RUN.

    The checker keeps the plane bases of the program buffer in a shadow
    memory of two halves: the bases as they are (committed) and as the
    request being checked leaves them (its LOAD_PROGs are written there as
    they are parsed).  At the verdict the changed half is copied over the
    other: onto the committed half when the request may run, back from it
    when it is refused.  So the bridge must execute every request the
    checker lets through, and only those (:class:`hw.bridge.Bridge` does not
    check a retry it will not execute).
    """

    i: In(stream.Signature(word_layout))
    o: Out(stream.Signature(1))  # 1: the request may run

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c = self.config
        if not c.check_requests:  # every request may run: answer 1 once its last word is in
            pending = Signal()
            m.d.comb += [self.i.ready.eq(~pending), self.o.valid.eq(pending), self.o.payload.eq(1)]
            with m.If(self.i.valid & self.i.ready & self.i.payload.last):
                m.d.sync += pending.eq(1)
            with m.If(self.o.valid & self.o.ready):
                m.d.sync += pending.eq(0)
            return m
        commands = list(counted_commands(c).items())
        prog_kind = [op for op, _ in commands].index(Op.LOAD_PROG)
        max_depth = max(depth for _, (_, _, depth) in commands)
        word, last = Signal(STREAM_BITS, reset_less=True), Signal()
        full = Signal()              # word holds an unchecked word
        ended = Signal()             # the last word has been checked
        error = Signal()
        expected = Signal(range(MAX_ANSWERS + 1))
        answers = Signal(range(MAX_ANSWERS + c.result_depth * c.lanes + 1))
        # what ``total`` is checked against: the counted command by index, then a RUN's sums
        rows_blocks, x_rows, y_rows = range(len(commands), len(commands) + 3)
        kind = Signal(range(len(commands) + 3))
        check_end = Signal()         # total holds first + count of a LOAD or READ
        skip = Signal(range(max(words * depth for _, (words, _, depth) in commands) + 1))  # LOAD data words left
        may_run = Signal()           # the verdict, registered
        m.d.comb += self.i.ready.eq(~full & ~ended)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [word.eq(self.i.payload.word), last.eq(self.i.payload.last), full.eq(1)]

        # the shadow of the program buffer's bases: entry k of half 0 as this request leaves
        # it, of half 1 as it is (see the class docstring)
        bases = bases_layout(c)
        prog_bits = c.addr_bits(c.prog_depth)
        m.submodules.shadow = shadow = Memory(shape=bases, depth=2 << prog_bits, init=[])
        wr, rd = shadow.write_port(), shadow.read_port()
        dirty = Signal()             # this request has written half 0
        idx = Signal(range(max(c.prog_depth, 1 << prog_bits) + 1))  # the entry read (checks, copies)
        read_half = Signal()         # the half read: 1 while the committed half is copied back
        read_valid = Signal()        # rd.data holds the entry read a cycle ago (copies)
        read_idx = Signal(prog_bits)
        m.d.comb += rd.addr.eq(Cat(idx[:prog_bits], read_half))
        m.d.sync += [read_valid.eq(0), read_idx.eq(idx)]

        def take():
            """Consume the registered word."""
            m.d.sync += [full.eq(0), ended.eq(last)]

        def refuse(condition=1):
            with m.If(condition):
                m.d.sync += error.eq(1)

        def cut_short():
            """The request ended inside a command."""
            with m.Elif(ended):
                refuse()
                m.next = "JUDGE"

        # checks of registers set a cycle before: shallow logic after the adders.  A sum
        # past MAX_ANSWERS is seen before the next add could wrap it.
        refuse(answers > MAX_ANSWERS)

        # a RUN's counts, each kept in the bits of its bound (a count past it is refused)
        binary = Signal()            # the RUN writes bits: its blocks need thresholds
        run_idx = Signal(2)
        rows, blocks = Signal(range(c.result_depth + 1)), Signal(range(c.result_depth + 1))
        words, passes = Signal(range(c.max_words + 1)), Signal(range(c.prog_depth + 1))
        # each product is summed a term a cycle: base + n * step <= limit, with (base, n, step,
        # limit): (0, rows, blocks, result_depth), then for every descriptor (x_base, rows,
        # words, x_depth) and (y_base, blocks, words, y_depth)
        # (a LOAD's or READ's first + count <= depth is summed by the same adder)
        left = Signal(range(c.result_depth + 1))  # terms still to add
        left_zero = Signal()
        total = Signal(range(max(c.result_depth ** 2, max_depth + (1 << COUNT_BITS),
                                 max(c.x_depth, c.y_depth) + c.result_depth * c.max_words) + 1))
        limits = [depth for _, (_, _, depth) in commands] + [c.result_depth, c.x_depth, c.y_depth]
        # the bound of the sum being checked, set with ``kind`` (a register, not a mux of
        # kind: that mux before the compare's carry chain was an ECP5 critical path)
        limit = Signal.like(total)

        def set_kind(index: int) -> list:
            return [kind.eq(index), limit.eq(limits[index])]
        m.d.sync += check_end.eq(0)
        refuse(check_end & (total > limit))

        # LOAD_PROG: the bases go into half 0 as their words are parsed
        desc_word = Signal(2)        # the word of the descriptor (0..2)
        desc_addr = Signal(prog_bits)
        x_base = Signal(c.addr_bits(c.x_depth))
        write_load = Signal()
        m.d.comb += [wr.addr.eq(Cat(desc_addr, 0)), wr.data.eq(Cat(x_base, word[:c.addr_bits(c.y_depth)])),
                     wr.en.eq(write_load)]

        with m.FSM():
            with m.State("ANSWERS"):
                with m.If(full):
                    take()
                    m.d.sync += expected.eq(word)
                    refuse(word > MAX_ANSWERS)
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(full):
                    take()
                    arg = word[8:]
                    with m.Switch(word[:8]):
                        for index, (op, _) in enumerate(commands):
                            with m.Case(op):
                                m.d.sync += [*set_kind(index), total.eq(arg)]
                                refuse(arg > max_depth)
                                m.next = "COUNT"
                        with m.Case(Op.RUN):
                            m.d.sync += [run_idx.eq(0), binary.eq(arg[0])]
                            m.next = "RUN_ARGS"
                        with m.Case(Op.READ_CYCLES):
                            m.d.sync += answers.eq(answers + CYCLES_ANSWERS)
                        with m.Case(Op.RESET):
                            pass
                        with m.Default():
                            refuse()
                with m.Elif(ended):
                    m.next = "JUDGE"
            with m.State("COUNT"):
                with m.If(full):
                    take()
                    count = word[:COUNT_BITS]
                    refuse(word[COUNT_BITS:].any())
                    m.d.sync += [total.eq(total + count), check_end.eq(1), desc_word.eq(0), desc_addr.eq(total)]
                    m.next = "HEADER"
                    with m.Switch(kind):
                        for index, (_, (words_per, answers_per, depth)) in enumerate(commands):
                            with m.Case(index):
                                in_range = count[:depth.bit_length()]  # a count past depth is refused
                                if words_per:
                                    m.d.sync += skip.eq(times(in_range, words_per))
                                    with m.If(count != 0):
                                        m.next = "SKIP"
                                if answers_per:
                                    m.d.sync += answers.eq(answers + times(in_range, answers_per))
                cut_short()
            with m.State("SKIP"):
                with m.If(full):
                    take()
                    m.d.sync += skip.eq(skip - 1)
                    with m.If(skip == 1):
                        m.next = "HEADER"
                    with m.If(kind == prog_kind):
                        m.d.sync += desc_word.eq(Mux(desc_word == 2, 0, desc_word + 1))
                        with m.Switch(desc_word):
                            with m.Case(0):
                                m.d.sync += x_base.eq(word)
                            with m.Case(1):
                                m.d.comb += write_load.eq(1)
                                m.d.sync += dirty.eq(1)
                            with m.Case(2):
                                m.d.sync += desc_addr.eq(desc_addr + 1)
                cut_short()
            with m.State("RUN_ARGS"):
                with m.If(full):
                    take()
                    m.d.sync += run_idx.eq(run_idx + 1)
                    lo, hi = word[:16], word[16:]
                    with m.Switch(run_idx):
                        with m.Case(0):
                            refuse((lo > c.result_depth) | (hi > c.result_depth))
                            refuse(binary & (hi > c.thresh_depth))
                            m.d.sync += [rows.eq(lo), blocks.eq(hi)]
                        with m.Case(1):
                            refuse((lo > c.max_words) | (hi > c.prog_depth))
                            m.d.sync += [words.eq(lo), passes.eq(hi)]
                        with m.Case(2):  # offset
                            sign = word[c.acc_bits - 1:]
                            refuse(sign.any() & ~sign.all())
                            m.d.sync += [*set_kind(rows_blocks), total.eq(0), left.eq(rows), left_zero.eq(rows == 0),
                                         idx.eq(0)]
                            m.next = "HEADER"
                            with m.If(~error):
                                m.next = "SUM"
                cut_short()
            with m.State("SUM"):
                with m.If(~left_zero):
                    m.d.sync += [total.eq(total + Mux(kind == rows_blocks, blocks, words)),
                                 left.eq(left - 1), left_zero.eq(left == 1)]
                with m.Else():
                    with m.Switch(kind):
                        with m.Case(rows_blocks):   # then descriptor 0, if the run has passes
                            m.next = "READ"
                            with m.If(passes == 0):
                                m.next = "HEADER"
                        with m.Case(x_rows):   # rd.data still holds the descriptor: its y_base
                            m.d.sync += [*set_kind(y_rows), total.eq(rd.data.y), left.eq(blocks), left_zero.eq(blocks == 0)]
                        with m.Case(y_rows):
                            m.d.sync += idx.eq(idx + 1)
                            m.next = "READ"
                            with m.If(idx + 1 == passes):
                                m.next = "HEADER"
                    with m.If(total > limit):
                        refuse()
                        m.next = "HEADER"
            with m.State("READ"):         # rd.data holds descriptor idx after this cycle
                m.next = "BASE"
            with m.State("BASE"):
                m.d.sync += [*set_kind(x_rows), total.eq(rd.data.x), left.eq(rows), left_zero.eq(rows == 0)]
                m.next = "SUM"
            with m.State("JUDGE"):
                verdict = ~error & (answers == expected)
                m.d.sync += [may_run.eq(verdict), idx.eq(0)]
                m.next = "VERDICT"
                with m.If(dirty):
                    m.d.sync += read_half.eq(~verdict)
                    m.next = "COPY"
            with m.State("COPY"):
                # entry idx is read from one half, and a cycle later written to the other
                with m.If(idx != c.prog_depth):
                    m.d.sync += [idx.eq(idx + 1), read_valid.eq(1)]
                with m.Elif(~read_valid):
                    m.d.sync += [dirty.eq(0), read_half.eq(0)]
                    m.next = "VERDICT"
                m.d.comb += [wr.addr.eq(Cat(read_idx, may_run)), wr.data.eq(rd.data), wr.en.eq(read_valid)]
            with m.State("VERDICT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(may_run)]
                with m.If(self.o.ready):
                    m.d.sync += [error.eq(0), answers.eq(0), ended.eq(0)]
                    m.next = "ANSWERS"
        return m
