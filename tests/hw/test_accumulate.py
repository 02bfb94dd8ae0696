# amaranth: UnusedElaboratable=no
import numpy as np
import pytest

from hw.accumulate import PassAccumulator, WordAccumulator


def _stream(rng, cycles, lanes, lo, hi, p_groups):
    """Random valid gaps, random first/last framing, values in lo..hi."""
    items = []
    for _ in range(p_groups):
        length = int(rng.integers(1, 4))
        for k in range(length):
            while rng.random() < 0.3:
                items.append(None)
            items.append((k == 0, k == length - 1, rng.integers(lo, hi + 1, lanes)))
    return items[:cycles]


def test_word_accumulator_sums_each_pass(run_sim):
    rng = np.random.default_rng(1)
    lanes = 3
    dut = WordAccumulator(lanes, 6, 9, 8)
    items = _stream(rng, 200, lanes, -16, 16, 60)
    got = []

    async def bench(ctx):
        for c, item in enumerate(items + [None]):
            ctx.set(dut.i.valid, item is not None)
            if item is not None:
                first, last, counts = item
                ctx.set(dut.i.payload.first, first)
                ctx.set(dut.i.payload.last, last)
                ctx.set(dut.i.payload.tag, c & 0xFF)
                for lane in range(lanes):
                    ctx.set(dut.i.payload.value[lane], int(counts[lane]))
            _, _, v, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if v:
                got.append(([payload.p[lane] for lane in range(lanes)], payload.tag))

    run_sim(dut, bench)
    expect, total = [], None
    for c, item in enumerate(items):
        if item is None:
            continue
        first, last, counts = item
        total = counts.copy() if first else total + counts
        if last:
            expect.append((total.tolist(), c & 0xFF))
    assert got == expect and len(expect) > 20


@pytest.mark.parametrize("widths", [(6, 8, 2, 20), (13, 18, 4, 30)])
def test_pass_accumulator_superposes_shifted_products(run_sim, widths):
    """Small values, and full-width ones that wrap the accumulator (the hardware's sums are modulo 2**acc_bits)."""
    rng = np.random.default_rng(2)
    lanes = 2
    p_bits, coef_bits, shift_bits, acc_bits = widths
    dut = PassAccumulator(lanes, p_bits, coef_bits, shift_bits, acc_bits, 4)
    items = _stream(rng, 200, lanes, -(1 << (p_bits - 1)), (1 << (p_bits - 1)) - 1, 60)
    coefs = rng.integers(-(1 << (coef_bits - 1)), 1 << (coef_bits - 1), len(items))
    shifts = rng.integers(0, 1 << shift_bits, len(items))
    offset = -12345
    got = []

    async def bench(ctx):
        ctx.set(dut.offset, offset)
        for c, item in enumerate(items + [None] * dut.latency):
            ctx.set(dut.i.valid, item is not None)
            if item is not None:
                first, last, ps = item
                ctx.set(dut.i.payload.first, first)
                ctx.set(dut.i.payload.last, last)
                ctx.set(dut.i.payload.coef, int(coefs[c]))
                ctx.set(dut.i.payload.shift, int(shifts[c]))
                for lane in range(lanes):
                    ctx.set(dut.i.payload.p[lane], int(ps[lane]))
            _, _, v, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if v:
                got.append([payload.value[lane] for lane in range(lanes)])

    run_sim(dut, bench)
    expect, acc = [], None
    for c, item in enumerate(items):
        if item is None:
            continue
        first, last, ps = item
        base = [offset] * lanes if first else acc
        acc = [_wrap(b + (int(coefs[c]) * int(v) << int(shifts[c])), acc_bits) for b, v in zip(base, ps)]
        if last:
            expect.append(acc)
    assert got == expect and len(expect) > 20


def _wrap(value: int, bits: int) -> int:
    """``value`` as a ``bits``-bit two's complement number."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def test_rejects_bad_widths():
    with pytest.raises(ValueError, match="p_bits"):
        WordAccumulator(2, 5, 4, 1)
    with pytest.raises(TypeError, match="coef_bits"):
        PassAccumulator(2, 5, "8", 2, 20, 1)
