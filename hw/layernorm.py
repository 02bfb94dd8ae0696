"""Integer LayerNorm: ``out_c = floor(u_c * gain_c / isqrt(sum u**2 + eps)) + bias_c``, ``u_c = d*x_c - sum x``.

The gateware form of :func:`model.intops.layer_norm` with
:func:`model.intops.isqrt` (numeric contract, section 10): one unit serves
every LayerNorm of the integer program (before qkv, before fc1, before the
heads), one token at a time.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int


def _trial_subtract(m: Module, widened: Value, subtrahend: Value) -> tuple[Signal, Value]:
    """``widened - subtrahend`` on one carry chain, and whether it did not borrow (its top bit clear).

    One step of a restoring square root or division: keep the difference when it did not borrow.
    """
    diff = Signal(len(widened) + 1)
    m.d.comb += diff.eq(widened - subtrahend)
    return diff, ~diff[-1]


class LayerNorm(wiring.Component):
    """One token's ``d`` values in twice, its ``d`` normalised values out.

    ``i`` carries ``{x, gain, bias}`` (a residual value and its channel's
    parameters): each token sends its ``dim`` values **twice**, channel 0
    first each time; the first pass gathers the statistics (``gain`` and
    ``bias`` are ignored there), the second produces one output per value.
    The sequencer re-reads the residual stream, which it keeps anyway for
    the residual add, so the unit needs no buffer. ``eps`` (>= 1, the
    contract's) is held for a LayerNorm. ``o`` is signed ``norm_bits + 1``,
    exact for every port value (the contract's bound ``|gain| + |bias| + 1``
    keeps it within ``norm_bits``).

    The steps, for ``d = dim``:

    1. statistics, one value a cycle: ``S = sum x`` and ``Q = sum x**2`` (one
       ``in_bits`` square a cycle, a DSP block, registered before its add);
    2. ``|S|``, then ``S**2`` by shift and add, one bit of ``|S|`` a cycle
       (no multiplier; the add is ``|S|``'s width), then ``d*Q - S**2`` and ``V = d*(d*Q - S**2) + eps``,
       which is ``sum (d*x - S)**2 + eps`` exactly (a cycle each);
    3. ``sigma = isqrt(V)`` digit by digit, the shift-in form of
       :func:`model.intops.isqrt`'s restoring root (the same floor): two
       bits of ``V`` in and one root bit out a cycle, one subtraction of
       ``v_bits / 2 + 3`` bits whose borrow decides;
    4. per value: ``u = d*x - S``; ``|u|``, ``|gain|`` and the product's
       sign; ``|u| * |gain|`` as two registered partial products (a DSP
       block each), then their sum (no negation after them); the
       long division by ``sigma``, one dividend bit in and one quotient bit
       out a cycle (``norm_bits`` of them: ``|u| <= sigma`` bounds the
       quotient by ``|gain|``, so the remainder starts as the product's
       bits above ``norm_bits``, below ``sigma``); the floor for a negative
       product; ``+ bias``; then ``o`` holds it until it is taken.

    Every step is its own cycle so that each carry chain fits a 40 MHz
    cycle of the UP5K (``python -m hw.intunits``). Cycles per token with a
    ready sink: ``d + 1 + s_bits + 2 + v_bits / 2 + d * (norm_bits + 7)``,
    with ``s_bits`` and ``v_bits`` the widths of ``|S|`` and ``V``
    (:attr:`cycles_per_token`): 1,587 for the digits model (d = 64).
    """

    def __init__(self, dim: int, in_bits: int = 16, norm_bits: int = 16, eps_bits: int = 40) -> None:
        self.dim = _check_int(dim, "dim", 1, 1 << 12)
        self.in_bits = _check_int(in_bits, "in_bits", 2, 32)
        self.norm_bits = _check_int(norm_bits, "norm_bits", 2, 24)
        self.eps_bits = _check_int(eps_bits, "eps_bits", 1, 62)
        lg = dim.bit_length()
        self.s_bits = in_bits + lg             # |S| <= d * 2**(in_bits - 1), signed
        self.q_bits = 2 * in_bits - 1 + lg     # Q <= d * 2**(2 in_bits - 2)
        self.u_bits = in_bits + lg + 1         # |d*x - S| <= d * (2**in_bits - 1), signed
        # sum u**2 = d**2 * sum (x - mean)**2 <= d**3 * (2**in_bits - 1)**2 / 4: values in a range of
        # width w have a variance of at most w**2 / 4 (Popoviciu)
        sum_sq = dim**3 << (2 * in_bits - 2)
        v_bits = max(sum_sq.bit_length(), eps_bits) + 1
        self.v_bits = v_bits + (v_bits & 1)    # even: the root's first trial bit is a power of four
        self.root_bits = self.v_bits // 2
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "x": signed(in_bits), "gain": signed(norm_bits), "bias": signed(norm_bits)}))),
            "eps": In(unsigned(eps_bits)),
            "o": Out(stream.Signature(signed(norm_bits + 1))),
        })

    @property
    def cycles_per_token(self) -> int:
        """Cycles from a token's first value to its last output being taken, with no stalls."""
        return self.dim + 1 + self.s_bits + 2 + self.root_bits + self.dim * (self.norm_bits + 7)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        d, nb, rb = self.dim, self.norm_bits, self.root_bits
        i = self.i.payload
        count = Signal(range(d), reset_less=True)
        total = Signal(signed(self.s_bits), reset_less=True)      # S
        squares = Signal(unsigned(self.q_bits), reset_less=True)  # Q
        # x*x is registered before it is added (the DSP block's output straight into a carry chain is too slow)
        square_in = Signal(unsigned(2 * self.in_bits), reset_less=True)
        square_first, square_valid = Signal(reset_less=True), Signal()
        # S**2 by shift and add, least significant bit of |S| first: the running product's high half gets
        # |S| added when the bit is set, then the whole product shifts right (one |S|-wide add a cycle)
        s_abs = Signal(unsigned(self.s_bits), reset_less=True)
        s_low = Signal(unsigned(self.s_bits), reset_less=True)       # |S|'s bits still to come, then the product's low half
        s_high = Signal(unsigned(self.s_bits + 1), reset_less=True)  # the product's high half
        spread = Signal(unsigned(self.q_bits + d.bit_length()), reset_less=True)  # d*Q - S**2
        step = Signal(range(max(self.s_bits, rb, nb) + 1), reset_less=True)
        # the square root, digit by digit: two bits of V in, one bit of the root out, a step
        v = Signal(unsigned(self.v_bits), reset_less=True)
        rest = Signal(unsigned(rb + 2), reset_less=True)  # V's bits so far minus root**2, < 2*root + 1
        root = Signal(unsigned(rb), reset_less=True)
        # the division, one dividend bit in and one quotient bit out a step
        u = Signal(signed(self.u_bits), reset_less=True)
        gain = Signal(signed(nb), reset_less=True)
        bias = Signal(signed(nb), reset_less=True)
        u_abs = Signal(unsigned(self.u_bits - 1), reset_less=True)
        gain_abs = Signal(unsigned(nb), reset_less=True)
        product_lo = Signal(unsigned(16 + nb), reset_less=True)
        product_hi = Signal(unsigned(max(1, self.u_bits - 1 - 16) + nb), reset_less=True)
        remainder = Signal(unsigned(rb + 1), reset_less=True)  # < sigma
        low = Signal(unsigned(nb), reset_less=True)            # the dividend's bits still to come in
        quotient = Signal(unsigned(nb), reset_less=True)
        negative = Signal(reset_less=True)
        floored = Signal(signed(nb + 1), reset_less=True)
        out = Signal(signed(nb + 1), reset_less=True)
        m.d.comb += self.o.payload.eq(out)

        m.d.sync += square_valid.eq(0)
        with m.If(square_valid):
            m.d.sync += squares.eq(Mux(square_first, 0, squares) + square_in)
        with m.FSM():
            with m.State("stats"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    first = count == 0
                    m.d.sync += [total.eq(Mux(first, 0, total) + i.x), count.eq(Mux(count == d - 1, 0, count + 1)),
                                 square_in.eq(i.x * i.x), square_first.eq(first), square_valid.eq(1)]
                    with m.If(count == d - 1):
                        m.next = "magnitude"
            with m.State("magnitude"):  # the last x*x is added to Q in this cycle
                m.d.sync += [s_abs.eq(Mux(total < 0, -total, total)), s_low.eq(Mux(total < 0, -total, total)),
                             s_high.eq(0), step.eq(self.s_bits - 1)]
                m.next = "square"
            with m.State("square"):
                added = s_high + Mux(s_low[0], s_abs, 0)
                m.d.sync += [s_low.eq(Cat(s_low[1:], added[0])), s_high.eq(added[1:]), step.eq(step - 1)]
                with m.If(step == 0):
                    m.next = "spread"
            with m.State("spread"):
                m.d.sync += spread.eq(d * squares - Cat(s_low, s_high))
                m.next = "variance"
            with m.State("variance"):  # V = d*(d*Q - S**2) + eps = sum (d*x - S)**2 + eps
                m.d.sync += [v.eq(d * spread + self.eps), rest.eq(0), root.eq(0), step.eq(rb - 1)]
                m.next = "sqrt"
            with m.State("sqrt"):
                widened = Cat(v[-2:], rest)          # rest*4 + V's next two bits
                trial = Cat(Const(1, 2), root)      # root*4 + 1: (2*root + 1)**2 - (2*root)**2
                diff, take = _trial_subtract(m, widened, trial)
                m.d.sync += [rest.eq(Mux(take, diff, widened)), root.eq(Cat(take, root)),
                             v.eq(v << 2), step.eq(step - 1)]
                with m.If(step == 0):
                    m.next = "load"
            with m.State("load"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [u.eq(d * i.x - total), gain.eq(i.gain), bias.eq(i.bias)]
                    m.next = "magnitudes"
            with m.State("magnitudes"):  # |u * gain| as |u| * |gain|: no negation after the DSP product
                m.d.sync += [u_abs.eq(Mux(u < 0, -u, u)), gain_abs.eq(Mux(gain < 0, -gain, gain)),
                             negative.eq((u < 0) ^ (gain < 0))]
                m.next = "product"
            with m.State("product"):  # two partial products, each one DSP block, registered
                m.d.sync += [product_lo.eq(u_abs[:16] * gain_abs), product_hi.eq(u_abs[16:] * gain_abs)]
                m.next = "dividend"
            with m.State("dividend"):  # |u*gain| >> nb < sigma, since |u*gain| / sigma <= |gain| < 2**nb
                a = (product_hi << 16) + product_lo
                m.d.sync += [remainder.eq(a[nb:]), low.eq(a[:nb]), quotient.eq(0), step.eq(nb - 1)]
                m.next = "divide"
            with m.State("divide"):
                widened = Cat(low[-1], remainder)   # remainder*2 + the dividend's next bit
                diff, take = _trial_subtract(m, widened, root)
                m.d.sync += [remainder.eq(Mux(take, diff, widened)), quotient.eq(Cat(take, quotient)),
                             low.eq(low << 1), step.eq(step - 1)]
                with m.If(step == 0):
                    m.next = "floor"
            with m.State("floor"):  # floor: -q - 1 = ~q for a negative product that leaves a remainder
                q = Signal(signed(nb + 1))
                m.d.comb += q.eq(quotient)
                m.d.sync += floored.eq(Mux(negative, Mux(remainder == 0, -q, ~q), q))
                m.next = "finish"
            with m.State("finish"):
                m.d.sync += out.eq(floored + bias)
                m.next = "out"
            with m.State("out"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += count.eq(Mux(count == d - 1, 0, count + 1))
                    with m.If(count == d - 1):
                        m.next = "stats"
                    with m.Else():
                        m.next = "load"
        return m
