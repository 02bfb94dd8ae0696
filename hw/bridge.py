"""The frame bridge: UART bytes in and out, accelerator command words through.

It implements the device side of ``docs/protocol.md``:

* A command frame (``A5 seq len payload crc``), up to a byte a cycle, is
  received into a block-RAM
  buffer of ``buffer_words`` 32-bit words while its CRC-16 is computed. A
  frame with a bad CRC, a length that is not a whole number of words, longer
  than the buffer or shorter than one word, or a gap of more than
  ``idle_timeout`` cycles between two of its bytes, is dropped: nothing of it
  reaches the accelerator.
* The payload's first word is the number of answer words the host expects
  (``hw.program.response_length``); the rest are command words.
* A good frame whose seq equals that of the last executed frame is a retry:
  if its first command is a READ, READ_BITS or READ_CYCLES it is executed
  again; otherwise it is answered with status DUPLICATE and no payload.
* Every other good frame is first streamed through a
  :class:`~hw.checker.RequestChecker`: a request it rejects (an answer count
  that is not its commands', a command cut short, an unknown opcode, a LOAD,
  READ or RUN outside the buffers) is answered with status REFUSED and no
  payload, and nothing of it reaches the accelerator, which would otherwise
  stall or wrap around its buffers.  A DUPLICATE is not checked: the checker
  takes each request it lets through for executed (it follows the program
  buffer's descriptors).
* Executing sends the response header at once, streams the command words to
  ``cmd`` and the expected number of ``rsp`` words to the UART (little
  endian), then the CRC. No response buffer is needed.
"""


from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.frames import CMD_SYNC, RSP_SYNC, Status
from hw.checker import RequestChecker
from hw.config import STREAM_BITS, AccelConfig, ceil_log2
from hw.isa import Op

READ_OPS = (Op.READ, Op.READ_BITS, Op.READ_CYCLES)


def _crc16_taps() -> list[list[int]]:
    """For each bit of the updated CRC, the input bits it XORs (crc 0..15, byte 16..23).

    CRC-16/CCITT-FALSE is linear over GF(2): running the bytewise algorithm
    on sets of input bits (XOR = symmetric difference) gives the taps.
    """
    c = [{i} for i in range(16)]
    for i in range(8):
        c[8 + i] = c[8 + i] ^ {16 + i}
    for _ in range(8):
        msb = c[15]
        c = [set()] + c[:15]
        for bit in range(16):
            if (0x1021 >> bit) & 1:
                c[bit] = c[bit] ^ msb
    return [sorted(bits) for bits in c]


_CRC16_TAPS = _crc16_taps()


def crc16_step(crc: object, byte: object) -> object:
    """The CRC-16/CCITT-FALSE update by one byte, as an Amaranth expression of XORs."""
    inputs = Cat(crc, byte)
    out = []
    for taps in _CRC16_TAPS:
        bit = inputs[taps[0]]
        for t in taps[1:]:
            bit = bit ^ inputs[t]
        out.append(bit)
    return Cat(*out)


class Bridge(wiring.Component):
    """``rx``/``tx`` byte streams to the UART, ``cmd``/``rsp`` word streams to the accelerator."""

    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))
    cmd: Out(stream.Signature(STREAM_BITS))
    rsp: In(stream.Signature(STREAM_BITS))
    busy: Out(1)  # a frame is being checked or executed (registered)

    def __init__(self, config: AccelConfig, buffer_words: int = 256, idle_timeout: int = 1 << 16) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        for name, value, lo in (("buffer_words", buffer_words, 2), ("idle_timeout", idle_timeout, 16)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < lo:
                raise ValueError(f"{name} must be >= {lo}, got {value}")
        if buffer_words > 0x3FFF:
            raise ValueError(f"buffer_words must be at most {0x3FFF} (len is 16 bits of bytes), got {buffer_words}")
        self.config, self.buffer_words, self.idle_timeout = config, buffer_words, idle_timeout
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(STREAM_BITS), depth=self.buffer_words, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        addr_bits = max(1, ceil_log2(self.buffer_words))
        # Every decision below reads flip-flops only: counters come with a
        # registered "last" flag, the memory's read data is registered before
        # it is inspected, and bytes go out of shift registers.  (The FSM's
        # compares on counters and on the memory output were the longest
        # paths of both board builds.)

        # ---------------------------------------------------------- receive
        crc = Signal(16)
        seq = Signal(8)
        length = Signal(16)          # payload bytes
        # the counters below hold the frame's own length (at most the buffer's, or the frame is
        # dropped at its second payload byte, before they are used) and the answer count (at
        # most MAX_ANSWERS in a checked frame, 0 in one that does not run)
        count = Signal(2 + addr_bits)  # payload bytes received (modulo the buffer)
        last_byte = Signal()         # the next payload byte is the last one
        left = Signal(range(4 * self.buffer_words + 1))  # payload bytes after the next one
        word = Signal(STREAM_BITS, reset_less=True)
        crc_lo = Signal(8)
        # the idle timer counts up from 2**bits - idle_timeout: its carry out is the timeout
        idle_bits = ceil_log2(self.idle_timeout + 1)
        idle = Signal(idle_bits)
        expired = Signal()
        # The receive FSM decides on flip-flops alone (a byte a cycle may
        # arrive): the received byte is registered with its sync compare, and
        # the length is checked from its register, so a bad length drops the
        # frame at its second payload byte.
        byte = Signal(8, reset_less=True)
        got = Signal()
        is_sync = Signal()           # byte == CMD_SYNC
        length_ok = Signal()         # length is a whole number of words that fits the buffer
        checked = Signal()           # length_ok holds this frame's check
        m.d.sync += [
            byte.eq(self.rx.payload), got.eq(self.rx.valid), is_sync.eq(self.rx.payload == CMD_SYNC),
            length_ok.eq((length[:2] == 0) & (length >= 4) & (length <= 4 * self.buffer_words)),
        ]
        frame_ok = Signal()          # one cycle: a good frame is in the buffer
        m.d.sync += frame_ok.eq(0)
        m.d.comb += self.rx.ready.eq(1)  # a UART has no backpressure: every byte is taken
        m.d.comb += [wr.addr.eq(count[2:2 + addr_bits]), wr.data.eq(Cat(word[8:], byte))]
        restart_idle = [idle.eq((1 << idle_bits) - self.idle_timeout), expired.eq(0)]

        with m.FSM(name="rx"):
            with m.State("HUNT"):
                with m.If(got & is_sync & ~self.busy & ~frame_ok):  # no new frame until the last one has run
                    m.d.sync += [crc.eq(0xFFFF), *restart_idle]
                    m.next = "SEQ"

            def timed(state_body):
                """Count idle cycles inside a frame; drop the frame after ``idle_timeout``."""
                with m.If(got):
                    m.d.sync += restart_idle
                    state_body()
                with m.Elif(expired):
                    m.next = "HUNT"
                with m.Else():
                    m.d.sync += Cat(idle, expired).eq(idle + 1)

            with m.State("SEQ"):
                def body():
                    m.d.sync += [seq.eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "LEN0"
                timed(body)
            with m.State("LEN0"):
                def body():
                    m.d.sync += [length[:8].eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.next = "LEN1"
                timed(body)
            with m.State("LEN1"):
                def body():
                    m.d.sync += [length[8:].eq(byte), crc.eq(crc16_step(crc, byte)), count.eq(0),
                                 left.eq(Cat(length[:8], byte) - 1), last_byte.eq(0), checked.eq(0)]
                    m.next = "PAYLOAD"
                timed(body)
            with m.State("PAYLOAD"):
                def body():
                    m.d.sync += [word.eq(Cat(word[8:], byte)), count.eq(count + 1), crc.eq(crc16_step(crc, byte)),
                                 left.eq(left - 1), last_byte.eq(left == 1), checked.eq(1)]
                    with m.If(checked & ~length_ok):
                        m.next = "HUNT"
                    with m.Else():
                        with m.If(count[:2] == 3):
                            m.d.comb += wr.en.eq(1)
                        with m.If(last_byte):
                            m.next = "CRC0"
                timed(body)
            with m.State("CRC0"):
                def body():
                    m.d.sync += crc_lo.eq(byte)
                    m.next = "CRC1"
                timed(body)
            with m.State("CRC1"):
                def body():
                    with m.If(Cat(crc_lo, byte) == crc):  # registers only; frame_ok is not FSM state
                        m.d.sync += frame_ok.eq(1)
                    m.next = "HUNT"
                timed(body)

        # ---------------------------------------------------------- execute
        last_seq = Signal(8)
        last_valid = Signal()
        commands = Signal(range(self.buffer_words + 1))  # command words in the frame
        has_commands = Signal()
        one_command = Signal()       # commands == 1
        answers = Signal(14)         # rsp words still to forward
        answers_done = Signal()      # answers == 0
        first = Signal(STREAM_BITS, reset_less=True)  # the first command word, registered
        duplicate = Signal()         # the frame is a retry to answer with DUPLICATE
        refused = Signal()           # the checker rejected the frame: answer REFUSED, run nothing
        checking = Signal()          # the words go to the checker, not to cmd
        feeding = Signal()           # words are left to send to cmd (or the checker)
        feed_left = Signal(range(self.buffer_words + 1))  # ... this many, the current one included
        feed_last = Signal()         # feed_left == 1
        next_addr = Signal(addr_bits)    # the buffer address of the word after the current one
        after_addr = Signal(addr_bits)   # and of the one after that (a register: no adder before the address)
        header_byte = Signal(range(5))  # the response header's byte being sent
        tx_crc = Signal(16)
        rsp_word = Signal(STREAM_BITS, reset_less=True)
        rsp_byte = Signal(2)
        have_word = Signal()

        # The buffer is read one cycle ahead: the current word is in rd.data,
        # and the address is that of the current word, or of the one after it
        # when the current word is taken in this cycle.  The same feed streams
        # the whole payload to the checker, then the command words to cmd.
        m.submodules.checker = checker = RequestChecker(self.config)
        feed_fire = feeding & Mux(checking, checker.i.ready, self.cmd.ready)
        m.d.comb += [rd.en.eq(1), rd.addr.eq(Mux(feed_fire, after_addr, next_addr))]
        m.d.comb += [self.cmd.valid.eq(feeding & ~checking), self.cmd.payload.eq(rd.data)]
        m.d.comb += [checker.i.valid.eq(feeding & checking), checker.i.payload.word.eq(rd.data),
                     checker.i.payload.last.eq(feed_last)]
        with m.If(feed_fire):
            m.d.sync += [next_addr.eq(after_addr), after_addr.eq(after_addr + 1),
                         feed_left.eq(feed_left - 1), feed_last.eq(feed_left == 2)]
            with m.If(feed_last):
                m.d.sync += feeding.eq(0)

        crc_byte = Signal()          # the byte sent in this cycle goes into the CRC (one XOR network for all)
        with m.If(crc_byte):
            m.d.sync += tx_crc.eq(crc16_step(tx_crc, self.tx.payload))

        def send(value: object) -> None:
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]

        with m.FSM(name="exec"):
            with m.State("WAIT"):
                with m.If(frame_ok):
                    m.d.sync += [self.busy.eq(1), commands.eq(length[2:] - 1)]
                    m.next = "FIRST"
            # a retry that will not run is not checked: the checker takes every request
            # it lets through for executed (its shadow of the descriptors)
            with m.State("FIRST"):      # rd.data holds word 0 (the answer count) after this cycle
                m.d.comb += rd.addr.eq(0)
                m.d.sync += [has_commands.eq(commands != 0), one_command.eq(commands == 1)]
                m.next = "PEEK"
            with m.State("PEEK"):
                m.d.sync += answers.eq(rd.data[:16])
                m.d.comb += rd.addr.eq(1)
                m.next = "LATCH"
            with m.State("LATCH"):      # rd.data holds word 1 (the first command header)
                m.d.sync += [first.eq(rd.data), answers_done.eq(answers == 0)]
                m.d.comb += rd.addr.eq(1)
                m.next = "CLASSIFY"
            with m.State("CLASSIFY"):
                is_read = Signal()
                for op in READ_OPS:
                    with m.If(has_commands & (first[:8] == int(op))):
                        m.d.comb += is_read.eq(1)
                m.d.comb += rd.addr.eq(0)
                m.d.sync += [duplicate.eq(last_valid & (seq == last_seq) & ~is_read), refused.eq(0),
                             next_addr.eq(0), after_addr.eq(1), feed_left.eq(length[2:]), feed_last.eq(length[2:] == 1)]
                m.next = "ROUTE"
            with m.State("ROUTE"):
                m.d.comb += rd.addr.eq(Mux(duplicate, 1, 0))
                m.next = "PRIME"
                with m.If(duplicate):
                    m.next = "DECIDE"
            with m.State("PRIME"):      # rd.data holds word 0 after this cycle
                m.d.sync += [feeding.eq(1), checking.eq(1)]
                m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += checker.o.ready.eq(1)
                with m.If(checker.o.valid):
                    m.d.sync += [refused.eq(~checker.o.payload), checking.eq(0), next_addr.eq(1), after_addr.eq(2),
                                 feed_left.eq(commands), feed_last.eq(one_command)]
                    m.next = "DECIDE"
            with m.State("DECIDE"):
                m.d.comb += rd.addr.eq(1)
                with m.If(refused | duplicate):  # a refused frame is not remembered: its retry is refused too
                    m.d.sync += [answers.eq(0), answers_done.eq(1), has_commands.eq(0)]
                with m.Else():
                    m.d.sync += [last_seq.eq(seq), last_valid.eq(1)]
                m.d.sync += [tx_crc.eq(0xFFFF), header_byte.eq(0)]
                m.next = "HEADER"
            with m.State("HEADER"):
                # sync, seq, status, len in bytes
                status = Signal(8)
                m.d.comb += status.eq(Mux(refused, Status.REFUSED, Mux(duplicate, Status.DUPLICATE, Status.OK)))
                header = Cat(Const(RSP_SYNC, 8), seq, status, Const(0, 2), answers).word_select(header_byte, 8)
                send(header)
                with m.If(self.tx.ready):
                    m.d.comb += crc_byte.eq(header_byte != 0)  # the sync byte is not in the CRC
                    m.d.sync += header_byte.eq(header_byte + 1)
                    with m.If(header_byte == 4):
                        m.d.sync += [have_word.eq(0), feeding.eq(has_commands)]
                        m.next = "BODY"
            with m.State("BODY"):
                # the feed sends the command words while the answer words are forwarded
                with m.If(~have_word):
                    m.d.comb += self.rsp.ready.eq(~answers_done)
                    with m.If(self.rsp.valid & ~answers_done):
                        m.d.sync += [rsp_word.eq(self.rsp.payload), have_word.eq(1), rsp_byte.eq(0),
                                     answers.eq(answers - 1), answers_done.eq(answers == 1)]
                    with m.Elif(answers_done & ~feeding):
                        m.next = "CRC_LO"
                with m.Else():
                    send(rsp_word.word_select(rsp_byte, 8))
                    with m.If(self.tx.ready):
                        m.d.comb += crc_byte.eq(1)
                        m.d.sync += rsp_byte.eq(rsp_byte + 1)
                        with m.If(rsp_byte == 3):
                            m.d.sync += have_word.eq(0)
            with m.State("CRC_LO"):
                send(tx_crc[:8])
                with m.If(self.tx.ready):
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                send(tx_crc[8:])
                with m.If(self.tx.ready):
                    m.d.sync += self.busy.eq(0)
                    m.next = "WAIT"
        return m
