"""Requantize and add: ``saturate(r + bias + ((y*m + 2**(s-1)) >> s), out_bits)``.

The gateware form of the residual update of the integer program (numeric
contract, section 8): ``R = sat16(R + rq(Y, m, s) + b)`` after ``proj`` and
``fc2``, with :func:`model.intops.requantize` and :func:`model.intops.saturate`.
The same unit computes every other ``rq`` of :func:`model.intvit.forward`:
the patch embedding's per-channel terms and the heads' logits (a running
sum in ``r``, an ``out_bits`` wide enough that nothing saturates) and the
attention scores (``r = bias = 0``).
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int


class Requantize(wiring.Component):
    """``o = saturate(r + bias + rq(y, multiplier, shift), out_bits)``, one item a cycle.

    ``rq(y, m, s) = (y*m + 2**(s-1)) >> s`` rounds half up (the shift is
    arithmetic, so it floors); ``s = 0`` is ``y*m``. ``multiplier``
    (unsigned, ``multiplier_bits``, 16 in the contract) and ``shift`` are
    held for a layer; ``i`` carries ``{y, r, bias}`` (an engine output, the
    residual value it adds to and the channel's bias).

    Three pipeline stages, each registered: the product ``y*m`` (the one
    multiplier, ``y_bits x multiplier_bits``: one DSP block where ``y_bits``
    fits it, e.g. SB_MAC16 16 x 16 on the UP5K, more for a wider
    accumulator), and alongside it ``r + bias``; the rounding add and the
    shift (a shift past the product's width gives 0 whatever its size, so the
    shift amount is clamped to it); the add and the saturation. Latency 3
    cycles, one item a cycle; ``o`` back-pressures the whole pipeline (a stage
    moves when the output is free or taken).
    """

    def __init__(self, y_bits: int, r_bits: int, bias_bits: int, out_bits: int,
                 multiplier_bits: int = 16, shift_bits: int = 6) -> None:
        self.y_bits = _check_int(y_bits, "y_bits", 2, 48)
        self.r_bits = _check_int(r_bits, "r_bits", 1, 48)
        self.bias_bits = _check_int(bias_bits, "bias_bits", 1, 48)
        self.out_bits = _check_int(out_bits, "out_bits", 2, 48)
        self.multiplier_bits = _check_int(multiplier_bits, "multiplier_bits", 1, 18)
        self.shift_bits = _check_int(shift_bits, "shift_bits", 1, 6)
        self.product_bits = y_bits + multiplier_bits  # |y*m| < 2**(y_bits - 1 + multiplier_bits)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "y": signed(y_bits), "r": signed(r_bits), "bias": signed(bias_bits)}))),
            "multiplier": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(shift_bits)),
            "o": Out(stream.Signature(signed(out_bits))),
        })

    latency = 3

    def elaborate(self, platform: object) -> Module:
        m = Module()
        pb = self.product_bits
        valid = [Signal(name=f"valid{stage}") for stage in (1, 2, 3)]
        advance = ~valid[2] | self.o.ready
        m.d.comb += [self.i.ready.eq(advance), self.o.valid.eq(valid[2])]
        # stage 1: the product and r + bias
        product = Signal(signed(pb), reset_less=True)
        rb1 = Signal(signed(max(self.r_bits, self.bias_bits) + 1), reset_less=True)
        # stage 2: round half up and shift
        rb2 = Signal.like(rb1, reset_less=True)
        rounded = Signal(signed(pb), reset_less=True)
        shift = Signal(range(pb + 1))
        m.d.comb += shift.eq(Mux(self.shift > pb, pb, self.shift))
        half = Signal(unsigned(pb))  # 2**(shift - 1), 0 for shift 0
        m.d.comb += half.eq((Const(1, pb + 1) << shift)[1:])
        # stage 3: add and saturate
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        total = rounded + rb2
        out = Signal(signed(self.out_bits), reset_less=True)
        m.d.comb += self.o.payload.eq(out)
        with m.If(advance):
            m.d.sync += [
                valid[0].eq(self.i.valid), valid[1].eq(valid[0]), valid[2].eq(valid[1]),
                product.eq(self.i.payload.y * self.multiplier),
                rb1.eq(self.i.payload.r + self.i.payload.bias),
                rounded.eq((product + half) >> shift),
                rb2.eq(rb1),
                out.eq(Mux(total > hi, hi, Mux(total < lo, lo, total))),
            ]
        return m
