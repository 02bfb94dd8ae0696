"""The framed wire protocol between the host and the accelerator's UART bridge.

Every exchange is one command frame from the host and one response frame from
the device (``docs/protocol.md`` has the byte tables)::

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
answering the others with status ``DUPLICATE``. The host numbers frames
modulo 256, waits for the response with its sequence number, discards corrupt
or stale frames, re-sends on a timeout, and raises :class:`LinkError` after
``retries`` re-sends.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

CMD_SYNC = 0xA5
RSP_SYNC = 0x5A
MAX_PAYLOAD = 0xFFFF
CMD_HEADER = 4  # sync, seq, len (2)
RSP_HEADER = 5  # sync, seq, status, len (2)
CRC_BYTES = 2
#: Bytes a single try may receive without a valid answer before it re-sends.
_GARBAGE_LIMIT = 4 * (RSP_HEADER + MAX_PAYLOAD + CRC_BYTES)


class Status(enum.IntEnum):
    """The status byte of a response frame."""

    OK = 0
    DUPLICATE = 1  # a retried frame whose command was not executed again


class LinkError(RuntimeError):
    """The device did not answer a frame correctly within the retries."""


def crc16(data: bytes, crc: int = 0xFFFF) -> int:
    """CRC-16/CCITT-FALSE of ``data``."""
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
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


class FrameDecoder:
    """Finds valid frames in a byte stream, skipping anything corrupt.

    ``sync`` selects command or response frames. Bytes before a sync byte,
    and frames whose CRC fails, are dropped; after a bad frame the search
    restarts one byte after its sync byte, so a frame hidden inside garbage is
    still found.
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

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return the frames completed by them."""
        self.buffer += data
        frames = []
        while True:
            start = self.buffer.find(self.sync)
            if start < 0:
                self.dropped += len(self.buffer)
                self.buffer.clear()
                return frames
            self.dropped += start
            del self.buffer[:start]
            if len(self.buffer) < self.header:
                return frames
            length = self.buffer[self.header - 2] | self.buffer[self.header - 1] << 8
            total = self.header + length + CRC_BYTES
            if length <= self.max_payload and len(self.buffer) < total:
                return frames
            body = bytes(self.buffer[1:self.header + length])
            crc = (self.buffer[total - 2] | self.buffer[total - 1] << 8) if length <= self.max_payload else -1
            if crc16(body) != crc:
                self.dropped += 1
                del self.buffer[:1]
                continue
            status = body[1] if self.sync == RSP_SYNC else None
            frames.append(Frame(body[0], status, body[self.header - 1:]))
            del self.buffer[:total]

    def flush(self) -> None:
        """The line went idle: drop a partial frame (its length field may be corrupt)."""
        self.dropped += len(self.buffer)
        self.buffer.clear()


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
                    if response.seq == seq:
                        return response.payload
            self.decoder.flush()
        raise LinkError(
            f"no valid response to frame {seq} after {self.retries + 1} tries "
            f"({timeout:g} s each): is the device connected and running the gsbflow bitstream?"
        )
