"""The stored form of a program descriptor."""

from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.descriptor import descriptor_layout, stored_descriptor, unpack_descriptor
from hw.isa import descriptor


def test_descriptor_fields_round_trip_through_the_stored_layout():
    words = descriptor(DEFAULT, 200, 17, -9, 3, True)
    raw = Signal(96)
    m = Module()
    stored = descriptor_layout(DEFAULT)(Signal(descriptor_layout(DEFAULT).size))
    m.d.comb += stored.eq(unpack_descriptor(DEFAULT, raw))
    got = {}

    async def bench(ctx):
        ctx.set(raw, words[0] | words[1] << 32 | words[2] << 64)
        await ctx.delay(1e-9)
        got.update({name: ctx.get(getattr(stored, name)) for name in ("x_base", "y_base", "shift", "cmode", "coef")})

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == dict(x_base=200, y_base=17, shift=3, cmode=1, coef=-9)


def test_stored_descriptor_is_what_unpack_descriptor_stores():
    words = descriptor(DEFAULT, 200, 17, -9, 3, True)
    raw = Signal(96)
    stored = Signal(descriptor_layout(DEFAULT).size)
    m = Module()
    m.d.comb += stored.eq(unpack_descriptor(DEFAULT, raw))
    got = []

    async def bench(ctx):
        ctx.set(raw, words[0] | words[1] << 32 | words[2] << 64)
        await ctx.delay(1e-9)
        got.append(ctx.get(stored))

    sim = Simulator(m)
    sim.add_testbench(bench)
    sim.run()
    assert got == [stored_descriptor(DEFAULT, words)]
