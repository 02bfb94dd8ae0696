"""The frame bridge against the host's protocol code, with a stub accelerator."""

from __future__ import annotations

import random

import pytest
from amaranth.sim import Simulator

from host import protocol
from host.protocol import RSP_SYNC, FrameDecoder, Status
from hw.bridge import _CRC16_TAPS, Bridge
from hw.isa import Op, header


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
    dut = bridge or Bridge(buffer_words=16, idle_timeout=40)
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
    """Stub: a READ header answers two words, anything else nothing."""
    return [word ^ 0xFFFF_FFFF, 7] if word & 0xFF == Op.READ else []


def test_good_frames_pass_through_and_are_answered():
    load = [header(Op.LOAD_X, 0), 1, 0xDEADBEEF]
    read = [header(Op.READ, 0)]
    cmd, rsp = run_bridge(frame(1, 0, load) + frame(2, 2, read), echo_read, 2000)
    assert cmd == load + read
    assert [(f.seq, f.status) for f in rsp] == [(1, Status.OK), (2, Status.OK)]
    assert rsp[0].payload == b""
    assert rsp[1].payload == (read[0] ^ 0xFFFF_FFFF).to_bytes(4, "little") + (7).to_bytes(4, "little")


def test_backpressure_on_both_sides_loses_nothing():
    load = [header(Op.LOAD_X, 0), 5, *range(100, 105)]
    read = [header(Op.READ, 0), header(Op.READ, 1)]
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
    read = frame(11, 2, [header(Op.READ)])
    cmd, rsp = run_bridge(run + run + read + read, echo_read, 2000)
    assert cmd == [header(Op.RESET), header(Op.READ), header(Op.READ)]
    assert [(f.seq, f.status) for f in rsp] == [(10, Status.OK), (10, Status.DUPLICATE), (11, Status.OK), (11, Status.OK)]
    assert rsp[2].payload == rsp[3].payload != b""


def test_bad_parameters():
    with pytest.raises(ValueError, match="buffer_words must be >= 2"):
        Bridge(buffer_words=1)
    with pytest.raises(TypeError, match="idle_timeout must be an int"):
        Bridge(idle_timeout=1.5)
