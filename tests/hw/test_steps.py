# amaranth: UnusedElaboratable=no
"""hw.steps: SET writes the registers, GO starts a stage and waits for it, END stops (the whole-model core's runs
are in tests/hw/test_core.py)."""

import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.steps import END_STEP, StepOp, StepSequencer, go_step, set_steps, step_layout

REGISTERS = data.StructLayout({"rows": 9, "offset": signed(24), "eps": 40, "kind": 2})


def run_program(program: list[dict], stage_cycles: dict[int, int], cycles: int = 200) -> list[tuple]:
    """Run ``program``; stage k stays busy ``stage_cycles[k]`` cycles after its go. Returns each go's
    (cycle, stage, registers then) and the cycle busy fell."""
    m = Module()
    m.submodules.steps = steps = StepSequencer(REGISTERS, 3)
    m.submodules.program = memory = Memory(shape=step_layout(REGISTERS, 3), depth=256, init=program)
    wiring.connect(m, memory.read_port(), steps.program)
    events = []

    async def bench(ctx):
        ctx.set(steps.start, 1)
        await ctx.tick()
        ctx.set(steps.start, 0)
        until = {k: -1 for k in range(3)}
        for cycle in range(cycles):
            ctx.set(steps.stage_busy, sum(1 << k for k in range(3) if cycle <= until[k]))
            go = ctx.get(steps.go)
            for k in range(3):
                if go >> k & 1:
                    until[k] = cycle + stage_cycles[k]
                    events.append((cycle, k, {name: ctx.get(getattr(steps.regs, name)) for name, _ in REGISTERS}))
            if not ctx.get(steps.busy):
                events.append((cycle, "idle"))
                return
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return events


def test_set_writes_registers_and_go_waits_for_each_stage():
    program = (set_steps(REGISTERS, rows=18, offset=-5, eps=(1 << 40) - 1) + [go_step(2)]
               + set_steps(REGISTERS, offset=1 << 22, kind=3) + [go_step(0), go_step(1), END_STEP])
    events = run_program(program, {0: 10, 1: 3, 2: 20})
    (c2, s2, r2), (c0, s0, r0), (c1, s1, r1), (done, idle) = events
    assert (s2, s0, s1, idle) == (2, 0, 1, "idle")
    assert r2 == {"rows": 18, "offset": -5, "eps": (1 << 40) - 1, "kind": 0}
    assert r0 == r1 == {"rows": 18, "offset": 1 << 22, "kind": 3, "eps": (1 << 40) - 1}  # registers hold
    assert c0 > c2 + 20 and c1 > c0 + 10 and done > c1 + 3  # each step after the stage before is done


def test_a_stage_that_is_done_at_once_costs_a_few_cycles():
    events = run_program([go_step(1), go_step(1), END_STEP], {0: 0, 1: 0, 2: 0})
    (first, _, _), (second, _, _), (done, _) = events
    assert second - first <= 6 and done - second <= 6


def test_steps_are_checked_when_written():
    with pytest.raises(ValueError, match="no register 'row'"):
        set_steps(REGISTERS, row=1)
    with pytest.raises(ValueError, match="rows: 512 does not fit 9 bits"):
        set_steps(REGISTERS, rows=512)
    with pytest.raises(ValueError, match="offset: -8388609 does not fit 24 bits signed"):
        set_steps(REGISTERS, offset=-(1 << 23) - 1)
    assert set_steps(REGISTERS, offset=-1) == [{"op": StepOp.SET, "field": 1, "value": (1 << 24) - 1}]
    with pytest.raises(ValueError, match="registers must be a non-empty StructLayout"):
        StepSequencer(data.StructLayout({}), 2)
