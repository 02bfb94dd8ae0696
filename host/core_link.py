"""The host's end of the whole-model link (:mod:`hw.core_link`), and the whole model on a board over it.

An image goes to the chip as its raw pixels, one byte each, patch by
patch (:func:`pixel_bytes`); the chip answers with the class, the int32
logits and its cycle count (:func:`decode_answer`). :class:`CoreSerial`
runs images on a board built with ``make bitstream BOARD=... MODEL=...``
over a serial port; :class:`host.core_sim.CoreSim` runs the same design
simulated.
"""

from __future__ import annotations

import time

import numpy as np

from host.protocol import LinkError
from host.serial_backend import Port, open_port
from hw.frames import whole_model_answer_bytes, whole_model_bytes
from model import intops
from model.deploy import patchify
from model.intvit import IntegerProgram, check_pixels


def pixel_bytes(prog: IntegerProgram, raw: np.ndarray) -> list[bytes]:
    """Each raw image (B, C, H, W) as the chip takes it: its pixels patch by patch, a byte each."""
    raw = check_pixels(prog, raw)
    if raw.max(initial=0) > 255:
        raise ValueError(f"the whole-model link carries pixels of 8 bits; these reach {raw.max()}")
    patch = prog.model.architecture.patch_size
    return [bytes(int(v) for v in patchify(image, patch).ravel()) for image in raw]


def decode_answer(data: bytes, classes: int) -> tuple[int, np.ndarray, int]:
    """``(class, logits, cycles)`` of an answer; raises :class:`LinkError` when it is short or its class is not
    its logits' argmax (a corrupted answer)."""
    if len(data) != whole_model_answer_bytes(classes):
        raise LinkError(f"an answer is {whole_model_answer_bytes(classes)} bytes, got {len(data)}")
    words = [int.from_bytes(data[1 + 4 * k:5 + 4 * k], "little", signed=True) for k in range(classes)]
    logits = np.array(words, np.int64)
    cycles = int.from_bytes(data[1 + 4 * classes:], "little")
    if data[0] != int(intops.argmax(logits[None])[0]):
        raise LinkError(f"the answer's class {data[0]} is not its logits' argmax: a corrupted answer")
    return data[0], logits, cycles


class WholeModelRuntime:
    """What the whole-model runtimes share (:class:`CoreSerial`, :class:`host.core_sim.CoreSim`): a model's
    integer program, run whole on a chip by :meth:`run`, and what :func:`host.cli.infer` reports of it."""

    def __init__(self, prog: IntegerProgram) -> None:
        self.prog = prog
        #: no layer runs on the host (the layer-by-layer backends list theirs here)
        self.host_layers: dict[str, str] = {}
        #: the program's stages run (None where the runtime cannot know them: a board), and how many of them
        #: ran in float: none
        self.steps: int | None = None
        self.float_steps = 0
        self._cycles: list[int] = []

    def run(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(classes (B,), logits (B, classes))`` of raw pixel images."""
        raise NotImplementedError

    def predict(self, raw: np.ndarray) -> np.ndarray:
        return self.run(raw)[0]

    def cycles(self) -> int:
        """The chip's cycles, start to idle, summed over every image run."""
        return sum(self._cycles)

    def bytes_per_image(self) -> tuple[int, int]:
        """What crosses the whole-model link per image, in and out (:func:`hw.frames.whole_model_bytes`)."""
        return whole_model_bytes(self.prog.model.architecture)


class CoreSerial(WholeModelRuntime):
    """The whole model on a board at ``port`` (``baud``, 8N1): :meth:`run` takes raw pixel images.

    ``port_object`` (an open port, e.g. a test's stand-in) replaces opening
    ``port``. An answer that does not come within ``timeout_s`` raises
    :class:`LinkError` naming the port.
    """

    def __init__(self, prog: IntegerProgram, port: str | None, baud: int, timeout_s: float = 2.0,
                 port_object: Port | None = None) -> None:
        if port_object is None and not port:
            raise ValueError("the serial backend needs --port (e.g. /dev/ttyUSB0)")
        super().__init__(prog)
        self.name, self.timeout_s = port or "port", timeout_s
        self.port = port_object if port_object is not None else open_port(port, baud)

    def _answer(self, size: int) -> bytes:
        data, deadline = b"", time.monotonic() + self.timeout_s
        while len(data) < size and time.monotonic() < deadline:
            self.port.timeout = max(0.0, deadline - time.monotonic())
            data += self.port.read(size - len(data))
        if len(data) < size:
            raise LinkError(f"{self.name}: {len(data)} of {size} answer bytes in {self.timeout_s:g} s: is the "
                            "whole-model bitstream (make bitstream BOARD=... MODEL=...) loaded? (--layers for the "
                            "layer accelerator's)")
        return data

    def run(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(classes (B,), logits (B, classes))`` of raw pixel images, from the board."""
        classes = self.prog.model.architecture.num_classes
        out, logits = [], []
        for image in pixel_bytes(self.prog, raw):
            self.port.write(image)
            klass, values, cycles = decode_answer(self._answer(whole_model_answer_bytes(classes)), classes)
            out.append(klass)
            logits.append(values)
            self._cycles.append(cycles)
        return np.array(out), np.array(logits, np.int64).reshape(len(out), classes)

