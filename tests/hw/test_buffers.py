# amaranth: UnusedElaboratable=no
import pytest

from hw.buffers import Buffer


def test_bank_writes_and_wide_reads(run_sim):
    dut = Buffer(12, 3, 5)
    got = []

    async def bench(ctx):
        for addr in range(5):
            for bank in range(3):
                ctx.set(dut.write.addr, addr)
                ctx.set(dut.write.en, 1 << bank)
                ctx.set(dut.write.data, [0xABC] * 3)  # replicated: only the enabled bank is written
                ctx.set(dut.write.data[bank], addr * 16 + bank)
                await ctx.tick()
        ctx.set(dut.write.en, 0)
        for addr in (4, 0, 2):
            ctx.set(dut.read.addr, addr)
            await ctx.tick()
            got.append([ctx.get(dut.read.data[b]) for b in range(3)])

    run_sim(dut, bench)
    assert got == [[64, 65, 66], [0, 1, 2], [32, 33, 34]]


def test_rejects_bad_sizes():
    with pytest.raises(ValueError, match="depth"):
        Buffer(8, 1, 0)
    with pytest.raises(TypeError, match="banks"):
        Buffer(8, None, 4)
