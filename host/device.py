"""The DeviceBackend: the Backend operations as accelerator commands over the framed protocol.

It is the host side of every real or simulated board (:mod:`host.sim_backend`,
:mod:`host.serial_backend`): a :class:`~host.protocol.Transport` carries the
commands of :mod:`hw.program` to the bridge (``hw/bridge.py``).

* **Checks.**  ``load`` and ``run`` check their arguments as the emulator
  does (:func:`model.golden.check_groups`, :func:`model.golden.check_layer`,
  on the operands as given), before any frame: both refuse the same inputs
  with the same error.
* **Slots.**  ``load`` only keeps the operands (repacked to the
  configuration's ``word_bits``).  A slot goes to the device when a run
  needs it: as ``x`` into the x buffer when another slot (or an older
  version) is there, as ``y`` into its own region of the y buffer when it
  was (re)loaded since its last upload.  So resident weights go up once,
  activations with every call.  Regions are allocated by a bump allocator:
  a slot reloaded with the same number of bank rows keeps its region.  When
  a slot does not fit the rest of the y buffer, every region is dropped
  (:attr:`y_flushes`) and allocation starts again from row 0: a model whose
  weights do not all fit runs, re-uploading them as they are used.
* **Frames.**  Every frame's payload is the answer count, then whole
  commands; a LOAD longer than the bridge's buffer is split into several.
  A read (READ or READ_BITS, then READ_CYCLES) has a frame of its own, since
  the bridge re-executes only a retried frame that starts with a read.
* **Device resets.**  A reset of the device keeps the buffers' contents but
  stops a RUN and clears the cycle counter.  Every read therefore also
  reads the counter, which must have grown by exactly the run's
  ``items + latency`` cycles; if not, the run is repeated (``run_retries``).
  :meth:`cycles` is the sum of those checked per-run counts.
* **Tall x operands.**  When the x rows' entries overflow the x buffer, or
  their results the result buffer, a layer runs in ranges of x rows, each
  uploaded in turn (the y operand stays resident); within a range the y
  rows are split into runs that fit the result buffer.
* **Layers the configuration cannot hold** (for example an int8 x int8
  patch embedding whose accumulator needs more bits) are computed on the
  host by the numeric contract when ``host_fallback`` is set, and listed in
  :attr:`host_layers`; otherwise they raise :class:`hw.program.DoesNotFit`.
  Only that error falls back: any other error of the compiler propagates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np

from host.backend import Backend, Thresholds, threshold_arrays
from host.protocol import CMD_HEADER, CRC_BYTES, RSP_HEADER, LinkError, Transport
from hw.config import AccelConfig
from hw.isa import DESC_WORDS, Op, entry_words, header
from hw.program import (
    DoesNotFit,
    LayerImage,
    compile_chunks,
    decode_result,
    read_words,
    repack,
    response_length,
    run_words,
    stream_words,
    take_rows,
    y_layout,
)
from model import golden
from model.golden import Operand

#: Words of a command's header and count before its data.
_LOAD_HEAD = 2


@dataclass
class _Slot:
    given: tuple[Operand, ...]  # as loaded, for the checks the emulator makes
    groups: tuple[Operand, ...]  # repacked to the configuration's word_bits
    version: int


class DeviceBackend(Backend):
    """A Backend that drives an accelerator through ``transport``.

    ``buffer_words`` is the bridge's frame buffer (answer count included).
    Construction resets the device (a RESET frame), so a missing device is
    reported at once by the transport's :class:`~host.protocol.LinkError`.
    ``clock_hz`` is the device's clock: the frames of a run (the RUN's, which
    the bridge may answer only once the engine takes the next command, and
    the READ after it, which waits for the run) get the transport's read
    timeout plus the run's cycles at that clock.
    """

    def __init__(self, transport: Transport, config: AccelConfig, buffer_words: int = 256,
                 run_retries: int = 3, host_fallback: bool = True, clock_hz: float = 40e6):
        if clock_hz <= 0:
            raise ValueError(f"clock_hz must be > 0, got {clock_hz}")
        self.clock_hz = clock_hz
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        if buffer_words < _LOAD_HEAD + 1 + config.lanes * entry_words(config):
            raise ValueError(f"buffer_words must hold one LOAD_Y bank row, got {buffer_words}")
        self.transport, self.config, self.buffer_words = transport, config, buffer_words
        self.run_retries, self.host_fallback = run_retries, host_fallback
        #: bytes of the frames sent and received (without re-sends)
        self.bytes_sent = self.bytes_received = 0
        #: runs repeated because the device was reset during them
        self.reruns = 0
        #: read frames answered with the wrong number of words, and asked again
        self.short_reads = 0
        #: times the y buffer was full and every resident slot was dropped
        self.y_flushes = 0
        #: layer (x slot) -> why it was computed on the host
        self.host_layers: dict[str, str] = {}
        self._slots: dict[str, _Slot] = {}
        self._version = 0
        self.reset()

    # ------------------------------------------------------------ interface

    def load(self, slot: str, groups: Sequence[Operand]) -> None:
        given = golden.check_groups(groups, f"slot {slot!r}")
        self._version += 1
        self._slots[slot] = _Slot(given, tuple(repack(g, self.config.word_bits) for g in given), self._version)

    def run(self, x_slot: str, y_slot: str, coefs: np.ndarray, thresholds: Thresholds | None = None) -> None:
        x, y = self._slot(x_slot), self._slot(y_slot)
        coefs, thr = golden.check_layer(x.given, y.given, coefs, threshold_arrays(thresholds))
        rows, firsts = self._layout(y_slot, y)
        base = None
        try:
            base = self._region(y_slot, len(rows))
            plans = [(start, compile_chunks(self.config, [take_rows(g, start, stop) for g in x.groups], y.groups,
                                            coefs, thr, [base + f for f in firsts]))
                     for start, stop in self._x_ranges(x.groups)]
        except DoesNotFit as exc:
            if not self.host_fallback:
                raise
            if base is not None:
                self._release(y_slot, base, len(rows))
            self.host_layers.setdefault(x_slot.removesuffix(".x"), str(exc))
            result = golden.layer_output(x.groups, y.groups, coefs)
            self._result = result if thr is None else golden.apply_threshold(result, *thr)
            return
        c, setup = self.config, []
        if self._uploaded.get(y_slot) != y.version:
            setup += self._load(Op.LOAD_Y, base, c.lanes * entry_words(c), stream_words(c, (e for r in rows for e in r)))
        parts = []
        for start, chunks in plans:
            if self._x != (x_slot, x.version, start):
                setup += self._load(Op.LOAD_X, 0, entry_words(c), stream_words(c, chunks[0][1].x_entries))
            columns = [self._run_chunk(image, setup if i == 0 else []) for i, (_, image) in enumerate(chunks)]
            self._uploaded[y_slot], self._x, setup = y.version, (x_slot, x.version, start), []
            parts.append(np.concatenate(columns, axis=1))
        self._result = np.concatenate(parts, axis=0)

    def _x_ranges(self, groups_x: Sequence[Operand]) -> list[tuple[int, int]]:
        """The x rows of each run: as many as the x buffer (their entries) and the result buffer (one y block) hold.

        One range of every row when even one row does not fit: compiling it
        then says why.
        """
        c, rows = self.config, groups_x[0].rows
        per_row = sum(len(g.planes) for g in groups_x) * golden.words_for(groups_x[0].n, c.word_bits)
        step = min(c.x_depth // per_row, c.result_depth) or rows
        return [(start, min(start + step, rows)) for start in range(0, rows, step)]

    def reset(self) -> None:
        self._send([[header(Op.RESET)]])
        self._slots.clear()
        self._regions: dict[str, tuple[int, int]] = {}
        self._uploaded: dict[str, int] = {}
        self._layouts: dict[str, tuple[int, list[tuple[int, ...]], list[int]]] = {}
        self._next_row = 0
        self._x: tuple[str, int, int] | None = None  # the x buffer's slot, version and first row
        self._result: np.ndarray | None = None
        self._cycles = self._counter = 0

    def device_cycles(self) -> int:
        """The device's cycle counter itself (READ_CYCLES)."""
        lo, hi = self._read([header(Op.READ_CYCLES)], 2)
        return lo | hi << 32

    # ------------------------------------------------------------ slots

    def _slot(self, slot: str) -> _Slot:
        if slot not in self._slots:
            raise KeyError(f"slot {slot!r} was never loaded")
        return self._slots[slot]

    def _layout(self, name: str, slot: _Slot) -> tuple[list[tuple[int, ...]], list[int]]:
        """The y bank rows of a slot and each plane's first row (cached per version)."""
        cached = self._layouts.get(name)
        if cached is None or cached[0] != slot.version:
            cached = (slot.version, *y_layout(self.config, slot.groups))
            self._layouts[name] = cached
        return cached[1], cached[2]

    def _region(self, slot: str, rows: int) -> int:
        """The first y bank row of the slot's region, allocated if it has none of this size."""
        region = self._regions.get(slot)
        if region is not None and region[1] == rows:
            return region[0]
        if rows > self.config.y_depth:
            raise DoesNotFit(f"slot {slot!r} needs {rows} bank rows, more than the y buffer's y_depth={self.config.y_depth}")
        if self._next_row + rows > self.config.y_depth:
            # full of other slots: forget them all; each goes up again when next used
            self.y_flushes += 1
            self._regions.clear()
            self._uploaded.clear()
            self._next_row = 0
        self._regions[slot] = (self._next_row, rows)
        self._uploaded.pop(slot, None)
        self._next_row += rows
        return self._regions[slot][0]

    def _release(self, slot: str, base: int, rows: int) -> None:
        """Undo the allocation of the slot's region if it is the last one and was never uploaded."""
        if base + rows == self._next_row and slot not in self._uploaded:
            del self._regions[slot]
            self._next_row = base

    # ------------------------------------------------------------ commands

    def _load(self, op: Op, first: int, item: int, data: list[int]) -> list[list[int]]:
        """A LOAD of ``data`` (``item`` words per item) from item ``first``, split to fit frames."""
        per_frame = (self.buffer_words - 1 - _LOAD_HEAD) // item
        count = len(data) // item
        return [[header(op, first + start), min(per_frame, count - start)] + data[start * item:(start + per_frame) * item]
                for start in range(0, count, per_frame)]

    def _frames(self, commands: list[list[int]]) -> Iterator[list[int]]:
        """Commands packed greedily into frame payloads (answer count 0 first)."""
        frame: list[int] = [0]
        for command in commands:
            if len(frame) + len(command) > self.buffer_words:
                yield frame
                frame = [0]
            frame += command
        if len(frame) > 1:
            yield frame

    def _request(self, words: list[int], busy_cycles: int = 0) -> bytes:
        payload = b"".join(w.to_bytes(4, "little") for w in words)
        answer = self.transport.request(payload, self.transport.timeout + busy_cycles / self.clock_hz)
        self.bytes_sent += CMD_HEADER + len(payload) + CRC_BYTES
        self.bytes_received += RSP_HEADER + len(answer) + CRC_BYTES
        return answer

    def _send(self, commands: list[list[int]], busy_cycles: int = 0) -> None:
        """The commands in frames; ``busy_cycles``: the engine's cycles for a RUN among them."""
        for frame in self._frames(commands):
            self._request(frame, busy_cycles)

    def _read(self, command: list[int], answers: int, busy_cycles: int = 0) -> list[int]:
        """A read frame; asked again (reads have no side effects) while the answer has the wrong length."""
        for _ in range(self.transport.retries + 1):
            answer = self._request([answers] + command, busy_cycles)
            if len(answer) == 4 * answers:
                return [int.from_bytes(answer[i:i + 4], "little") for i in range(0, len(answer), 4)]
            self.short_reads += 1
        raise LinkError(f"the device answered {len(answer)} bytes to a read of {answers} words, "
                        f"{self.transport.retries + 1} times")

    def _run_chunk(self, image: LayerImage, setup: list[list[int]]) -> np.ndarray:
        """Program, run and read one chunk; repeat it when the device was reset meanwhile."""
        c = self.config
        program = self._load(Op.LOAD_PROG, 0, DESC_WORDS, [w for d in image.descriptors for w in d])
        if image.thresh_rows is not None:
            program += self._load(Op.LOAD_THRESH, 0, c.lanes, [w for r in image.thresh_rows for w in r])
        answers = response_length(c, image)
        expected = image.busy_cycles(c)
        for _ in range(self.run_retries + 1):
            self._send(setup + program + [run_words(c, image)], expected)
            *words, lo, hi = self._read(read_words(image) + [header(Op.READ_CYCLES)], answers + 2, expected)
            counter = lo | hi << 32
            if counter == self._counter + expected:
                self._counter = counter
                self._cycles += expected
                return decode_result(c, image, words)
            # a reset: the counter restarted and the run may have stopped; buffers kept their contents
            self._counter = counter
            self.reruns += 1
        raise LinkError(f"the device was reset during {self.run_retries + 1} tries of a run")
