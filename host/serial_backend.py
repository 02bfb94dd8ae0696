"""The SerialBackend: a board on a serial port, through pyserial.

:class:`SerialLink` is the :class:`~host.protocol.Link` over a pyserial
port (8N1 at ``baud``); :class:`SerialBackend` is the
:class:`~host.device.DeviceBackend` over it.  Opening a port that does not
exist, or is busy, raises :class:`SerialPortError` naming it; a port where
no board answers raises :class:`~host.protocol.LinkError` (with the port in
its message) from the construction, which resets the device.
"""

from __future__ import annotations

from typing import Protocol

from host.device import DeviceBackend
from host.protocol import Link, LinkError, Transport
from hw.config import AccelConfig, preset
from hw.frames import BAUD


class SerialPortError(OSError):
    """The serial port could not be opened."""


class Port(Protocol):
    """What :class:`SerialLink` uses of a ``serial.Serial``: a mock can stand in."""

    timeout: float | None

    def write(self, data: bytes) -> int | None: ...

    def read(self, size: int = 1) -> bytes: ...


def open_port(port: str, baud: int) -> Port:
    """A pyserial port, 8N1 at ``baud``, or :class:`SerialPortError` naming it."""
    try:
        import serial
    except ImportError as exc:  # an optional dependency of the host runtime
        raise SerialPortError("the serial backend needs pyserial: pip install pyserial") from exc
    try:
        return serial.Serial(port, baud, bytesize=8, parity="N", stopbits=1, timeout=0.1)
    except (serial.SerialException, ValueError) as exc:
        raise SerialPortError(f"cannot open serial port {port!r} at {baud} baud: {exc}") from exc


class SerialLink(Link):
    """A :class:`~host.protocol.Link` over an open port: reads wait up to ``timeout`` for the first byte."""

    def __init__(self, port: Port, name: str = "port"):
        self.port, self.name = port, name

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def read(self, timeout: float) -> bytes:
        self.port.timeout = timeout
        data = self.port.read(1)
        if not data:
            return b""
        self.port.timeout = 0   # then whatever else has arrived, without waiting
        return data + self.port.read(4096)


class SerialBackend(DeviceBackend):
    """The accelerator on a board at ``port`` (or on ``link``, e.g. a mocked port's)."""

    def __init__(self, port: str, baud: int = BAUD, config: AccelConfig | None = None,
                 timeout: float = 0.5, retries: int = 5, buffer_words: int = 256,
                 link: Link | None = None, **kwargs: object):
        if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
            raise ValueError(f"baud must be a positive int, got {baud!r}")
        self.port_name, self.baud = port, baud
        self.link = link if link is not None else SerialLink(open_port(port, baud), port)
        try:
            super().__init__(Transport(self.link, timeout, retries), config or preset("default"), buffer_words, **kwargs)
        except LinkError as exc:
            raise LinkError(f"no board answers on {port} at {baud} baud: {exc}") from exc
