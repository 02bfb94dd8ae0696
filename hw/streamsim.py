"""Amaranth-simulator harness for one stream-in, stream-out unit (the integer units' tests).

:func:`run_stream` sends items on a component's input stream and collects
items from its output stream, each side stalling at random, under a cycle
limit, with the helpers of :mod:`hw.simtools`.  Used by ``tests/hw`` for
:mod:`hw.multithreshold`, :mod:`hw.requantize`, :mod:`hw.argmax` and
:mod:`hw.layernorm`.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from amaranth.sim import Simulator

from hw.simtools import receive, send


def run_stream(top: object, i: object, o: object, items: Sequence[object], answers: int, *, seed: int | None = None,
               stall: float = 0.0, setup: Callable | None = None, limit: int = 200_000) -> tuple[list[object], int]:
    """Send ``items`` on stream ``i`` of ``top``, return the first ``answers`` payloads of ``o`` and the cycles taken.

    ``setup(ctx)`` (async) runs first, e.g. to set a unit's configuration
    inputs.  Raises ``TimeoutError`` after ``limit`` cycles.
    """
    return run_batches(top, i, o, [(setup, items, answers)], seed=seed, stall=stall, limit=limit)


def run_batches(top: object, i: object, o: object, batches: Sequence[tuple[Callable | None, Sequence[object], int]], *,
                seed: int | None = None, stall: float = 0.0, limit: int = 200_000) -> tuple[list[object], int]:
    """:func:`run_stream` for several ``(setup, items, answers)`` batches, one after the other.

    Each batch's ``setup`` runs once every answer of the batches before it has
    come out (a unit's configuration changes between layers, never under
    way).  Returns every answer, in order, and the cycles taken.
    """
    rng = random.Random(seed) if seed is not None else None
    got: list[object] = []
    cycles = [0]
    total = sum(answers for _, _, answers in batches)

    async def driver(ctx: object) -> None:
        expected = 0
        for setup, items, answers in batches:
            while len(got) < expected:
                await ctx.tick()
            if setup is not None:
                await setup(ctx)
            await send(ctx, i, items, rng, stall)
            expected += answers

    async def monitor(ctx: object) -> None:
        for _, _, answers in batches:
            got.extend(await receive(ctx, o, answers, rng, stall))

    async def clock(ctx: object) -> None:
        for _ in range(limit):
            await ctx.tick()
            cycles[0] += 1
        raise TimeoutError(f"got {len(got)} of {total} answers in {limit} cycles")

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(clock, background=True)
    sim.add_testbench(monitor)
    sim.run()
    return got, cycles[0]
