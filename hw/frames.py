"""The framed wire protocol's constants, which the bridge and the host must agree on.

The bridge (:mod:`hw.bridge`) implements the device's side of the protocol
in gateware, :mod:`host.protocol` the host's; both take the frame format
from here (``docs/protocol.md`` has the byte tables)::

    command   A5 | seq | len_lo len_hi | payload (len bytes) | crc_lo crc_hi
    response  5A | seq | status | len_lo len_hi | payload (len bytes) | crc_lo crc_hi

Plain Python, so the host needs no HDL stack for it.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.modelfile import Architecture

#: The serial line's default rate, the board builds' and the host's: the
#: boards' USB UARTs (the iCEBreaker's FT2232H, the ULX3S's FT231X) carry 3
#: Mbaud; at 36 MHz that is 12 clock cycles a bit, at 100 MHz 33 (+1%).
BAUD = 3_000_000
#: The largest relative error of the line's real rate (clock / divisor) from
#: the rate asked for: both ends of a 10-bit UART frame share a few percent.
BAUD_TOLERANCE = 0.02
#: The first byte of a command frame.
CMD_SYNC = 0xA5
#: The first byte of a response frame.
RSP_SYNC = 0x5A
#: The longest payload a frame's 16-bit length field can give.
MAX_PAYLOAD = 0xFFFF
#: Bytes before a command's payload: sync, seq, len (2).
CMD_HEADER = 4
#: Bytes before a response's payload: sync, seq, status, len (2).
RSP_HEADER = 5
#: Bytes of the CRC after the payload, low byte first.
CRC_BYTES = 2
#: CRC-16/CCITT-FALSE: its polynomial (x^16 implied) and initial value.
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF


class Status(enum.IntEnum):
    """The status byte of a response frame."""

    OK = 0
    DUPLICATE = 1  # a retried frame whose command was not executed again
    REFUSED = 2  # a malformed or out-of-range request: nothing of it was executed


def whole_model_answer_bytes(classes: int) -> int:
    """The whole-model link's answer to an image (:mod:`hw.core_link`, docs/protocol.md): the class (a byte),
    ``classes`` int32 logits and the chip's cycle count (four bytes each, least significant first)."""
    return 1 + 4 * classes + 4


def whole_model_bytes(arch: Architecture) -> tuple[int, int]:
    """The bytes an image of a model of ``arch`` moves over the whole-model link: its pixels in (a byte each),
    the answer out."""
    return arch.in_channels * arch.image_size**2, whole_model_answer_bytes(arch.num_classes)
