# amaranth: UnusedElaboratable=no
import pytest

from hw.config import SMALL
from hw.decoder import CycleCounter, Decoder
from hw.descriptor import descriptor_layout
from hw.isa import Op, descriptor, header, run_args, threshold_word
from hw.simtools import receive, send


def _capture_writes(ctx_get, dut):
    out = []
    for op in (Op.LOAD_X, Op.LOAD_Y, Op.LOAD_THRESH, Op.LOAD_PROG):
        port = getattr(dut, op.name.lower())
        en = ctx_get(port.en)
        for bank in range(len(port.en)):
            if en >> bank & 1:
                out.append((op.name, ctx_get(port.addr), bank, ctx_get(port.data[bank])))
    return out


def test_loads_write_each_buffer_bank_by_bank(run_sim):
    c = SMALL
    dut = Decoder(c)
    desc = descriptor(c, 3, 4, -5, 1, True)
    cmds = (
        [header(Op.LOAD_X, 7), 2, 0x1234, 0xBEEF]
        + [header(Op.LOAD_Y, 1), 1, 0xAAAA, 0x5555]
        + [header(Op.LOAD_THRESH, 2), 1, threshold_word(-3, -1), threshold_word(9, 1)]
        + [header(Op.LOAD_PROG, 0), 1, *desc]
        + [0xEE, header(Op.LOAD_X, 0), 0]  # unknown opcode and an empty load: skipped
    )
    writes = []

    async def bench(ctx):
        # an entry is written the cycle after its last word; every cycle's writes are captured
        for word in cmds:
            ctx.set(dut.cmd.valid, 1)
            ctx.set(dut.cmd.payload, word)
            taken = False
            while not taken:
                taken = ctx.get(dut.cmd.ready)
                writes.extend(_capture_writes(ctx.get, dut))
                await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        for _ in range(3):
            writes.extend(_capture_writes(ctx.get, dut))
            await ctx.tick()

    run_sim(dut, bench)
    layout = descriptor_layout(c)
    fields = dict(x_base=3, y_base=4, shift=1, cmode=1, coef=-5 & ((1 << c.coef_bits) - 1))
    prog = sum(fields[name] << layout[name].offset for name in fields)
    assert writes == [
        ("LOAD_X", 7, 0, 0x1234), ("LOAD_X", 8, 0, 0xBEEF),
        ("LOAD_Y", 1, 0, 0xAAAA), ("LOAD_Y", 1, 1, 0x5555),
        ("LOAD_THRESH", 2, 0, threshold_word(-3, -1)), ("LOAD_THRESH", 2, 1, threshold_word(9, 1)),
        ("LOAD_PROG", 0, 0, prog),
    ]


def test_run_waits_for_the_engine_and_counts_busy_cycles(run_sim):
    c = SMALL
    dut = Decoder(c)
    got = {}

    async def engine(ctx):
        await ctx.tick().until(dut.start)
        got["args"] = {f: ctx.get(getattr(dut.args, f)) for f in ("rows", "blocks", "words", "passes", "offset", "binary")}
        ctx.set(dut.busy, 1)
        await ctx.tick().repeat(17)
        ctx.set(dut.busy, 0)

    async def bench(ctx):
        cmds = [header(Op.RUN, 1), *run_args(c, 3, 2, 5, 4, -7), header(Op.READ_CYCLES)]
        await send(ctx, dut.cmd, cmds)
        got["cycles"] = await receive(ctx, dut.rsp, 2)
        await send(ctx, dut.cmd, [header(Op.RESET), header(Op.READ_CYCLES)])
        got["after_reset"] = await receive(ctx, dut.rsp, 2)

    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(engine, background=True)
    sim.add_testbench(bench)
    sim.run_until(1e-5)
    assert got["args"] == dict(rows=3, blocks=2, words=5, passes=4, offset=-7, binary=1)
    assert got["cycles"] == [17, 0]
    assert got["after_reset"] == [0, 0]


def test_rejects_non_config():
    with pytest.raises(TypeError, match="config"):
        Decoder(None)


def test_cycle_counter_carries_through_its_segments(run_sim):
    dut = CycleCounter(8, 3)  # segments of 3, 3 and 2 bits: exact after 2 idle cycles
    assert dut.lag == 2
    seen = []

    def enabled(cycle):
        return cycle % 7 not in (0, 1)  # idle cycles in between, as between runs

    async def bench(ctx):
        for cycle in range(600):
            ctx.set(dut.enable, enabled(cycle))
            ctx.set(dut.clear, cycle == 500)
            await ctx.tick()
            if cycle % 7 == 1:  # enable was low for the last 2 cycles: the count is exact
                seen.append(ctx.get(dut.count))

    run_sim(dut, bench)

    def enabled_since_clear(c):
        start = 0 if c < 500 else 501
        return sum(1 for k in range(start, c + 1) if enabled(k)) % 256

    assert seen == [enabled_since_clear(c) for c in range(600) if c % 7 == 1]
    assert max(seen) >= 1 << 6  # the last segment was used
