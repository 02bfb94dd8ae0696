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

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import STREAM_BITS, AccelConfig
from hw.decoder import load_targets
from hw.engine import COUNT_BITS
from hw.isa import ARG_BITS, LOAD_OPS, Op

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


class RequestChecker(wiring.Component):
    """Takes the words of one request on ``i``, then answers on ``o`` whether it may run.

    A request is good when its first word, the answer count, equals the
    answer words of its commands (at most :data:`MAX_ANSWERS`); its last word
    ends a command; every opcode is known; every count word fits 16 bits; every
    LOAD and READ stays inside its buffer (``first + count <= depth``); and
    every RUN fits the buffers: ``rows * words <= x_depth``, ``blocks * words
    <= y_depth``, ``rows * blocks <= result_depth``, ``rows`` and ``blocks``
    at most ``result_depth``, ``words`` at most ``max_words``, ``passes`` at
    most ``prog_depth``, ``blocks`` at most ``thresh_depth`` for a binary run,
    and an offset that fits the accumulator.  It cannot see which plane
    rows the descriptors address: their bases are the host's to keep in range.

    A word is registered before it is looked at; the checker takes one a
    cycle.  The products of a RUN are summed a row and a block a cycle, in
    at most ``max(rows, blocks) + 1 <= result_depth + 1`` cycles (no
    multiplier; a non-empty run itself takes longer).
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
        commands = counted_commands(c)
        word, last = Signal(STREAM_BITS, reset_less=True), Signal()
        full = Signal()              # word holds an unchecked word
        ended = Signal()             # the last word has been checked
        error = Signal()
        expected = Signal(range(MAX_ANSWERS + 1))
        answers = Signal(22)         # > MAX_ANSWERS is an error at once, so a sum of two never wraps
        opcode = Signal(8)
        arg = Signal(ARG_BITS)
        skip = Signal(23)            # data words left in the current LOAD: up to 65535 * lanes * 2
        taking = Signal()            # the registered word is consumed in this cycle
        # a word a cycle, up to the request's last one
        m.d.comb += self.i.ready.eq(~ended & ~(full & last) & (~full | taking))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [word.eq(self.i.payload.word), last.eq(self.i.payload.last), full.eq(1)]
        with m.Elif(taking):
            m.d.sync += full.eq(0)

        def take():
            """Consume the registered word."""
            m.d.comb += taking.eq(1)
            m.d.sync += ended.eq(last)

        def refuse(condition=1):
            with m.If(condition):
                m.d.sync += error.eq(1)

        def answer(count):
            total = answers + count
            m.d.sync += answers.eq(total)
            refuse(total > MAX_ANSWERS)

        def cut_short():
            """The request ended inside a command."""
            with m.Elif(ended):
                refuse()
                m.next = "VERDICT"

        rows, blocks, words, passes = (Signal(COUNT_BITS, name=n) for n in ("rows", "blocks", "words", "passes"))
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
                    m.d.sync += [opcode.eq(word[:8]), arg.eq(word[8:])]
                    with m.Switch(word[:8]):
                        with m.Case(*commands):
                            m.next = "COUNT"
                        with m.Case(Op.RUN):
                            m.d.sync += run_idx.eq(0)
                            m.next = "RUN_ARGS"
                        with m.Case(Op.READ_CYCLES):
                            answer(CYCLES_ANSWERS)
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
                    data_words = Signal.like(skip)
                    with m.Switch(opcode):
                        for op, (words_per, answers_per, depth) in commands.items():
                            with m.Case(op):
                                m.d.comb += data_words.eq(count * words_per)
                                refuse(arg + count > depth)
                                if answers_per:
                                    answer(count * answers_per)
                    m.d.sync += skip.eq(data_words)
                    m.next = "SKIP"
                    with m.If(data_words == 0):
                        m.next = "HEADER"
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
                    with m.Switch(run_idx):
                        with m.Case(0):
                            m.d.sync += [rows.eq(word[:16]), blocks.eq(word[16:])]
                        with m.Case(1):
                            m.d.sync += [words.eq(word[:16]), passes.eq(word[16:])]
                        with m.Case(2):
                            sign = word[c.acc_bits - 1:]
                            refuse(sign.any() & ~sign.all())
                            m.next = "RUN_COUNTS"
                cut_short()
            self._check_run(m, rows, blocks, words, passes, arg[0], refuse)
            with m.State("VERDICT"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(~error & (answers == expected))]
                with m.If(self.o.ready):
                    m.d.sync += [error.eq(0), answers.eq(0), ended.eq(0)]
                    m.next = "ANSWERS"
        return m

    def _check_run(self, m: Module, rows, blocks, words, passes, binary, refuse) -> None:
        """The states that check a RUN's counts against the buffers, then return to HEADER."""
        c = self.config
        step = Signal(COUNT_BITS)
        # rows * words, blocks * words, rows * blocks, summed a row or block a cycle
        x_used, y_used, results = (Signal(18, name=n) for n in ("x_used", "y_used", "results"))
        with m.State("RUN_COUNTS"):
            # bounds that also keep the products' loop short
            bad = ((rows > c.result_depth) | (blocks > c.result_depth) | (words > c.max_words)
                   | (passes > c.prog_depth) | (binary & (blocks > c.thresh_depth)))
            refuse(bad)
            m.d.sync += [step.eq(0), x_used.eq(0), y_used.eq(0), results.eq(0)]
            m.next = "RUN_PRODUCTS"
            with m.If(bad):
                m.next = "HEADER"
        with m.State("RUN_PRODUCTS"):
            over = (x_used > c.x_depth) | (y_used > c.y_depth) | (results > c.result_depth)
            with m.If(step < rows):
                m.d.sync += [x_used.eq(x_used + words), results.eq(results + blocks)]
            with m.If(step < blocks):
                m.d.sync += y_used.eq(y_used + words)
            m.d.sync += step.eq(step + 1)
            refuse(over)
            with m.If(over | ((step >= rows) & (step >= blocks))):
                m.next = "HEADER"
