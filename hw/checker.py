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

from amaranth.hdl import Module, Signal, Value
from amaranth.lib import data, stream, wiring
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


class RequestChecker(wiring.Component):
    """Takes the words of one request on ``i``, then answers on ``o`` whether it may run.

    A request is good when its first word, the answer count, equals the
    answer words of its commands (at most :data:`MAX_ANSWERS`); its last word
    ends a command; every opcode is known; every count word fits 16 bits; every
    LOAD and READ stays inside its buffer (``first + count <= depth``); and
    every RUN count is in range: ``rows`` and ``blocks`` at most
    ``result_depth`` (and ``blocks`` at most ``thresh_depth`` for a binary
    run), ``words`` at most ``max_words``, ``passes`` at most ``prog_depth``,
    and an offset that fits the accumulator.  That bounds a run's time.  The products
    (``rows * blocks <= result_depth``, ``rows * words <= x_depth``,
    ``blocks * words <= y_depth``) and the rows the descriptors address are
    not checked: they cost logic the UP5K does not have; the host keeps them
    in range (:func:`hw.program.compile_layer`).

    A word is registered before it is looked at: the checker takes one every
    other cycle.  Once a request is refused, the rest of it is only parsed
    until its last word, so every register holds only the bits of values in
    range.
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
        max_depth = max(depth for _, (_, _, depth) in commands)
        word, last = Signal(STREAM_BITS, reset_less=True), Signal()
        full = Signal()              # word holds an unchecked word
        ended = Signal()             # the last word has been checked
        error = Signal()
        expected = Signal(range(MAX_ANSWERS + 1))
        answers = Signal(range(MAX_ANSWERS + c.result_depth * c.lanes + 1))
        kind = Signal(range(len(commands)))  # the counted command, by index
        first = Signal(range(max_depth + 1))
        end = Signal(range(max_depth + (1 << COUNT_BITS)))  # first + count, checked a cycle later
        check_end = Signal()
        skip = Signal(range(max(words * depth for _, (words, _, depth) in commands) + 1))  # LOAD data words left
        m.d.comb += self.i.ready.eq(~full & ~ended)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [word.eq(self.i.payload.word), last.eq(self.i.payload.last), full.eq(1)]

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
                m.next = "VERDICT"

        # checks of registers set a cycle before: shallow logic after the adders.  A sum
        # past MAX_ANSWERS is seen before the next add could wrap it.
        m.d.sync += check_end.eq(0)
        with m.Switch(kind):
            for index, (_, (_, _, depth)) in enumerate(commands):
                with m.Case(index):
                    refuse(check_end & (end > depth))
        refuse(answers > MAX_ANSWERS)

        binary = Signal()            # the RUN writes bits: its blocks need thresholds
        run_idx = Signal(2)
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
                                m.d.sync += [kind.eq(index), first.eq(arg)]
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
                    m.next = "VERDICT"
            with m.State("COUNT"):
                with m.If(full):
                    take()
                    count = word[:COUNT_BITS]
                    refuse(word[COUNT_BITS:].any())
                    m.d.sync += [end.eq(first + count), check_end.eq(1)]
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
                cut_short()
            with m.State("RUN_ARGS"):
                with m.If(full):
                    take()
                    m.d.sync += run_idx.eq(run_idx + 1)
                    lo, hi = word[:16], word[16:]
                    with m.Switch(run_idx):
                        with m.Case(0):  # rows, blocks
                            refuse((lo > c.result_depth) | (hi > c.result_depth))
                            refuse(binary & (hi > c.thresh_depth))
                        with m.Case(1):  # words, passes
                            refuse((lo > c.max_words) | (hi > c.prog_depth))
                        with m.Case(2):  # offset
                            sign = word[c.acc_bits - 1:]
                            refuse(sign.any() & ~sign.all())
                            m.next = "HEADER"
                cut_short()
            with m.State("VERDICT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(~error & (answers == expected))]
                with m.If(self.o.ready):
                    m.d.sync += [error.eq(0), answers.eq(0), ended.eq(0)]
                    m.next = "ANSWERS"
        return m
