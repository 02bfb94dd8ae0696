# amaranth: UnusedElaboratable=no
"""hw.core with hw.core_program: stages of a model's integer program on chip, ordered by the step program alone,
against model.intvit.forward's trace."""

from dataclasses import replace

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.core import ModelCore
from hw.core_program import blocks_image, model_image
from model import intvit
from model.deploy import patchify
from model.random_model import TINY, random_integer_model

#: The default preset with room for the TINY model's weights, qkv's 18 rows x 24 blocks of results and the heads'
#: 128 passes (int16 x int8).
CONFIG = replace(DEFAULT, x_depth=192, y_depth=1024, result_depth=512, prog_depth=256)


def trace_of(seed: int) -> tuple[intvit.IntegerProgram, dict]:
    """A random TINY program and the trace of its forward on a random image (the image under ``"raw"``)."""
    prog = intvit.program(random_integer_model(TINY, seed=seed))
    raw = np.random.default_rng(seed).integers(0, prog.params["pixel_max"] + 1, (1, 1, 8, 8))
    trace = intvit.Trace(keep=True)
    intvit.forward(prog, raw, intvit.ReferenceEngine(prog), trace)
    return prog, {**trace.values, "raw": raw}


def run_core(core: ModelCore, limit: int = 200_000, pixels: list[int] = (), outputs: dict | None = None
             ) -> tuple[list[int], int]:
    """Send ``pixels``, start the core's program; returns R once it ends and the cycles it took (and, into
    ``outputs``, the class and the logits)."""
    out = []

    async def bench(ctx):
        for pixel in pixels:
            ctx.set(core.pixels.valid, 1)
            ctx.set(core.pixels.payload, pixel)
            await ctx.tick()
        ctx.set(core.pixels.valid, 0)
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
        if outputs is not None:
            outputs["class"] = ctx.get(core.klass)
            outputs["logits"] = []
            for k in range(core.image.classes):
                ctx.set(core.logit_addr, k)
                await ctx.tick()
                outputs["logits"].append(ctx.get(core.logit))

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


def test_a_whole_image_runs_on_chip_pixels_in_class_and_logits_out():
    """The random TINY program from raw pixels (sent patch by patch) to the class: the tokens, the pixels'
    planes through the 8-bit patch embedding, both blocks, each head's LayerNorm as int16 planes through its
    8-bit product into the logits, the argmax. The class and every logit equal the trace's."""
    prog, values = trace_of(11)
    core = ModelCore(CONFIG, model_image(CONFIG, prog), divider="reciprocal")
    pixels = [int(v) for v in patchify(values["raw"][0], TINY.patch_size).ravel()]
    outputs = {}
    got, cycles = run_core(core, pixels=pixels, outputs=outputs)
    assert got == [int(v) for v in values["blocks.1.mlp.residual"][0].ravel()]
    assert outputs["logits"] == [int(v) for v in values["logits"][0]]
    assert outputs["class"] == int(np.argmax(values["logits"][0]))
