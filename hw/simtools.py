"""Amaranth-simulator helpers: drive and collect ``lib.stream`` interfaces.

Used by the unit tests (``tests/hw``); the cocotb testbenches in ``sim/`` do
the same against the generated Verilog.
"""

from __future__ import annotations

import random
from typing import Sequence

from amaranth.sim import Simulator

from hw.accelerator import Accelerator
from hw.config import AccelConfig


async def send(ctx: object, port: object, words: Sequence[int], rng: random.Random | None = None, stall: float = 0.0) -> None:
    """Send ``words`` on a stream, idling a cycle with probability ``stall``."""
    for word in words:
        while rng is not None and rng.random() < stall:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.valid, 1)
        ctx.set(port.payload, word)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def receive(ctx: object, port: object, count: int, rng: random.Random | None = None, stall: float = 0.0) -> list[int]:
    """Receive ``count`` words from a stream, refusing a cycle with probability ``stall``."""
    out = []
    while len(out) < count:
        ready = not (rng is not None and rng.random() < stall)
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if ready and valid:
            out.append(payload)
    ctx.set(port.ready, 0)
    return out


def run_commands(config: AccelConfig, words: Sequence[int], answers: int, *, seed: int | None = None,
                 stall: float = 0.0, timeout: int = 100_000) -> list[int]:
    """Run a command stream through an :class:`Accelerator` in the Amaranth simulator.

    Returns the ``answers`` response words; with a ``seed``, both streams
    stall at random with probability ``stall``.
    """
    dut = Accelerator(config)
    rng = random.Random(seed) if seed is not None else None
    result: list[int] = []

    async def driver(ctx: object) -> None:
        await send(ctx, dut.cmd, words, rng, stall)

    async def monitor(ctx: object) -> None:
        result.extend(await receive(ctx, dut.rsp, answers, rng, stall))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(driver, background=True)
    sim.add_testbench(monitor)
    sim.run_until(timeout * 1e-8)
    if len(result) != answers:
        raise TimeoutError(f"got {len(result)} of {answers} answer words in {timeout} cycles")
    return result
