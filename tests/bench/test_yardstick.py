# amaranth: UnusedElaboratable=no
import numpy as np

from bench.yardstick import XorPopcountArray


def test_output_is_the_parity_of_every_lane_count(run_sim):
    """``so`` is the XOR of every bit of every lane's ``popcount(x ^ y[i])``, ``stages + 1`` cycles after the operands."""
    lanes, word_bits, stages = 3, 8, 2
    dut = XorPopcountArray(lanes, word_bits, stages)
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, 200)
    operands = 0  # the shift register, bit 0 the newest
    expected, seen = [], []

    def reduced(value: int) -> int:
        words = [(value >> (word_bits * i)) & ((1 << word_bits) - 1) for i in range(lanes + 1)]
        counts = [bin(words[0] ^ y).count("1") for y in words[1:]]
        return sum(bin(c).count("1") for c in counts) % 2

    async def bench(ctx):
        nonlocal operands
        for bit in bits:
            ctx.set(dut.si, int(bit))
            await ctx.tick()
            operands = ((operands << 1) | int(bit)) & ((1 << (word_bits * (lanes + 1))) - 1)
            expected.append(reduced(operands))
            seen.append(ctx.get(dut.so))

    run_sim(dut, bench)
    latency = stages + 1
    assert seen[latency:] == expected[:-latency]
    assert len(set(expected)) == 2
