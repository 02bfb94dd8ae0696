# amaranth: UnusedElaboratable=no
import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring

from hw.buffers import Buffer
from hw.isa import threshold_word
from hw.threshold import Threshold
from model import golden


def test_compare_matches_golden(run_sim):
    """``direction*Y >= threshold`` per lane with the block's thresholds from the buffer."""
    rng = np.random.default_rng(3)
    lanes, acc_bits, blocks = 3, 12, 4
    m = Module()
    m.submodules.dut = dut = Threshold(lanes, acc_bits, 2, 4)
    m.submodules.buf = buf = Buffer(32, lanes, blocks)
    wiring.connect(m, buf.read, dut.thresh)
    lim = 1 << (acc_bits - 1)
    thresholds = rng.integers(-lim, lim + 1, (blocks, lanes))
    directions = rng.choice([-1, 1], (blocks, lanes))
    values = rng.integers(-lim, lim, (60, lanes))
    values[:8] = thresholds[0] * directions[0]  # equality: the bit is 1
    values[8:16] = thresholds[0] * directions[0] - directions[0]  # one short of it: 0
    blks = rng.integers(0, blocks, 60)
    blks[:16] = 0
    got = []

    async def bench(ctx):
        for b in range(blocks):
            for lane in range(lanes):
                ctx.set(buf.write.addr, b)
                ctx.set(buf.write.en, 1 << lane)
                ctx.set(buf.write.data[lane], threshold_word(int(thresholds[b, lane]), int(directions[b, lane])))
                await ctx.tick()
        ctx.set(buf.write.en, 0)
        for binary in (1, 0):
            ctx.set(dut.binary, binary)
            for c in range(len(values) + dut.latency):
                ctx.set(dut.i.valid, c < len(values))
                if c < len(values):
                    ctx.set(dut.i.payload.blk, int(blks[c]))
                    for lane in range(lanes):
                        ctx.set(dut.i.payload.value[lane], int(values[c, lane]))
                _, _, v, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
                if v:
                    got.append([payload.value[lane] for lane in range(lanes)])

    run_sim(m, bench)
    bits = golden.apply_threshold(values, thresholds[blks], directions[blks])
    assert np.array_equal(np.array(got), np.concatenate([bits, values]))


def test_rejects_accumulator_too_wide_for_threshold_words():
    with pytest.raises(ValueError, match="acc_bits"):
        Threshold(2, 31, 2, 1)
