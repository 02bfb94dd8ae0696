"""host.core_link: the host's end of the whole-model link, against a stand-in board that answers as the chip."""

import numpy as np
import pytest

from host.cli import infer
from host.core_link import CoreSerial, decode_answer, pixel_bytes
from host.protocol import LinkError
from hw.frames import whole_model_answer_bytes
from model import intops, intvit
from model.deploy import patchify
from model.random_model import TINY


class Board:
    """A port whose far end computes each image's answer with the integer program, as the chip does (cycles 1234)."""

    def __init__(self, prog, corrupt=False, silent=False):
        self.prog, self.corrupt, self.silent = prog, corrupt, silent
        self.pending, self.timeout = b"", None
        self.images = []

    def write(self, data):
        arch = self.prog.model.architecture
        image = np.frombuffer(data, np.uint8).astype(np.int64).reshape(arch.num_patches, -1)
        g = arch.image_size // arch.patch_size
        raw = image.reshape(g, g, 1, arch.patch_size, arch.patch_size).transpose(2, 0, 3, 1, 4).reshape(1, 1, 8, 8)
        self.images.append(raw)
        logits = intvit.forward(self.prog, raw, intvit.ReferenceEngine(self.prog))[0]
        klass = int(intops.argmax(logits[None])[0]) ^ int(self.corrupt)
        answer = bytes([klass]) + b"".join(int(v).to_bytes(4, "little", signed=True) for v in logits)
        self.pending += b"" if self.silent else answer + (1234).to_bytes(4, "little")

    def read(self, size=1):
        data, self.pending = self.pending[:size], self.pending[size:]
        return data


def test_pixels_go_patch_by_patch_and_answers_decode(tiny):
    model, raw = tiny
    prog = intvit.program(model)
    assert pixel_bytes(prog, raw[:1])[0] == bytes(int(v) for v in patchify(raw[0], TINY.patch_size).ravel())
    board = Board(prog)
    serial = CoreSerial(prog, None, 3_000_000, port_object=board)
    classes, logits = serial.run(raw)
    want = intvit.forward(prog, raw, intvit.ReferenceEngine(prog))
    assert np.array_equal(logits, want) and np.array_equal(classes, intops.argmax(want))
    assert all(np.array_equal(a, b[None]) for a, b in zip(board.images, raw))  # the board saw the images
    assert serial.cycles() == 3 * 1234 and serial.bytes_per_image() == (64, whole_model_answer_bytes(10))


def test_a_corrupted_or_missing_answer_is_an_error(tiny):
    model, raw = tiny
    prog = intvit.program(model)
    with pytest.raises(LinkError, match="not its logits' argmax"):
        CoreSerial(prog, None, 3_000_000, port_object=Board(prog, corrupt=True)).run(raw[:1])
    with pytest.raises(LinkError, match="0 of 45 answer bytes in 0.05 s.*MODEL="):
        CoreSerial(prog, "/dev/board", 3_000_000, 0.05, port_object=Board(prog, silent=True)).run(raw[:1])
    with pytest.raises(LinkError, match="an answer is 45 bytes, got 3"):
        decode_answer(b"abc", 10)
    with pytest.raises(ValueError, match="needs --port"):
        CoreSerial(prog, None, 3_000_000)


def test_infer_on_the_serial_backend_without_a_board_names_the_port(tiny):
    model, raw = tiny
    with pytest.raises(OSError, match="cannot open serial port '/dev/gsbflow-none'"):
        infer(model, raw.astype(np.float32), None, "serial", progress=False, port="/dev/gsbflow-none")
