import pytest
from amaranth.hdl import Module, Signal
from amaranth.sim import Simulator

from hw.config import DEFAULT
from hw.isa import (
    Op,
    descriptor,
    descriptor_layout,
    from_word,
    header,
    run_args,
    threshold_word,
    to_word,
    unpack_descriptor,
)


def test_header_and_values():
    assert header(Op.RUN, 1) == 0x120
    assert from_word(to_word(-5)) == -5
    assert threshold_word(-1, 1) == (1 << 31) - 1
    assert threshold_word(-1, -1) == (1 << 31) | 2  # -Y >= -1 is Y < 2


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


@pytest.mark.parametrize("call,match", [
    (lambda: descriptor(DEFAULT, DEFAULT.x_depth, 0, 0), "x_base"),
    (lambda: descriptor(DEFAULT, 0, 0, 1 << 17), "coef"),
    (lambda: descriptor(DEFAULT, 0, 0, 1, shift=16), "shift"),
    (lambda: run_args(DEFAULT, 1, 1, 1, 1, 1 << 30), "offset"),
    (lambda: threshold_word(1 << 30, 1), "threshold"),
    (lambda: threshold_word(0, 0), "direction"),
])
def test_rejects_fields_that_do_not_fit(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_header_type_checked():
    with pytest.raises(TypeError, match="op"):
        header(0x10)
