"""Framing, CRC and the retrying transport, against an echo device on a faulty line."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from host import protocol
from host.protocol import CMD_SYNC, RSP_SYNC, FrameDecoder, Link, LinkError, RefusedError, Status, Transport


def test_crc16_ccitt_false_check_value():
    assert protocol.crc16(b"123456789") == 0x29B1


@settings(max_examples=50, deadline=None)
@given(payloads=st.lists(st.binary(max_size=300), min_size=1, max_size=5), junk=st.binary(max_size=20), split=st.integers(1, 50))
def test_decoder_finds_frames_in_any_chunking(payloads, junk, split):
    stream = junk.replace(bytes([CMD_SYNC]), b"") + b"".join(protocol.encode_command(i, p) for i, p in enumerate(payloads))
    dec = FrameDecoder(CMD_SYNC)
    frames = []
    for i in range(0, len(stream), split):
        frames += dec.feed(stream[i:i + split])
    assert [(f.seq, f.payload) for f in frames] == list(enumerate(payloads))


def test_corrupt_frame_is_dropped_and_next_one_found():
    good = protocol.encode_response(7, Status.OK, b"abcd")
    bad = bytearray(protocol.encode_response(6, Status.OK, b"wxyz"))
    bad[6] ^= 0x10
    frames = FrameDecoder(RSP_SYNC).feed(bytes(bad) + good)
    assert [(f.seq, f.status, f.payload) for f in frames] == [(7, 0, b"abcd")]


class EchoDevice:
    """A device model: answers each new command with its payload reversed, as the bridge would frame it."""

    def __init__(self):
        self.decoder = FrameDecoder(CMD_SYNC, max_payload=256)
        self.last_seq: int | None = None
        self.executed = 0

    def receive(self, data: bytes) -> bytes:
        """Bytes in, then the line idles (the bridge's idle timeout drops a partial frame)."""
        out = b""
        for frame in self.decoder.feed(data):
            if frame.seq == self.last_seq:
                out += protocol.encode_response(frame.seq, Status.DUPLICATE, frame.payload[::-1])
                continue
            self.last_seq = frame.seq
            self.executed += 1
            out += protocol.encode_response(frame.seq, Status.OK, frame.payload[::-1])
        self.decoder.flush()
        return out


class FaultyLine(Link):
    """A serial line with seeded drops, bit flips, duplicated frames and device resets."""

    def __init__(self, device: EchoDevice, rng: np.random.Generator, p_fault: float):
        self.device, self.rng, self.p = device, rng, p_fault
        self.pending = b""
        self.faults = 0

    def _damage(self, data: bytes) -> bytes:
        if not data or self.rng.random() >= self.p:
            return data
        self.faults += 1
        kind = self.rng.integers(4)
        buf = bytearray(data)
        i = int(self.rng.integers(len(buf)))
        if kind == 0:
            del buf[i:i + int(self.rng.integers(1, 4))]          # dropped bytes
        elif kind == 1:
            buf[i] ^= 1 << int(self.rng.integers(8))            # flipped bit
        elif kind == 2:
            buf += data                                          # duplicated frame
        else:
            self.device.decoder = FrameDecoder(CMD_SYNC, 256)    # device reset mid-transfer
            self.device.last_seq = None
            buf = buf[:i]
        return bytes(buf)

    def write(self, data: bytes) -> None:
        self.pending += self._damage(self.device.receive(self._damage(data)))

    def read(self, timeout: float) -> bytes:
        data, self.pending = self.pending, b""
        return data


@pytest.mark.parametrize("seed", range(3))
def test_transport_gives_no_wrong_answer_under_faults(seed):
    rng = np.random.default_rng(seed)
    device = EchoDevice()
    line = FaultyLine(device, rng, p_fault=0.3)
    transport = Transport(line, timeout=0.01, retries=20)
    for i in range(300):
        payload = rng.integers(0, 256, size=int(rng.integers(0, 64)), dtype=np.uint8).tobytes()
        assert transport.request(payload) == payload[::-1]
    assert line.faults > 50 and transport.resent > 0
    # every command ran at least once; retries of executed frames did not run again
    assert 300 <= device.executed <= 300 + line.faults


def test_transport_raises_once_retries_run_out():
    class DeadLine(Link):
        writes = 0

        def write(self, data):
            DeadLine.writes += 1

        def read(self, timeout):
            return b""

    with pytest.raises(LinkError, match="no valid response to frame 0 after 4 tries"):
        Transport(DeadLine(), timeout=0.01, retries=3).request(b"x")
    assert DeadLine.writes == 4


def test_a_refused_frame_raises_at_once_and_is_not_sent_again():
    class RefusingLine(Link):
        """A device that refuses every request (status REFUSED, as the bridge answers a malformed one)."""

        writes = 0

        def __init__(self):
            self.decoder, self.pending = FrameDecoder(CMD_SYNC), b""

        def write(self, data):
            RefusingLine.writes += 1
            for frame in self.decoder.feed(data):
                self.pending += protocol.encode_response(frame.seq, Status.REFUSED, b"")

        def read(self, timeout):
            data, self.pending = self.pending, b""
            return data

    with pytest.raises(RefusedError, match="the device refused frame 0 .* executed none of it"):
        Transport(RefusingLine(), timeout=0.01, retries=3).request(b"\x05\x00\x00\x00")
    assert RefusingLine.writes == 1
    assert issubclass(RefusedError, LinkError)  # the CLI reports it as it reports a dead link


def test_oversized_length_field_does_not_stall_the_decoder():
    dec = FrameDecoder(CMD_SYNC, max_payload=16)
    good = protocol.encode_command(3, b"ok")
    assert [f.seq for f in dec.feed(bytes([CMD_SYNC, 0, 0xFF, 0xFF]) + good)] == [3]


def reference_decode(sync: int, stream: bytes, max_payload: int = protocol.MAX_PAYLOAD) -> list[tuple]:
    """The decoder's contract, written the slow and obvious way: at each sync byte, a frame if its CRC holds."""
    header = protocol.CMD_HEADER if sync == CMD_SYNC else protocol.RSP_HEADER
    frames, i = [], 0
    while (i := stream.find(bytes([sync]), i)) >= 0 and i + header <= len(stream):
        length = stream[i + header - 2] | stream[i + header - 1] << 8
        end = i + header + length + 2
        if length <= max_payload and end > len(stream):
            break  # incomplete: the decoder waits for more bytes
        body = stream[i + 1:i + header + length]
        if length <= max_payload and protocol.crc16(body) == (stream[end - 2] | stream[end - 1] << 8):
            frames.append((body[0], body[1] if sync == RSP_SYNC else None, body[header - 1:]))
            i = end
        else:
            i += 1
    return frames


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.one_of(st.binary(max_size=12), st.binary(max_size=40).map(lambda p: protocol.encode_response(len(p), Status.OK, p)),
                                st.sampled_from([bytes([RSP_SYNC]), bytes([RSP_SYNC, 0, 0, 1, 0])])), max_size=12),
       split=st.integers(1, 64), max_payload=st.sampled_from([protocol.MAX_PAYLOAD, 8]))
def test_decoder_equals_the_reference_on_sync_rich_garbage(parts, split, max_payload):
    stream = b"".join(parts)
    dec = FrameDecoder(RSP_SYNC, max_payload)
    frames = []
    for i in range(0, len(stream), split):
        frames += dec.feed(stream[i:i + split])
    assert [(f.seq, f.status, f.payload) for f in frames] == reference_decode(RSP_SYNC, stream, max_payload)


@pytest.mark.parametrize("chunk", [4096, 1 << 21])
def test_decoder_is_linear_on_a_babbling_line_of_sync_bytes(chunk):
    """2 MiB of 0x5A (each byte a candidate frame of 23,130 payload bytes) in well under 2 s, then a real frame."""
    dec = FrameDecoder(RSP_SYNC)
    babble = bytes([RSP_SYNC]) * (1 << 21)
    t0 = time.perf_counter()
    for i in range(0, len(babble), chunk):
        assert dec.feed(babble[i:i + chunk]) == []
    assert time.perf_counter() - t0 < 2.0
    dec.flush()
    assert [f.payload for f in dec.feed(protocol.encode_response(1, Status.OK, b"ok"))] == [b"ok"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="payload must be at most"):
        protocol.encode_command(0, bytes(70000))
    with pytest.raises(TypeError, match="payload must be bytes"):
        protocol.encode_command(0, "text")
    with pytest.raises(ValueError, match="retries must be >= 0"):
        Transport(None, retries=-1)
