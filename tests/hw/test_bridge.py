"""The frame bridge against the host's protocol code, with a stub accelerator."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from host import protocol
from host.protocol import RSP_SYNC, FrameDecoder, Status
from hw.bridge import _CRC16_TAPS, Bridge
from hw.config import AccelConfig
from hw.isa import Op, header

#: Two lanes: the stub's two answer words are a READ of one entry.
CONFIG = AccelConfig(word_bits=8, lanes=2, x_depth=32, y_depth=32, thresh_depth=8, prog_depth=32, result_depth=32)


def test_crc_taps_equal_the_host_crc():
    rng = random.Random(0)
    for _ in range(200):
        crc, byte = rng.randrange(1 << 16), rng.randrange(256)
        bits = [(crc >> i) & 1 for i in range(16)] + [(byte >> i) & 1 for i in range(8)]
        got = sum((sum(bits[t] for t in taps) & 1) << i for i, taps in enumerate(_CRC16_TAPS))
        assert got == protocol.crc16(bytes([byte]), crc)


GAP = bytes(40)  # idle line time: the host waits for each answer before it sends again


def frame(seq: int, answers: int, words: list[int]) -> bytes:
    """A command frame followed by a gap."""
    payload = b"".join(w.to_bytes(4, "little") for w in [answers] + words)
    return protocol.encode_command(seq, payload) + GAP


def run_bridge(stream: bytes, answer_word, cycles: int, bridge: Bridge | None = None, spacing: int = 3,
               stall: float = 0.0):
    """Feed ``stream`` into rx (a byte every ``spacing`` cycles); a stub accelerator answers each cmd word.

    With ``stall``, the accelerator's ``cmd.ready`` and the UART's ``tx.ready``
    are low in that fraction of cycles (at random).
    """
    dut = bridge or Bridge(CONFIG, buffer_words=16, idle_timeout=40)
    got_cmd, got_tx = [], bytearray()
    rng = random.Random(1)

    async def line(ctx):
        for b in stream:
            ctx.set(dut.rx.payload, b)
            ctx.set(dut.rx.valid, 1)
            await ctx.tick()
            ctx.set(dut.rx.valid, 0)
            if spacing > 1:
                await ctx.tick().repeat(spacing - 1)

    async def accelerator(ctx):
        pending = []
        while True:
            ctx.set(dut.cmd.ready, rng.random() >= stall)
            ctx.set(dut.rsp.valid, bool(pending))
            if pending:
                ctx.set(dut.rsp.payload, pending[0])
            _, _, cv, cr, cp, rr = await ctx.tick().sample(dut.cmd.valid, dut.cmd.ready, dut.cmd.payload, dut.rsp.ready)
            if pending and rr:
                pending.pop(0)
            if cv and cr:
                got_cmd.append(cp)
                pending.extend(answer_word(cp))

    async def uart_tx(ctx):
        while True:
            ctx.set(dut.tx.ready, rng.random() >= stall)
            _, _, v, p, r = await ctx.tick().sample(dut.tx.valid, dut.tx.payload, dut.tx.ready)
            if v and r:
                got_tx.append(p)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(line)
    sim.add_process(accelerator)
    sim.add_process(uart_tx)
    sim.run_until(cycles * 1e-8)
    return got_cmd, FrameDecoder(RSP_SYNC).feed(bytes(got_tx))


def echo_read(word: int) -> list[int]:
    """Stub: a READ header answers two words (one entry of two lanes), anything else nothing."""
    return [word ^ 0xFFFF_FFFF, 7] if word & 0xFF == Op.READ else []


def test_good_frames_pass_through_and_are_answered():
    load = [header(Op.LOAD_X, 0), 1, 0xBEEF]
    read = [header(Op.READ, 0), 1]
    cmd, rsp = run_bridge(frame(1, 0, load) + frame(2, 2, read), echo_read, 2000)
    assert cmd == load + read
    assert [(f.seq, f.status) for f in rsp] == [(1, Status.OK), (2, Status.OK)]
    assert rsp[0].payload == b""
    assert rsp[1].payload == (read[0] ^ 0xFFFF_FFFF).to_bytes(4, "little") + (7).to_bytes(4, "little")


def test_backpressure_on_both_sides_loses_nothing():
    load = [header(Op.LOAD_X, 0), 5, *range(100, 105)]
    read = [header(Op.READ, 0), 1, header(Op.READ, 1), 1]
    cmd, rsp = run_bridge(frame(1, 0, load) + frame(2, 4, read), echo_read, 4000, stall=0.5)
    assert cmd == load + read
    assert [(f.seq, f.status) for f in rsp] == [(1, Status.OK), (2, Status.OK)]
    assert rsp[1].payload == b"".join(w.to_bytes(4, "little") for r in read for w in echo_read(r))


def test_a_frame_arriving_while_one_runs_is_dropped_not_mixed_in():
    first = [header(Op.LOAD_X, 0), 1, 0x12345678]
    back_to_back = protocol.encode_command(1, b"".join(w.to_bytes(4, "little") for w in [0] + first)) + \
        protocol.encode_command(2, b"".join(w.to_bytes(4, "little") for w in [0, header(Op.RESET)]))
    cmd, rsp = run_bridge(back_to_back, echo_read, 400, spacing=1)
    assert cmd == first
    assert [(f.seq, f.status) for f in rsp] == [(1, Status.OK)]


def test_bad_frames_are_dropped_without_acting():
    good = frame(3, 0, [header(Op.RESET)])
    bad_crc = bytearray(frame(4, 0, [header(Op.RUN), 1, 2, 3]))
    bad_crc[6] ^= 1
    too_long = frame(5, 0, [0] * 20)                 # 21 words > 16-word buffer
    ragged = protocol.encode_command(6, b"\x00\x00\x00\x00\x01") + GAP  # not whole words
    cmd, rsp = run_bridge(bytes(bad_crc) + too_long + ragged + good, echo_read, 2000)
    assert cmd == [header(Op.RESET)]
    assert [f.seq for f in rsp] == [3]


def test_partial_frame_is_dropped_after_the_idle_timeout():
    partial = frame(8, 0, [header(Op.RUN), 1, 2, 3])[:7]
    cmd, rsp = run_bridge(partial + bytes(20) + frame(9, 0, [header(Op.RESET)]), echo_read, 600)
    assert cmd == [header(Op.RESET)]
    assert [f.seq for f in rsp] == [9]


def test_retries_are_answered_and_only_reads_run_again():
    run = frame(10, 0, [header(Op.RESET)])
    read = frame(11, 2, [header(Op.READ), 1])
    cmd, rsp = run_bridge(run + run + read + read, echo_read, 2000)
    assert cmd == [header(Op.RESET), header(Op.READ), 1, header(Op.READ), 1]
    assert [(f.seq, f.status) for f in rsp] == [(10, Status.OK), (10, Status.DUPLICATE), (11, Status.OK), (11, Status.OK)]
    assert rsp[2].payload == rsp[3].payload != b""


def test_bad_parameters():
    with pytest.raises(ValueError, match="buffer_words must be >= 2"):
        Bridge(CONFIG, buffer_words=1)
    with pytest.raises(TypeError, match="idle_timeout must be an int"):
        Bridge(CONFIG, idle_timeout=1.5)
    with pytest.raises(TypeError, match="config must be an AccelConfig"):
        Bridge(16)


def run_words(rows, blocks, words, passes, offset=0, binary=0):
    return [header(Op.RUN, binary), rows | blocks << 16, words | passes << 16, offset]


#: Requests that locked the device or wrote past a buffer; now each is refused.
HOSTILE = {
    "answers_without_commands": (5, []),            # the bridge waited for 5 answers forever
    "read_without_answers": (0, [header(Op.READ, 0), 1]),  # its answers went to the next frames
    "load_y_past_the_end": (0, [header(Op.LOAD_Y, CONFIG.y_depth), 1, 7, 8]),  # overwrote weight row 0
    "huge_run": (0, run_words(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF)),  # ran for days
    "command_cut_short": (0, [header(Op.LOAD_X, 0), 3, 7]),  # took the next frame's words as data
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_requests_are_refused_and_a_reset_follows(name):
    answers, words = HOSTILE[name]
    stream = frame(20, answers, words) + frame(20, answers, words) + frame(21, 0, [header(Op.RESET)])
    cmd, rsp = run_bridge(stream, echo_read, 1500)
    assert cmd == [header(Op.RESET)]  # nothing of a refused frame reaches the accelerator
    # a refused frame is not remembered: its retry is refused again, not answered DUPLICATE
    assert [(f.seq, f.status, f.payload) for f in rsp] == [
        (20, Status.REFUSED, b""), (20, Status.REFUSED, b""), (21, Status.OK, b"")]


def run_device(stream: bytes, cycles: int) -> list:
    """Feed ``stream`` into a bridge in front of a real accelerator; the response frames."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring

    from hw.accelerator import Accelerator

    m = Module()
    m.submodules.bridge = bridge = Bridge(CONFIG, buffer_words=16, idle_timeout=40)
    m.submodules.accelerator = accelerator = Accelerator(CONFIG)
    wiring.connect(m, bridge.cmd, accelerator.cmd)
    wiring.connect(m, accelerator.rsp, bridge.rsp)
    got_tx = bytearray()

    async def line(ctx):
        for b in stream:
            ctx.set(bridge.rx.payload, b)
            ctx.set(bridge.rx.valid, 1)
            await ctx.tick()
            ctx.set(bridge.rx.valid, 0)
            await ctx.tick().repeat(2)

    async def uart_tx(ctx):
        ctx.set(bridge.tx.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(bridge.tx.valid, bridge.tx.payload):
            if valid:
                got_tx.append(payload)

    sim = Simulator(m)
    sim.add_clock(1e-8)
    sim.add_testbench(line)
    sim.add_process(uart_tx)
    sim.run_until(cycles * 1e-8)
    return FrameDecoder(RSP_SYNC).feed(bytes(got_tx))


def test_the_device_answers_after_requests_that_locked_it():
    """A READ nobody collects left its answers to the next frame, a huge RUN stalled every later command."""
    stream = (frame(1, 0, run_words(1, 1, 1, 1, offset=5))  # result entry 0: 5 in both lanes
              + frame(2, 0, [header(Op.READ, 0), 1])
              + frame(3, 0, run_words(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFF))
              + frame(4, 0, [header(Op.RESET)])
              + frame(5, 2, [header(Op.READ_CYCLES)])
              + frame(6, 2, [header(Op.READ, 0), 1]))
    rsp = run_device(stream, 3000)
    assert [(f.seq, f.status) for f in rsp] == [
        (1, Status.OK), (2, Status.REFUSED), (3, Status.REFUSED), (4, Status.OK), (5, Status.OK), (6, Status.OK)]
    assert rsp[4].payload == bytes(8)  # the cycle counter, cleared by the RESET
    assert rsp[5].payload == (5).to_bytes(4, "little") * 2


def test_a_retry_that_does_not_run_leaves_the_checks_as_the_device_is():
    """A retry answered DUPLICATE is not executed, so its descriptors must not count for the next RUN.

    Descriptor 0 has x_base 31 (a run of one x entry); a non-read frame with the
    last executed seq loads x_base 0, is not executed, and so a run of two x
    entries from descriptor 0 (entries 31 and 32, past the buffer) is refused.
    """
    from hw.isa import descriptor

    stream = (frame(1, 0, [header(Op.LOAD_PROG, 0), 1, *descriptor(CONFIG, 31, 0, 1)])
              + frame(1, 0, [header(Op.LOAD_PROG, 0), 1, *descriptor(CONFIG, 0, 0, 1)])
              + frame(2, 0, run_words(1, 1, 2, 1))
              + frame(3, 0, run_words(1, 1, 1, 1)))
    rsp = run_device(stream, 4000)
    assert [(f.seq, f.status) for f in rsp] == [(1, Status.OK), (1, Status.DUPLICATE), (2, Status.REFUSED), (3, Status.OK)]
