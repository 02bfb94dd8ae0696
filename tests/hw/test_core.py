# amaranth: UnusedElaboratable=no
"""hw.core with hw.core_program: stages of a model's integer program on chip, ordered by the step program alone,
against model.intvit.forward's trace."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.core import ModelCore
from hw.core_program import blocks_image
from model import intvit
from model.random_model import TINY, random_integer_model

#: The default preset with room for the TINY model's two blocks of weights and qkv's 18 rows x 24 blocks of results.
CONFIG = replace(DEFAULT, x_depth=192, y_depth=512, result_depth=512)


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
    core = ModelCore(CONFIG, blocks_image(CONFIG, prog, start, [(block, "mlp")]), divider="reciprocal")
    got, cycles = run_core(core)
    assert got == [int(v) for v in want.ravel()]


def test_the_attention_half_of_a_block_runs_on_chip():
    """norm1, qkv, K by head and the three Value groups into the y buffer, Q by head, per head Q K^T, the
    softmax levels and A V, proj over every head's result and the residual add: R ends as the trace's."""
    prog, values = trace_of(5)
    start, want = values["embed"][0], values["blocks.0.attn.residual"][0]
    core = ModelCore(CONFIG, blocks_image(CONFIG, prog, start, [(0, "attention")]), divider="reciprocal")
    got, cycles = run_core(core)
    assert got == [int(v) for v in want.ravel()]


def test_every_block_runs_on_chip_one_program():
    """Both blocks of the random TINY program, attention and MLP each, from the embedded tokens: one program,
    the weights of both blocks resident; R ends as the trace's residual after the last block."""
    prog, values = trace_of(7)
    start, want = values["embed"][0], values["blocks.1.mlp.residual"][0]
    core = ModelCore(CONFIG, blocks_image(CONFIG, prog, start), divider="reciprocal")
    got, cycles = run_core(core)
    assert got == [int(v) for v in want.ravel()]
