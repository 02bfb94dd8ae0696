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

    Five pipeline stages, each registered (six for ``y_bits`` above 16):
    the product ``y*m`` (``y_bits x multiplier_bits``: one DSP block where
    ``y_bits`` fits it, e.g. SB_MAC16 16 x 16 on the UP5K; a wider ``y``
    is two partial products, ``y``'s low 16 bits and the rest, a DSP
    block each, summed in a stage of their own, since a product split by
    the synthesis tool with its adder in the same cycle misses the ECP5's
    100 MHz), and alongside it ``r + bias``; the rounding add; the shift
    (a shift past the product's width gives 0 whatever its size, so the
    amount is clamped to it); the add; the saturation (no compare: the bits
    above ``out_bits - 1`` must all equal the sign). Latency 5 (or 6)
    cycles, one item a cycle; ``o`` back-pressures the whole pipeline (a stage moves
    when the output is free or taken). ``multiplier`` is read in the cycle
    an item is accepted and ``shift`` is registered inside, so both may
    change up to the cycle of a layer's first item, never while its items
    are in flight.
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
        self.split = y_bits > 16  # the product as two partial products, summed a stage later
        self.latency = 6 if self.split else 5
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "y": signed(y_bits), "r": signed(r_bits), "bias": signed(bias_bits)}))),
            "multiplier": In(unsigned(multiplier_bits)),
            "shift": In(unsigned(shift_bits)),
            "o": Out(stream.Signature(signed(out_bits))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        pb = self.product_bits
        valid = [Signal(name=f"valid{stage}") for stage in range(1, self.latency + 1)]
        advance = ~valid[-1] | self.o.ready
        m.d.comb += [self.i.ready.eq(advance), self.o.valid.eq(valid[-1])]
        # the layer's shift, clamped to the product's width, and 2**(shift - 1) (0 for shift 0), registered:
        # they change between layers only, and the stages that use them run a cycle or more after the accept
        shift = Signal(range(pb + 1), reset_less=True)
        half = Signal(unsigned(pb), reset_less=True)
        clamped = Mux(self.shift > pb, pb, self.shift)
        m.d.sync += [shift.eq(clamped), half.eq((Const(1, pb + 1) << clamped)[1:])]
        rb_shape = signed(max(self.r_bits, self.bias_bits) + 1)
        product = Signal(signed(pb), reset_less=True)            # stage 1 (or 2): y*m
        rb = [Signal(rb_shape, name=f"rb{k}", reset_less=True) for k in range(1, self.latency - 1)]  # r + bias
        biased = Signal(signed(pb + 2), reset_less=True)         # stage 2: y*m + 2**(s-1)
        rounded = Signal(signed(pb), reset_less=True)            # stage 3: >> s
        total = Signal(signed(max(pb, rb_shape.width) + 1), reset_less=True)  # stage 4: + r + bias
        out = Signal(signed(self.out_bits), reset_less=True)      # stage 5: saturated
        # saturation without a compare: the value fits when its bits above out_bits - 1 all equal its sign
        lo, hi = -(1 << (self.out_bits - 1)), (1 << (self.out_bits - 1)) - 1
        if self.out_bits >= len(total):  # never saturates: sign-extend
            saturated = total
        else:
            above = total[self.out_bits - 1:]
            fits = (above == 0) | (above == (1 << len(above)) - 1)
            saturated = Mux(fits, total[:self.out_bits], Mux(total[-1], lo, hi))
        m.d.comb += self.o.payload.eq(out)
        with m.If(advance):
            m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, self.latency)]
            y = self.i.payload.y
            if self.split:  # stage 1: y's low 16 bits and the rest times m, a DSP block each; stage 2: their sum
                low = Signal(unsigned(16 + self.multiplier_bits), reset_less=True)
                high = Signal(signed(pb - 16), reset_less=True)
                m.d.sync += [low.eq(y[:16] * self.multiplier), high.eq(y[16:].as_signed() * self.multiplier),
                             product.eq((high << 16) + low)]
            else:
                m.d.sync += product.eq(y * self.multiplier)
            m.d.sync += [valid[0].eq(self.i.valid), rb[0].eq(self.i.payload.r + self.i.payload.bias)]
            m.d.sync += [rb[k].eq(rb[k - 1]) for k in range(1, len(rb))]
            m.d.sync += [
                biased.eq(product + half),
                rounded.eq(biased >> shift),
                total.eq(rounded + rb[-1]),
                out.eq(saturated),
            ]
        return m
