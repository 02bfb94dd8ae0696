"""The on-chip sequencer: a program of steps that sets a design's constants and starts its stages.

The whole-model design's control (issue 14): instead of the host's
commands, a program memory of steps, each one word (:func:`step_layout`),
run from step 0 when ``start`` is pulsed:

* ``SET field value``: register ``field`` of the design's constants (a flat
  :class:`~amaranth.lib.data.StructLayout`: run arguments, table bases, a
  LayerNorm's eps, a requantizer's multiplier, ...) takes ``value``;
* ``GO stage``: pulse stage ``stage``'s ``go`` and wait until its ``busy``
  falls (a stage's busy is high from the cycle after its go until it is
  done; the design decides what a stage is and which route it takes);
* ``END``: stop (``busy`` falls).

The registers hold between steps, as the units expect of a layer's
constants: a program sets what changes and starts the next stage.
:func:`set_steps`, :func:`go_step` and :data:`END_STEP` write the steps.
"""

from __future__ import annotations

import enum

from amaranth.hdl import Module, Shape, Signal
from amaranth.lib import data, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int, ceil_log2


class StepOp(enum.IntEnum):
    END = 0
    SET = 1
    GO = 2


def _fields(registers: data.StructLayout) -> list[tuple[str, int]]:
    return [(name, field.width) for name, field in registers]


def step_layout(registers: data.StructLayout, stages: int) -> data.StructLayout:
    """One step: its op, a field (SET: the register's index in ``registers``; GO: the stage) and SET's value
    (as wide as the widest register)."""
    fields = _fields(registers)
    return data.StructLayout({"op": 2, "field": max(1, ceil_log2(max(len(fields), stages))),
                              "value": max(width for _, width in fields)})


def set_steps(registers: data.StructLayout, **values: int) -> list[dict]:
    """SET steps giving each named register its value (signed values as their two's complement bits);
    raises ValueError on an unknown register or a value that does not fit it."""
    index = {name: k for k, (name, _) in enumerate(_fields(registers))}
    steps = []
    for name, value in values.items():
        if name not in index:
            raise ValueError(f"no register {name!r}; the registers are {', '.join(index)}")
        shape = Shape.cast(registers[name].shape)
        low, high = (-(1 << (shape.width - 1)), (1 << (shape.width - 1)) - 1) if shape.signed else (0, (1 << shape.width) - 1)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"register {name}: {value!r} does not fit {shape.width} bits"
                             f"{' signed' if shape.signed else ''} ({low}..{high})")
        steps.append({"op": StepOp.SET, "field": index[name], "value": value & ((1 << shape.width) - 1)})
    return steps


def go_step(stage: int) -> dict:
    """The step that starts ``stage`` and waits until it is done."""
    return {"op": StepOp.GO, "field": int(stage), "value": 0}


#: The step that ends a program.
END_STEP = {"op": StepOp.END, "field": 0, "value": 0}


class StepSequencer(wiring.Component):
    """Runs the step program in ``program`` from step 0 on ``start``; ``busy`` until its END.

    ``regs`` are the registers SET writes (``registers``, zero after reset);
    ``go[k]`` is stage ``k``'s one-cycle start, ``done`` waits on
    ``stage_busy[k]``. Three cycles of its own a step (fetch, decode, and
    the step itself; a GO two more).
    """

    def __init__(self, registers: data.StructLayout, stages: int, program_addr_bits: int = 8) -> None:
        if not isinstance(registers, data.StructLayout) or not _fields(registers):
            raise ValueError(f"registers must be a non-empty StructLayout, got {registers!r}")
        self.registers = registers
        self.stages = _check_int(stages, "stages", 1, 64)
        super().__init__({
            "start": In(1), "busy": Out(1),
            "program": In(ReadPort.Signature(addr_width=_check_int(program_addr_bits, "program_addr_bits", 1, 16),
                                             shape=step_layout(registers, stages))),
            "regs": Out(registers),
            "go": Out(stages), "stage_busy": In(stages),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        pc = Signal.like(self.program.addr, reset_less=True)
        step = Signal.like(self.program.data, reset_less=True)
        m.d.comb += self.program.addr.eq(pc)
        flat = self.regs.as_value()
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
                    with m.Case(StepOp.SET):
                        m.next = "set"
                    with m.Case(StepOp.GO):
                        m.next = "go"
                    with m.Default():
                        m.next = "idle"
            with m.State("set"):
                m.d.comb += self.busy.eq(1)
                with m.Switch(step.field):
                    for k, (name, field) in enumerate(self.registers):
                        with m.Case(k):
                            m.d.sync += flat[field.offset:field.offset + field.width].eq(step.value[:field.width])
                m.next = "fetch"
            with m.State("go"):
                m.d.comb += [self.busy.eq(1), self.go.eq(1 << step.field)]
                m.next = "started"
            with m.State("started"):  # the stage's busy is up from the cycle after its go
                m.d.comb += self.busy.eq(1)
                m.next = "wait"
            with m.State("wait"):
                m.d.comb += self.busy.eq(1)
                with m.If(~self.stage_busy.bit_select(step.field, 1)):
                    m.next = "fetch"
        return m
