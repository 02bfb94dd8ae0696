"""Integer LayerNorm: ``out_c = floor(u_c * gain_c / isqrt(sum u**2 + eps)) + bias_c``, ``u_c = d*x_c - sum x``.

The gateware form of :func:`model.intops.layer_norm` with
:func:`model.intops.isqrt` (numeric contract, section 10): one unit serves
every LayerNorm of the integer program (before qkv, before fc1, before the
heads), one token at a time.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int


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
       ``in_bits`` square a cycle: a DSP block);
    2. ``S**2`` by shift and add, one bit of ``|S|`` a cycle (no multiplier),
       then ``V = d*(d*Q - S**2) + eps``, which is ``sum (d*x - S)**2 + eps``
       exactly;
    3. ``sigma = isqrt(V)``: the restoring square root of :func:`model.intops.isqrt`,
       one result bit a cycle;
    4. per value: ``u = d*x - S`` and ``u * gain`` (a DSP product), then the
       restoring division by ``sigma``, one quotient bit a cycle
       (``norm_bits`` bits: ``|u| <= sigma`` bounds the quotient by
       ``|gain|``), floored for a negative product, plus ``bias``; ``o``
       holds it until it is taken.

    Cycles per token with a ready sink: ``d`` + ``s_bits`` + 1 +
    ``v_bits / 2`` + ``d * (norm_bits + 2)``, with ``s_bits`` and ``v_bits``
    the widths of ``|S|`` and ``V`` (:attr:`cycles_per_token`).
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
        sum_sq = dim**3 << (2 * in_bits)       # sum u**2 < d * (d * 2**in_bits)**2
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
        return self.dim + self.s_bits + 1 + self.root_bits + self.dim * (self.norm_bits + 2)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        d, nb = self.dim, self.norm_bits
        i = self.i.payload
        count = Signal(range(d), reset_less=True)
        total = Signal(signed(self.s_bits), reset_less=True)      # S
        squares = Signal(unsigned(self.q_bits), reset_less=True)  # Q
        # S**2 by shift and add (Horner over the bits of |S|, most significant first)
        s_abs = Signal(unsigned(self.s_bits), reset_less=True)
        s_bits_left = Signal(unsigned(self.s_bits), reset_less=True)
        s_square = Signal(unsigned(2 * self.s_bits), reset_less=True)
        step = Signal(range(max(self.s_bits, self.root_bits, nb) + 1), reset_less=True)
        # the square root (model.intops.isqrt)
        rest = Signal(unsigned(self.v_bits), reset_less=True)
        root = Signal(unsigned(self.v_bits), reset_less=True)
        bit = Signal(unsigned(self.v_bits), reset_less=True)
        # the division
        n_bits = self.u_bits + nb
        remainder = Signal(unsigned(n_bits), reset_less=True)
        divisor = Signal(unsigned(self.root_bits + nb), reset_less=True)  # sigma << (nb - 1), shifted right a step
        quotient = Signal(unsigned(nb), reset_less=True)
        negative = Signal(reset_less=True)
        bias = Signal(signed(nb), reset_less=True)
        sigma = root[:self.root_bits]
        floor_q = Mux(negative, -quotient - (remainder != 0), quotient)
        m.d.comb += self.o.payload.eq(floor_q + bias)

        with m.FSM():
            with m.State("stats"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    first = count == 0
                    m.d.sync += [total.eq(Mux(first, 0, total) + i.x), squares.eq(Mux(first, 0, squares) + i.x * i.x),
                                 count.eq(Mux(count == d - 1, 0, count + 1))]
                    with m.If(count == d - 1):
                        s = total + i.x
                        m.d.sync += [s_abs.eq(Mux(s < 0, -s, s)), s_bits_left.eq(Mux(s < 0, -s, s)), s_square.eq(0),
                                     step.eq(self.s_bits - 1)]
                        m.next = "square"
            with m.State("square"):
                top = s_bits_left[-1]
                m.d.sync += [s_square.eq((s_square << 1) + Mux(top, s_abs, 0)), s_bits_left.eq(s_bits_left << 1),
                             step.eq(step - 1)]
                with m.If(step == 0):
                    m.next = "variance"
            with m.State("variance"):
                m.d.sync += [rest.eq(d * (d * squares - s_square) + self.eps), root.eq(0),
                             bit.eq(1 << (self.v_bits - 2)), step.eq(self.root_bits - 1)]
                m.next = "sqrt"
            with m.State("sqrt"):
                trial = root + bit
                with m.If(rest >= trial):
                    m.d.sync += [rest.eq(rest - trial), root.eq((root >> 1) + bit)]
                with m.Else():
                    m.d.sync += root.eq(root >> 1)
                m.d.sync += [bit.eq(bit >> 2), step.eq(step - 1)]
                with m.If(step == 0):
                    m.next = "load"
            with m.State("load"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    u = Signal(signed(self.u_bits))
                    n = Signal(signed(n_bits))
                    m.d.comb += [u.eq(d * i.x - total), n.eq(u * i.gain)]
                    m.d.sync += [remainder.eq(Mux(n < 0, -n, n)), negative.eq(n < 0), bias.eq(i.bias), quotient.eq(0),
                                 divisor.eq(sigma << (nb - 1)), step.eq(nb - 1)]
                    m.next = "divide"
            with m.State("divide"):
                with m.If(remainder >= divisor):
                    m.d.sync += [remainder.eq(remainder - divisor), quotient.eq((quotient << 1) | 1)]
                with m.Else():
                    m.d.sync += quotient.eq(quotient << 1)
                m.d.sync += [divisor.eq(divisor >> 1), step.eq(step - 1)]
                with m.If(step == 0):
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
