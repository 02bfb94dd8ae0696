"""The frame bridge: UART bytes in and out, accelerator command words through.

It implements the device side of ``docs/protocol.md``:

* A command frame (``A5 seq len payload crc``) is received into a block-RAM
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
* Executing sends the response header at once, streams the command words to
  ``cmd`` and the expected number of ``rsp`` words to the UART (little
  endian), then the CRC. No response buffer is needed.
"""


from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from host.protocol import CMD_SYNC, RSP_SYNC, Status
from hw.config import STREAM_BITS, ceil_log2
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

    def __init__(self, buffer_words: int = 256, idle_timeout: int = 1 << 16) -> None:
        for name, value, lo in (("buffer_words", buffer_words, 2), ("idle_timeout", idle_timeout, 16)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < lo:
                raise ValueError(f"{name} must be >= {lo}, got {value}")
        if buffer_words > 0x3FFF:
            raise ValueError(f"buffer_words must be at most {0x3FFF} (len is 16 bits of bytes), got {buffer_words}")
        self.buffer_words, self.idle_timeout = buffer_words, idle_timeout
        super().__init__()

    def elaborate(self, platform: object) -> Module:
        m = Module()
        m.submodules.mem = mem = Memory(shape=unsigned(STREAM_BITS), depth=self.buffer_words, init=[])
        wr, rd = mem.write_port(), mem.read_port()
        addr_bits = max(1, ceil_log2(self.buffer_words))

        # ---------------------------------------------------------- receive
        crc = Signal(16)
        seq = Signal(8)
        length = Signal(16)          # payload bytes
        count = Signal(16)           # payload bytes received
        word = Signal(STREAM_BITS)
        crc_lo = Signal(8)
        idle = Signal(range(self.idle_timeout + 1))
        byte = self.rx.payload
        got = self.rx.valid
        frame_ok = Signal()          # one cycle: a good frame is in the buffer
        busy = Signal()              # executing: ignore the line
        m.d.sync += frame_ok.eq(0)
        m.d.comb += self.rx.ready.eq(1)  # a UART has no backpressure: every byte is taken
        m.d.comb += [wr.addr.eq(count[2:2 + addr_bits]), wr.data.eq(Cat(word[8:], byte))]

        with m.FSM(name="rx"):
            with m.State("HUNT"):
                with m.If(got & (byte == CMD_SYNC) & ~busy & ~frame_ok):  # no new frame until the last one has run
                    m.d.sync += [crc.eq(0xFFFF), idle.eq(0)]
                    m.next = "SEQ"

            def timed(state_body):
                """Count idle cycles inside a frame; drop the frame after ``idle_timeout``."""
                with m.If(got):
                    m.d.sync += idle.eq(0)
                    state_body()
                with m.Elif(idle == self.idle_timeout):
                    m.next = "HUNT"
                with m.Else():
                    m.d.sync += idle.eq(idle + 1)

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
                    total = Cat(length[:8], byte)
                    m.d.sync += [length[8:].eq(byte), crc.eq(crc16_step(crc, byte)), count.eq(0)]
                    with m.If((total[:2] == 0) & (total >= 4) & (total <= 4 * self.buffer_words)):
                        m.next = "PAYLOAD"
                    with m.Else():
                        m.next = "HUNT"
                timed(body)
            with m.State("PAYLOAD"):
                def body():
                    m.d.sync += [word.eq(Cat(word[8:], byte)), count.eq(count + 1), crc.eq(crc16_step(crc, byte))]
                    with m.If(count[:2] == 3):
                        m.d.comb += wr.en.eq(1)
                    with m.If(count + 1 == length):
                        m.next = "CRC0"
                timed(body)
            with m.State("CRC0"):
                def body():
                    m.d.sync += crc_lo.eq(byte)
                    m.next = "CRC1"
                timed(body)
            with m.State("CRC1"):
                def body():
                    with m.If(Cat(crc_lo, byte) == crc):
                        m.d.sync += frame_ok.eq(1)
                    m.next = "HUNT"
                timed(body)

        # ---------------------------------------------------------- execute
        last_seq = Signal(8)
        last_valid = Signal()
        status = Signal(8)
        answers = Signal(16)         # rsp words still to forward
        words = Signal(16)           # command words in the frame
        fed = Signal(16)             # command words sent to cmd
        rsp_len = Signal(16)         # response payload bytes
        tx_crc = Signal(16)
        rsp_word = Signal(STREAM_BITS)
        rsp_byte = Signal(2)
        have_word = Signal()
        header = Signal(range(6))

        # The command words are read from the buffer one cycle ahead.
        feed_fire = self.cmd.valid & self.cmd.ready
        m.d.comb += [rd.en.eq(1), rd.addr.eq(Mux(feed_fire, fed + 2, fed + 1))]
        m.d.comb += [self.cmd.payload.eq(rd.data)]

        def send(value: object) -> None:
            m.d.comb += [self.tx.valid.eq(1), self.tx.payload.eq(value)]

        with m.FSM(name="exec"):
            with m.State("WAIT"):
                with m.If(frame_ok):
                    m.d.sync += [busy.eq(1), words.eq(length[2:] - 1), fed.eq(0), header.eq(0)]
                    m.next = "FIRST"
            with m.State("FIRST"):      # rd.data holds word 0 (the answer count) after one cycle
                m.d.comb += rd.addr.eq(0)
                m.next = "PEEK"
            with m.State("PEEK"):
                m.d.sync += answers.eq(rd.data[:16])
                m.d.comb += rd.addr.eq(1)
                m.next = "DECIDE"
            with m.State("DECIDE"):     # rd.data holds word 1 (the first command header)
                is_read = Signal()
                m.d.comb += is_read.eq(0)
                for op in READ_OPS:
                    with m.If((words != 0) & (rd.data[:8] == int(op))):
                        m.d.comb += is_read.eq(1)
                m.d.comb += rd.addr.eq(1)
                with m.If(last_valid & (seq == last_seq) & ~is_read):
                    m.d.sync += [status.eq(Status.DUPLICATE), rsp_len.eq(0), answers.eq(0), words.eq(0)]
                with m.Else():
                    m.d.sync += [status.eq(Status.OK), rsp_len.eq(Cat(Const(0, 2), answers[:14])),
                                 last_seq.eq(seq), last_valid.eq(1)]
                m.d.sync += tx_crc.eq(0xFFFF)
                m.next = "HEADER"
            with m.State("HEADER"):
                hdr = [Const(RSP_SYNC, 8), seq, status, rsp_len[:8], rsp_len[8:]]
                value = Signal(8)
                with m.Switch(header):
                    for i, v in enumerate(hdr):
                        with m.Case(i):
                            m.d.comb += value.eq(v)
                send(value)
                with m.If(self.tx.ready):
                    with m.If(header != 0):
                        m.d.sync += tx_crc.eq(crc16_step(tx_crc, value))
                    m.d.sync += header.eq(header + 1)
                    with m.If(header == 4):
                        m.d.sync += have_word.eq(0)
                        m.next = "BODY"
            with m.State("BODY"):
                # feed the command words and forward the answer words concurrently
                m.d.comb += self.cmd.valid.eq(fed != words)
                with m.If(feed_fire):
                    m.d.sync += fed.eq(fed + 1)
                with m.If(~have_word):
                    m.d.comb += self.rsp.ready.eq(answers != 0)
                    with m.If(self.rsp.valid & self.rsp.ready):
                        m.d.sync += [rsp_word.eq(self.rsp.payload), have_word.eq(1), rsp_byte.eq(0), answers.eq(answers - 1)]
                    with m.Elif((answers == 0) & (fed == words)):
                        m.next = "CRC_LO"
                with m.Else():
                    value = rsp_word.word_select(rsp_byte, 8)
                    send(value)
                    with m.If(self.tx.ready):
                        m.d.sync += [tx_crc.eq(crc16_step(tx_crc, value)), rsp_byte.eq(rsp_byte + 1)]
                        with m.If(rsp_byte == 3):
                            m.d.sync += have_word.eq(0)
            with m.State("CRC_LO"):
                send(tx_crc[:8])
                with m.If(self.tx.ready):
                    m.next = "CRC_HI"
            with m.State("CRC_HI"):
                send(tx_crc[8:])
                with m.If(self.tx.ready):
                    m.d.sync += busy.eq(0)
                    m.next = "WAIT"
        return m
