"""The frame format's constants: the frames the host encodes have them, and the CRC is CRC-16/CCITT-FALSE."""

from host.protocol import crc16, encode_command, encode_response
from hw.frames import CMD_HEADER, CMD_SYNC, CRC_BYTES, CRC_INIT, CRC_POLY, RSP_HEADER, RSP_SYNC, Status


def test_frames_are_header_payload_crc():
    payload = bytes(range(8))
    command, response = encode_command(7, payload), encode_response(7, Status.REFUSED, payload)
    assert command[0] == CMD_SYNC and len(command) == CMD_HEADER + len(payload) + CRC_BYTES
    assert response[0] == RSP_SYNC and len(response) == RSP_HEADER + len(payload) + CRC_BYTES
    assert response[2] == Status.REFUSED


def test_crc_is_ccitt_false():
    """The catalogue's check value: CRC-16/CCITT-FALSE of b"123456789" is 0x29B1."""
    assert (CRC_POLY, CRC_INIT) == (0x1021, 0xFFFF)
    assert crc16(b"123456789") == 0x29B1
