"""The framed wire protocol between the host and the accelerator's UART bridge.

Every exchange is one command frame from the host and one response frame from
the device (``docs/protocol.md`` has the byte tables; the constants of the
format, shared with the bridge, are in :mod:`hw.frames`)::

    command   A5 | seq | len_lo len_hi | payload (len bytes) | crc_lo crc_hi
    response  5A | seq | status | len_lo len_hi | payload (len bytes) | crc_lo crc_hi

The payload of a command is accelerator command-stream words (32-bit, little
endian; see :mod:`hw.isa`); the payload of a response is the words the
command answered. The CRC is CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF) over
every byte after the sync byte and before the CRC.

The device drops a frame whose CRC, length or sync is bad without acting on
it; a frame longer than the device's buffer is bad, and when the line is idle
for a frame time, a partial frame is dropped (a corrupt length field cannot
stall the receiver). It remembers the sequence number of the last frame it executed: a frame
with that same number is a retry (the host lost the response), which the
device answers again, re-executing only side-effect-free commands and
answering the others with status ``DUPLICATE``. A request it will not run
(malformed, or outside its buffers) it answers with status ``REFUSED``, on
which the host raises :class:`RefusedError` without re-sending. The host numbers frames
modulo 256, waits for the response with its sequence number, discards corrupt
or stale frames, re-sends on a timeout, and raises :class:`LinkError` after
``retries`` re-sends.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from hw.frames import CMD_HEADER, CMD_SYNC, CRC_BYTES, CRC_INIT, CRC_POLY, MAX_PAYLOAD, RSP_HEADER, RSP_SYNC, Status

#: Bytes a single try may receive without a valid answer before it re-sends.
_GARBAGE_LIMIT = 4 * (RSP_HEADER + MAX_PAYLOAD + CRC_BYTES)


class LinkError(RuntimeError):
    """The device did not answer a frame correctly within the retries."""


class RefusedError(LinkError):
    """The device refused a frame (status REFUSED) and executed none of it.

    Sending it again would be refused again: the request does not fit the
    device (a host bug, or a host configured for another bitstream).
    """


def crc16(data: bytes, crc: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ CRC_POLY) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def _check_payload(payload: bytes) -> None:
    if not isinstance(payload, (bytes, bytearray)):
        raise TypeError(f"payload must be bytes, got {type(payload).__name__}")
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload must be at most {MAX_PAYLOAD} bytes, got {len(payload)}")


def encode_command(seq: int, payload: bytes) -> bytes:
    """A command frame."""
    _check_payload(payload)
    body = bytes([seq & 0xFF, len(payload) & 0xFF, len(payload) >> 8]) + bytes(payload)
    crc = crc16(body)
    return bytes([CMD_SYNC]) + body + bytes([crc & 0xFF, crc >> 8])


def encode_response(seq: int, status: Status, payload: bytes) -> bytes:
    """A response frame (what the device sends)."""
    _check_payload(payload)
    body = bytes([seq & 0xFF, int(status), len(payload) & 0xFF, len(payload) >> 8]) + bytes(payload)
    crc = crc16(body)
    return bytes([RSP_SYNC]) + body + bytes([crc & 0xFF, crc >> 8])


@dataclass(frozen=True)
class Frame:
    """A decoded frame: sequence number, status (responses only) and payload."""

    seq: int
    status: int | None
    payload: bytes


# The decoder checks the CRC of every candidate frame (each sync byte) in O(1)
# from prefix sums, so its time is linear in its input: with the CRC register
# as a polynomial mod P, one byte b turns r into r*x^8 + b*x^16, hence the CRC
# of bytes s..e-1 from ``init`` is init*x^(8(e-s)) + x^(8(e+1)) * (H[e] - H[s])
# with H[k] the sum of b_j * x^(-8j) over j < k (GF(2): minus is xor).
_CRC_POLY = 1 << 16 | CRC_POLY
_X8_ORDER = 32767  # x^8 has this multiplicative order mod P: exponents of x^8 repeat with it


def _gf_mul(a: np.ndarray, b: np.ndarray, a_bits: int = 16) -> np.ndarray:
    """Elementwise product mod P of polynomials given as ints (``a`` of ``a_bits`` bits, ``b`` of 16)."""
    a, b = a.astype(np.uint32), b.astype(np.uint32)
    product = np.zeros(np.broadcast(a, b).shape, np.uint32)
    for j in range(a_bits):
        product ^= ((a >> j) & 1) * (b << j)
    for j in range(a_bits + 14, 15, -1):
        product ^= ((product >> j) & 1) * np.uint32(_CRC_POLY << (j - 16))
    return product.astype(np.uint16)


def _x8_powers() -> np.ndarray:
    """``x^(8m) mod P`` for m in 0.._X8_ORDER-1, doubling the table at each step."""
    powers = np.ones(1, np.uint16)
    while len(powers) < _X8_ORDER:
        step = _gf_mul(powers[-1:], np.uint16(1 << 8))  # x^(8k) with k = len(powers)
        powers = np.concatenate([powers, _gf_mul(powers, step)])
    return powers[:_X8_ORDER]


_X8 = _x8_powers()
_INIT_SHIFTED = _gf_mul(_X8, np.uint16(CRC_INIT))  # init * x^(8n): the init's part of a CRC over n bytes


class _CrcPrefix:
    """H[k] (above) for every position k of the decoder's buffer, kept as bytes arrive and leave."""

    def __init__(self):
        self.values = np.zeros(1, np.uint16)
        self.start = 0         # values[start] is H at buffer position 0
        self.end = 1
        self.offset = 0        # the stream position of buffer position 0, mod _X8_ORDER

    def append(self, data: bytes) -> None:
        n = self.end - self.start - 1
        positions = (self.offset + n + np.arange(len(data))) % _X8_ORDER
        terms = _gf_mul(np.frombuffer(data, np.uint8), _X8[(-positions) % _X8_ORDER], a_bits=8)
        new = np.bitwise_xor.accumulate(terms) ^ self.values[self.end - 1]
        if self.end + len(new) > len(self.values):
            kept = self.values[self.start:self.end]
            self.values = np.zeros(2 * (len(kept) + len(new)), np.uint16)
            self.values[:len(kept)] = kept
            self.start, self.end = 0, len(kept)
        self.values[self.end:self.end + len(new)] = new
        self.end += len(new)

    def drop(self, count: int) -> None:
        self.start += count
        self.offset = (self.offset + count) % _X8_ORDER

    def crc(self, s: np.ndarray, e: np.ndarray) -> np.ndarray:
        """CRC-16/CCITT-FALSE of buffer[s:e] for each pair."""
        h = self.values[self.start + s] ^ self.values[self.start + e]
        return _INIT_SHIFTED[(e - s) % _X8_ORDER] ^ _gf_mul(_X8[(self.offset + e + 1) % _X8_ORDER], h)


class FrameDecoder:
    """Finds valid frames in a byte stream, skipping anything corrupt.

    ``sync`` selects command or response frames. Bytes before a sync byte,
    and frames whose CRC fails, are dropped; after a bad frame the search
    restarts one byte after its sync byte, so a frame hidden inside garbage is
    still found. Its time is linear in its input, whatever the bytes (a
    babbling line of sync bytes included).
    """

    def __init__(self, sync: int, max_payload: int = MAX_PAYLOAD):
        if sync not in (CMD_SYNC, RSP_SYNC):
            raise ValueError(f"sync must be 0x{CMD_SYNC:02X} or 0x{RSP_SYNC:02X}, got {sync!r}")
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in 0..{MAX_PAYLOAD}, got {max_payload}")
        self.sync, self.max_payload = sync, max_payload
        self.header = CMD_HEADER if sync == CMD_SYNC else RSP_HEADER
        self.buffer = bytearray()
        self.dropped = 0
        self._prefix = _CrcPrefix()
        self._need = 1  # buffer bytes before anything can be decided

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the frames completed by them."""
        self.buffer += data
        self._prefix.append(bytes(data))
        frames = []
        while len(self.buffer) >= self._need:
            start, total = self._search()
            self._drop(start)
            self.dropped += start
            if not total:
                self._need = self._frame_length() if self.buffer else 1
                return frames
            body = bytes(self.buffer[1:total - CRC_BYTES])
            frames.append(Frame(body[0], body[1] if self.sync == RSP_SYNC else None, body[self.header - 1:]))
            self._drop(total)
            self._need = 1
        return frames

    def _frame_length(self) -> int:
        """The length of the frame starting at buffer[0], or the header's while its length is unknown."""
        if len(self.buffer) < self.header:
            return self.header
        return self.header + (self.buffer[self.header - 2] | self.buffer[self.header - 1] << 8) + CRC_BYTES

    def _search(self) -> tuple[int, int]:
        """``(start, total)``: the first sync byte that starts a valid frame (of ``total`` bytes) or one that
        may yet (``total`` 0); ``(len(buffer), 0)`` if none.

        Windows of growing size keep the work proportional to the bytes passed over.
        """
        data = np.frombuffer(self.buffer, np.uint8)
        n, lo, width = len(data), 0, 64
        try:
            while lo < n:
                hi = min(n, lo + width)
                start = lo + np.flatnonzero(data[lo:hi] == self.sync)
                known = start + self.header <= n
                length = np.zeros(len(start), np.int64)
                length[known] = data[start[known] + self.header - 2] | data[start[known] + self.header - 1].astype(np.int64) << 8
                total = self.header + length + CRC_BYTES
                fits = length <= self.max_payload
                complete = known & fits & (start + total <= n)
                valid = np.zeros(len(start), bool)
                s, e = start[complete] + 1, start[complete] + total[complete] - CRC_BYTES
                valid[complete] = self._prefix.crc(s, e) == (data[e] | data[e + 1].astype(np.uint16) << 8)
                found = np.flatnonzero(valid | ~known | (fits & ~complete))
                if len(found):
                    k = found[0]
                    return int(start[k]), int(total[k]) if valid[k] else 0
                lo, width = hi, 2 * width
            return n, 0
        finally:
            del data  # release the buffer export so the bytearray can shrink

    def _drop(self, count: int) -> None:
        del self.buffer[:count]
        self._prefix.drop(count)

    def flush(self) -> None:
        """The line went idle: drop a partial frame (its length field may be corrupt)."""
        self.dropped += len(self.buffer)
        self._drop(len(self.buffer))
        self._need = 1


class Link(abc.ABC):
    """A byte pipe to a device: a serial port, or a simulated serial line."""

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send bytes."""

    @abc.abstractmethod
    def read(self, timeout: float) -> bytes:
        """The bytes that arrive next; empty if none arrive within ``timeout`` seconds.

        A simulated line counts the timeout in simulated time.
        """


class Transport:
    """Sends command payloads and returns response payloads, with retries.

    A try ends when a read returns nothing (the link's timeout) or when too
    many bytes arrive without the awaited frame; then the frame is re-sent.
    """

    def __init__(self, link: Link, timeout: float = 0.5, retries: int = 5):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self.link, self.timeout, self.retries = link, timeout, retries
        self.decoder = FrameDecoder(RSP_SYNC)
        self.seq = 0
        self.resent = 0

    def request(self, payload: bytes, timeout: float | None = None) -> bytes:
        """Send one command frame and return its response payload.

        ``timeout`` replaces the transport's read timeout for this frame (a
        frame with a RUN is answered only once the run is done).
        """
        timeout = self.timeout if timeout is None else timeout
        seq = self.seq
        self.seq = (self.seq + 1) & 0xFF
        frame = encode_command(seq, payload)
        for attempt in range(self.retries + 1):
            if attempt:
                self.resent += 1
            self.link.write(frame)
            received = 0
            while received <= _GARBAGE_LIMIT and (data := self.link.read(timeout)):
                received += len(data)
                for response in self.decoder.feed(data):
                    if response.seq == seq and response.status == Status.REFUSED:
                        raise RefusedError(
                            f"the device refused frame {seq} ({len(payload)} bytes) and executed none of it: "
                            "an answer count that differs from its commands', a command cut short, an unknown "
                            "opcode, or a LOAD, READ or RUN outside the buffers (is the host's AccelConfig "
                            "the bitstream's?)"
                        )
                    if response.seq == seq:
                        return response.payload
            self.decoder.flush()
        raise LinkError(
            f"no valid response to frame {seq} after {self.retries + 1} tries "
            f"({timeout:g} s each): is the device connected and running the gsbflow bitstream?"
        )
