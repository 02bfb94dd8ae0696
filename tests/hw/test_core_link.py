# amaranth: UnusedElaboratable=no
"""hw.core_link: an image's pixel bytes over a serial line into the whole-model core, its class and logits back."""

import numpy as np
from amaranth.hdl import Module
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.core_link import CoreLink
from hw.frames import whole_model_answer_bytes
from hw.core_program import core_config, model_image
from hw.uart import UARTReceiver, UARTTransmitter
from model import intops, intvit
from model.deploy import patchify
from model.modelfile import Architecture
from model.random_model import random_integer_model

#: A model small enough to run whole, over a UART, in the Amaranth simulator in seconds.
SMALL = Architecture(image_size=4, in_channels=1, patch_size=2, dim=16, depth=1, heads=2, mlp_hidden=32, num_classes=10)
DIVISOR = 4


def test_pixels_in_over_the_line_the_class_and_logits_back_twice():
    """Two images back to back (the second after the first's answer), and a stray byte before them that the
    idle timeout drops: each answer is the class, then every logit as four bytes, least significant first,
    then the cycles the core took (the same program for both images: the same count)."""
    prog = intvit.program(random_integer_model(SMALL, seed=2))
    config = core_config(DEFAULT, prog)
    raw = np.random.default_rng(2).integers(0, prog.params["pixel_max"] + 1, (2, 1, 4, 4))
    want = intvit.forward(prog, raw, intvit.ReferenceEngine(prog))
    link = CoreLink(config, model_image(config, prog), DIVISOR, 16, "reciprocal")
    m = Module()
    m.submodules.link = link
    m.submodules.host_tx = host_tx = UARTTransmitter(DIVISOR)
    m.submodules.host_rx = host_rx = UARTReceiver(DIVISOR)
    m.d.comb += [link.rx.eq(host_tx.tx), host_rx.rx.eq(link.tx)]
    answers = []

    async def send(ctx, byte):
        ctx.set(host_tx.data.valid, 1)
        ctx.set(host_tx.data.payload, byte)
        await ctx.tick().until(host_tx.data.ready)
        ctx.set(host_tx.data.valid, 0)

    async def bench(ctx):
        await send(ctx, 0x55)  # a stray byte, then silence longer than the idle timeout
        await ctx.tick().repeat(40 * DIVISOR)
        for image in raw:
            for pixel in patchify(image, SMALL.patch_size).ravel():
                await send(ctx, int(pixel))
            got = []
            while len(got) < whole_model_answer_bytes(SMALL.num_classes):
                await ctx.tick()
                if ctx.get(host_rx.data.valid):
                    got.append(ctx.get(host_rx.data.payload))
            answers.append(got)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run_until(2e-1)
    assert len(answers) == 2
    counts = []
    for got, logits in zip(answers, want):
        words = [int.from_bytes(bytes(got[1 + 4 * k:5 + 4 * k]), "little", signed=True)
                 for k in range(SMALL.num_classes + 1)]
        assert words[:-1] == [int(v) for v in logits] and got[0] == int(intops.argmax(logits[None])[0])
        counts.append(words[-1])
    assert counts[0] == counts[1] > 1000
