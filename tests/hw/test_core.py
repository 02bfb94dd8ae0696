# amaranth: UnusedElaboratable=no
"""hw.core with hw.core_program: stages of a model's integer program on chip, ordered by the step program alone,
against model.intvit.forward's trace."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.core import ModelCore
from hw.core_program import mlp_image
from model import intvit
from model.random_model import TINY, random_integer_model

#: The default preset with a result buffer for fc1's 18 rows x 16 blocks.
CONFIG = replace(DEFAULT, result_depth=512)


def trace_of(seed: int) -> tuple[intvit.IntegerProgram, dict]:
    prog = intvit.program(random_integer_model(TINY, seed=seed))
    raw = np.random.default_rng(seed).integers(0, prog.params["pixel_max"] + 1, (1, 1, 8, 8))
    trace = intvit.Trace(keep=True)
    intvit.forward(prog, raw, intvit.ReferenceEngine(prog), trace)
    return prog, trace.values


def run_core(core: ModelCore, limit: int = 100_000) -> tuple[list[int], int]:
    """Start the core's program; returns R once it ends and the cycles it took."""
    out = []

    async def bench(ctx):
        ctx.set(core.start, 1)
        await ctx.tick()
        ctx.set(core.start, 0)
        for cycle in range(limit):
            await ctx.tick()
            if not ctx.get(core.busy):
                out.append(cycle)
                break
        else:
            raise TimeoutError(f"the program did not end in {limit} cycles")
        out[:0] = [ctx.get(core.residual.data[k]) for k in range(core.residual.depth)]

    sim = Simulator(core)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return out[:-1], out[-1]


@pytest.mark.parametrize("block", [0, 1])
def test_the_mlp_half_of_a_block_runs_on_chip(block):
    """norm2, fc1's bipolar input, fc1, the GELU fold into fc2's unipolar input, fc2 and the residual add, on
    the random integer program's block: R ends equal to the trace's, from the step program alone."""
    prog, values = trace_of(block + 3)
    pre = f"blocks.{block}"
    start, want = values[f"{pre}.attn.residual"][0], values[f"{pre}.mlp.residual"][0]
    assert not np.array_equal(start, want)
    core = ModelCore(CONFIG, mlp_image(CONFIG, prog, block, start), divider="reciprocal")
    got, cycles = run_core(core)
    assert got == [int(v) for v in want.ravel()]
