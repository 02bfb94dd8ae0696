# amaranth: UnusedElaboratable=no
import numpy as np
import pytest

from hw.cycles import lane_latency
from hw.lanes import LaneArray
from model import golden


@pytest.mark.parametrize("word_bits,lanes,stage_levels,count_c", [
    (8, 3, 1, False), (16, 2, 2, True), (16, 2, 2, False), (32, 1, 3, True), (64, 2, 2, True), (64, 1, 2, False),
])
def test_primitive_per_lane(run_sim, word_bits, lanes, stage_levels, count_c):
    """Each lane gives the contract's P (C in cmode), or D = C - 2P when it counts C, `latency` cycles later."""
    rng = np.random.default_rng(word_bits)
    dut = LaneArray(word_bits, lanes, 8, stage_levels, count_c)
    cycles = 40
    top = (1 << word_bits) - 1
    words = rng.integers(0, top, size=(cycles, 1 + lanes, 2), dtype=np.uint64, endpoint=True)
    cmode = rng.integers(0, 2, cycles)
    valid = rng.integers(0, 2, cycles)
    seen = []

    async def bench(ctx):
        for c in range(cycles + dut.latency):
            if c < cycles:
                ctx.set(dut.i.valid, int(valid[c]))
                ctx.set(dut.i.payload.cmode, int(cmode[c]))
                ctx.set(dut.i.payload.tag, c)
                ctx.set(dut.i.payload.x.sign, int(words[c, 0, 0]))
                ctx.set(dut.i.payload.x.mask, int(words[c, 0, 1]))
                for lane in range(lanes):
                    ctx.set(dut.i.payload.y[lane].sign, int(words[c, 1 + lane, 0]))
                    ctx.set(dut.i.payload.y[lane].mask, int(words[c, 1 + lane, 1]))
            else:
                ctx.set(dut.i.valid, 0)
            _, _, v, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if v:
                seen.append((c, payload.tag, [payload.value[lane] for lane in range(lanes)]))

    run_sim(dut, bench)
    expect = []
    for c in np.flatnonzero(valid):
        x_sign, x_mask = words[c, 0]
        counts = []
        for lane in range(lanes):
            y_sign, y_mask = words[c, 1 + lane]
            m = np.array([x_mask & y_mask], dtype=np.uint64)
            zero = np.zeros(1, np.uint64)
            p = int(golden.primitive(m, x_sign, y_sign))
            c_count = int(golden.primitive(m, zero, ~zero))
            if count_c:
                counts.append(int(golden.correct(p, c_count)))
            else:
                counts.append(c_count if cmode[c] else p)
        expect.append((c + dut.latency, c, counts))
    assert seen == expect


def test_latency_grows_with_tree_depth_over_stage_levels():
    assert lane_latency(8, 3) == 2
    assert lane_latency(64, 2) == 4
    assert lane_latency(64, 1) == 7


def test_rejects_bad_parameters():
    with pytest.raises(ValueError, match="word_bits"):
        LaneArray(12, 2, 1)
    with pytest.raises(TypeError, match="lanes"):
        LaneArray(8, 2.0, 1)
    with pytest.raises(ValueError, match="stage_levels"):
        LaneArray(8, 2, 1, 0)
    with pytest.raises(TypeError, match="count_c"):
        LaneArray(8, 2, 1, 2, 1)
