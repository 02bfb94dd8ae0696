"""The SerialBackend's code path: a mocked pyserial port looped back to the simulated board."""

from __future__ import annotations

import numpy as np
import pytest

from host.protocol import LinkError
from host.serial_backend import SerialBackend, SerialLink, SerialPortError, open_port
from host.sim_backend import SIM_CONFIG, SimLink
from sim.model_layers import model_layers


class LoopbackPort:
    """pyserial's ``write``/``read``/``timeout``, wired to a SimLink (or to nothing)."""

    def __init__(self, link: SimLink | None):
        self.link, self.timeout, self.pending = link, None, b""

    def write(self, data: bytes) -> int:
        if self.link is not None:
            self.link.write(data)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if not self.pending and self.link is not None and self.timeout:
            self.pending = self.link.read(self.timeout)
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


def test_serial_backend_on_a_mocked_port_runs_layers():
    port = LoopbackPort(SimLink())
    backend = SerialBackend("mock0", 115200, SIM_CONFIG, timeout=0.01, link=SerialLink(port, "mock0"))
    calls = model_layers(SIM_CONFIG.word_bits)
    for name in ("blocks.0.attn.qk#0", "blocks.1.mlp.fc2#0"):
        call = calls[name]
        backend.load("x", call.groups_x)
        backend.load(f"{name}.w", call.groups_y)
        assert np.array_equal(backend.layer("x", f"{name}.w", call.coefs), call.result)
    assert backend.cycles() == backend.device_cycles() > 0


def test_no_board_answering_is_a_clear_error():
    with pytest.raises(LinkError, match=r"no board answers on mock1 at 9600 baud: no valid response to frame 0 after 2 tries"):
        SerialBackend("mock1", 9600, timeout=0.001, retries=1, link=SerialLink(LoopbackPort(None), "mock1"))


def test_a_missing_port_is_named():
    with pytest.raises(SerialPortError, match=r"cannot open serial port '/dev/gsbflow-no-such-port' at 115200 baud"):
        open_port("/dev/gsbflow-no-such-port", 115200)
    with pytest.raises(ValueError, match="baud must be a positive int"):
        SerialBackend("mock2", 0)
