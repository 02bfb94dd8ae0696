"""A first on-chip sequencer: a program of steps that orders the stages of a layer.

The whole-model design's control (issue 14): instead of the host's
commands, a program memory of steps, each one word (:func:`step_layout`),
run from step 0 when ``start`` is pulsed:

* ``WAIT_WRITTEN count``: wait until the operand writer
  (:class:`hw.packer.EntryWriter`) has written ``count`` entries;
* ``RUN args``: start the engine with ``args`` (:func:`hw.engine.run_layout`)
  and wait until it is done;
* ``READ rows blocks channels``: start the result reader
  (:class:`hw.results.ResultReader`) and wait until it has read them all;
* ``END``: stop (``busy`` falls).

The routes between the stages are fixed by the design around it; the
program sets what each stage does and when. :func:`layer_steps` writes the
program of one linear layer from the host's layer image.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig
from hw.engine import run_layout
from hw.program import LayerImage

#: Width of a step's counts (entries, rows, channels).
COUNT_BITS = 16


class StepOp(enum.IntEnum):
    END = 0
    WAIT_WRITTEN = 1
    RUN = 2
    READ = 3


def step_layout(config: AccelConfig) -> data.StructLayout:
    """One step: its op, the engine's run arguments (RUN; READ takes its rows and blocks), a count
    (WAIT_WRITTEN's entries) and READ's output channels."""
    return data.StructLayout({"op": 2, "run": run_layout(config), "count": COUNT_BITS, "channels": COUNT_BITS})


def layer_steps(image: LayerImage, channels: int) -> list[dict]:
    """The steps of one linear layer whose x entries a writer fills: wait for them, run, read ``channels`` back."""
    run = {"rows": image.rows_x, "blocks": image.blocks, "words": image.words, "passes": image.passes,
           "offset": image.offset, "binary": int(image.binary)}
    zero = {key: 0 for key in run}
    return [
        {"op": StepOp.WAIT_WRITTEN, "run": zero, "count": len(image.x_entries), "channels": 0},
        {"op": StepOp.RUN, "run": run, "count": 0, "channels": 0},
        {"op": StepOp.READ, "run": run, "count": 0, "channels": channels},
        {"op": StepOp.END, "run": zero, "count": 0, "channels": 0},
    ]


class StepSequencer(wiring.Component):
    """Runs the step program in ``program`` from step 0 on ``start``; ``busy`` until its END."""

    def __init__(self, config: AccelConfig, program_addr_bits: int = 8) -> None:
        self.config = config
        c = config
        super().__init__({
            "start": In(1), "busy": Out(1),
            "program": In(ReadPort.Signature(addr_width=program_addr_bits, shape=step_layout(c))),
            "written": In(COUNT_BITS),
            "engine_start": Out(1), "engine_args": Out(run_layout(c)), "engine_busy": In(1),
            "reader_start": Out(1), "reader_rows": Out(c.addr_bits(c.result_depth) + 1),
            "reader_blocks": Out(c.addr_bits(c.result_depth) + 1), "reader_channels": Out(COUNT_BITS),
            "reader_busy": In(1),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        pc = Signal.like(self.program.addr, reset_less=True)
        step = Signal.like(self.program.data, reset_less=True)
        m.d.comb += self.program.addr.eq(pc)
        with m.FSM():
            with m.State("idle"):
                with m.If(self.start):
                    m.d.sync += pc.eq(0)
                    m.next = "fetch"
            with m.State("fetch"):  # the step at pc is on the port next cycle
                m.d.comb += self.busy.eq(1)
                m.next = "decode"
            with m.State("decode"):
                m.d.comb += self.busy.eq(1)
                word = self.program.data
                m.d.sync += [step.eq(word), pc.eq(pc + 1)]
                with m.Switch(word.op):
                    with m.Case(StepOp.END):
                        m.next = "idle"
                    with m.Case(StepOp.WAIT_WRITTEN):
                        m.next = "wait_written"
                    with m.Case(StepOp.RUN):
                        m.d.sync += self.engine_args.eq(word.run)
                        m.next = "run"
                    with m.Case(StepOp.READ):
                        m.d.sync += [self.reader_rows.eq(word.run.rows), self.reader_blocks.eq(word.run.blocks),
                                     self.reader_channels.eq(word.channels)]
                        m.next = "read"
            with m.State("wait_written"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.written >= step.count):
                    m.next = "fetch"
            with m.State("run"):
                m.d.comb += [self.busy.eq(1), self.engine_start.eq(1)]
                m.next = "running"
            with m.State("running"):  # the engine's busy rises the cycle after its start
                m.d.comb += self.busy.eq(1)
                m.next = "run_wait"
            with m.State("run_wait"):
                m.d.comb += self.busy.eq(1)
                with m.If(~self.engine_busy):
                    m.next = "fetch"
            with m.State("read"):
                m.d.comb += [self.busy.eq(1), self.reader_start.eq(1)]
                m.next = "read_wait"
            with m.State("read_wait"):  # the reader's busy rises with its start
                m.d.comb += self.busy.eq(1)
                with m.If(~self.reader_busy):
                    m.next = "fetch"
        return m
