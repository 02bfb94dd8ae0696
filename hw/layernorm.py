"""Integer LayerNorm: ``out_c = floor(u_c * gain_c / isqrt(sum u**2 + eps)) + bias_c``, ``u_c = d*x_c - sum x``.

The gateware form of :func:`model.intops.layer_norm` with
:func:`model.intops.isqrt` (numeric contract, section 10): one unit serves
every LayerNorm of the integer program (before qkv, before fc1, before the
heads), one token at a time.  Two dividers: ``serial`` (one quotient bit a
cycle, 23 cycles a value at 16 bits, 3 multipliers: the UP5K's choice) and
``reciprocal`` (one value a cycle through a pipeline, 8 multipliers at the
digits model's widths: for parts with DSP blocks to spare, the ECP5).
"""

from __future__ import annotations

from typing import Callable

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int


def _restoring_step(m: Module, rest: Signal, low: Signal, quotient: Signal, divisor: Value, step: Signal) -> None:
    """One step of a restoring division: the dividend's next bit (``low``'s top) into ``rest``,
    one quotient bit out (shifted into ``quotient``), ``step`` counted down."""
    widened = Cat(low[-1], rest)  # rest*2 + the dividend's next bit
    diff, take = _trial_subtract(m, widened, divisor)
    m.d.sync += [rest.eq(Mux(take, diff, widened)), quotient.eq(Cat(take, quotient)),
                 low.eq(low << 1), step.eq(step - 1)]


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

    With ``divider="reciprocal"`` step 4 becomes, once a token, the
    reciprocal of sigma normalised to its top bit, ``r = floor(2**(rb + nb)
    / (sigma << e))`` (``rb`` the root's width, ``sigma << e`` its top bit at
    ``rb - 1``; ``nb + 2`` bits, one a cycle), and per value a pipeline that
    takes a value a cycle: ``a = |u| * |gain|``; ``q' = (a * r) >> (rb - e +
    nb)``, which is ``floor(a / sigma)`` or one less (``a < |gain| * 2 *
    sigma``, so the reciprocal's error stays below one half); ``q = q' + (a -
    q' * sigma >= sigma)``; the floor for a negative product; ``+ bias``.
    Twelve registered stages (at the digits model's widths two multipliers
    for ``a``, three for ``a * r``, two for ``q' * sigma``), all stalling
    together while ``o`` waits.
    The per-token constants are latched when a token's values start, so the
    next token's statistics run while the pipeline drains. Cycles per token:
    ``d + 1 + s_bits + 2 + v_bits / 2 + 1 + (nb + 2) + 1 + d``: 199 for the
    digits model.
    """

    DIVIDERS = ("serial", "reciprocal")
    #: the reciprocal pipeline's stages from a value's accept to its output
    PIPELINE = 12

    def __init__(self, dim: int, in_bits: int = 16, norm_bits: int = 16, eps_bits: int = 40,
                 divider: str = "serial") -> None:
        self.dim = _check_int(dim, "dim", 1, 1 << 12)
        self.in_bits = _check_int(in_bits, "in_bits", 2, 32)
        self.norm_bits = _check_int(norm_bits, "norm_bits", 2, 24)
        self.eps_bits = _check_int(eps_bits, "eps_bits", 1, 62)
        if divider not in self.DIVIDERS:
            raise ValueError(f"divider must be one of {', '.join(self.DIVIDERS)}, got {divider!r}")
        self.divider = divider
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
        """Cycles from a token's first value to its last value taken (the serial divider: its last output
        taken), with no stalls; the reciprocal pipeline's last output follows :attr:`PIPELINE` cycles later."""
        front = self.dim + 1 + self.s_bits + 2 + self.root_bits
        if self.divider == "serial":
            return front + self.dim * (self.norm_bits + 7)
        return front + 1 + (self.norm_bits + 2) + 1 + self.dim

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
        step = Signal(range(max(self.s_bits, rb, nb + 1) + 1), reset_less=True)
        # the square root, digit by digit: two bits of V in, one bit of the root out, a step
        v = Signal(unsigned(self.v_bits), reset_less=True)
        rest = Signal(unsigned(rb + 2), reset_less=True)  # V's bits so far minus root**2, < 2*root + 1
        root = Signal(unsigned(rb), reset_less=True)
        back = self._serial if self.divider == "serial" else self._reciprocal
        back_states = back(m, total, root, count, step)

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
                    m.next = "load" if self.divider == "serial" else "normalize"
            back_states()
        return m

    def _serial(self, m: Module, total: Signal, root: Signal, count: Signal, step: Signal) -> Callable[[], None]:
        """Step 4 with the serial divider, one value at a time, one quotient bit a cycle: its
        signals, and a function that adds its states (called inside the unit's FSM)."""
        d, nb, rb = self.dim, self.norm_bits, self.root_bits
        i = self.i.payload
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

        def states() -> None:
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
                _restoring_step(m, remainder, low, quotient, root, step)
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
        return states

    def _reciprocal(self, m: Module, total: Signal, root: Signal, count: Signal, step: Signal) -> Callable[[], None]:
        """Step 4 with the reciprocal divider (see the class): the token's reciprocal, the value
        pipeline, and a function that adds the states that feed it (called inside the unit's FSM)."""
        d, nb, rb = self.dim, self.norm_bits, self.root_bits
        i = self.i.payload
        ua_bits, r_bits = self.u_bits - 1, nb + 2
        a_bits = ua_bits + nb
        # the reciprocal, worked out after the root: r = floor(2**(rb + nb) / normed), one bit a step
        numerator = 1 << (rb + nb)
        top = Signal(range(rb), reset_less=True)            # the root's top bit
        normed = Signal(unsigned(rb), reset_less=True)      # root << (rb - 1 - top)
        rest = Signal(unsigned(rb), reset_less=True)        # < normed
        low = Signal(unsigned(r_bits), reset_less=True)     # the numerator's bits still to come in
        recip = Signal(unsigned(r_bits), reset_less=True)
        # the token's constants as the pipeline reads them, latched when its values start
        sigma = Signal(unsigned(rb), reset_less=True)
        factor = Signal(unsigned(r_bits), reset_less=True)
        shift = Signal(range(rb + nb + 1), reset_less=True)  # top + nb + 1

        # the value pipeline: every stage registered, all of them stalled while o waits
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        accept = Signal()  # a value enters stage 1 (driven by the "values" state)
        valid = [Signal(name=f"valid{k}") for k in range(1, self.PIPELINE + 1)]
        busy = Signal()
        m.d.comb += busy.eq(Cat(*valid).any())

        def stage(name: str, shape: object) -> Signal:
            return Signal(shape, name=name, reset_less=True)

        u, gain, bias1 = stage("u", signed(self.u_bits)), stage("gain", signed(nb)), stage("bias1", signed(nb))
        u_abs, gain_abs = stage("u_abs", unsigned(ua_bits)), stage("gain_abs", unsigned(nb))
        product_lo = stage("product_lo", unsigned(16 + nb))
        product_hi = stage("product_hi", unsigned(max(1, ua_bits - 16) + nb))
        a = [stage(f"a{k}", unsigned(a_bits)) for k in range(4, 9)]           # |u * gain|, stages 4 to 8
        chunks = [stage(f"ar{k}", unsigned(min(16, a_bits - 16 * k) + r_bits)) for k in range((a_bits + 15) // 16)]
        scaled = stage("scaled", unsigned(a_bits + r_bits))                  # a * r
        estimate = [stage(f"estimate{k}", unsigned(nb)) for k in (7, 8, 9)]  # q' = floor(a / sigma) or one less
        back_lo = stage("back_lo", unsigned(16 + nb))                        # q' * sigma, two products
        back_hi = stage("back_hi", unsigned(max(1, rb - 16) + nb))
        left = stage("left", unsigned(rb + 1))                               # a - q' * sigma < 2 sigma
        quotient = stage("quotient", unsigned(nb + 1))
        exact = stage("exact", 1)
        negative = [stage(f"negative{k}", 1) for k in range(2, 11)]          # stages 2 to 10
        bias = [stage(f"bias{k}", signed(nb)) for k in range(2, 12)]
        floored = stage("floored", signed(nb + 2))
        out = stage("out", signed(nb + 1))
        m.d.comb += [self.o.payload.eq(out), self.o.valid.eq(valid[-1])]

        with m.If(advance):
            m.d.sync += valid[0].eq(accept)
            m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, self.PIPELINE)]
            m.d.sync += [negative[k].eq(negative[k - 1]) for k in range(1, len(negative))]
            m.d.sync += [bias[k].eq(bias[k - 1]) for k in range(1, len(bias))]
            m.d.sync += [a[k].eq(a[k - 1]) for k in range(1, len(a))]
            m.d.sync += [estimate[k].eq(estimate[k - 1]) for k in range(1, len(estimate))]
            with m.If(accept):                                               # 1: u = d*x - S
                m.d.sync += [u.eq(d * i.x - total), gain.eq(i.gain), bias1.eq(i.bias)]
            m.d.sync += [                                                    # 2: magnitudes and the sign
                u_abs.eq(Mux(u < 0, -u, u)), gain_abs.eq(Mux(gain < 0, -gain, gain)),
                negative[0].eq((u < 0) ^ (gain < 0)), bias[0].eq(bias1),
                # 3: |u| * |gain| as two products, a multiplier each
                product_lo.eq(u_abs[:16] * gain_abs), product_hi.eq(u_abs[16:] * gain_abs),
                a[0].eq((product_hi << 16) + product_lo),                    # 4
            ]
            # 5: a * r, 16 bits of a a product; 6: their sum; 7: q' = (a * r) >> (top + nb + 1)
            m.d.sync += [chunk.eq(a[0][16 * k:16 * (k + 1)] * factor) for k, chunk in enumerate(chunks)]
            m.d.sync += scaled.eq(sum((chunk << (16 * k) for k, chunk in enumerate(chunks)), Const(0, 1)))
            m.d.sync += estimate[0].eq(scaled >> shift)
            m.d.sync += [                                                    # 8: q' * sigma, two products
                back_lo.eq(estimate[0] * sigma[:16]), back_hi.eq(estimate[0] * sigma[16:]),
                left.eq(a[4] - ((back_hi << 16) + back_lo)),                 # 9: a - q' * sigma
            ]
            more = left >= sigma                                             # 10: q = q' + (left >= sigma)
            m.d.sync += [quotient.eq(estimate[2] + more), exact.eq(Mux(more, left == sigma, left == 0))]
            q = Signal(signed(nb + 2))
            m.d.comb += q.eq(quotient)
            # 11: the floor for a negative product: -q - 1 = ~q when a remainder is left; 12: + bias
            m.d.sync += floored.eq(Mux(negative[-1], Mux(exact, -q, ~q), q))
            m.d.sync += out.eq(floored + bias[-1])

        def states() -> None:
            with m.State("normalize"):
                for k in range(rb):  # the highest set bit wins (root >= 1: eps >= 1)
                    with m.If(root[k]):
                        m.d.sync += [top.eq(k), normed.eq(root << (rb - 1 - k))]
                m.d.sync += [rest.eq(numerator >> r_bits), low.eq(numerator & ((1 << r_bits) - 1)),
                             recip.eq(0), step.eq(r_bits - 1)]
                m.next = "reciprocal"
            with m.State("reciprocal"):
                _restoring_step(m, rest, low, recip, normed, step)
                with m.If(step == 0):
                    m.next = "latch"
            with m.State("latch"):  # the token's constants replace the last one's once its values have left
                with m.If(~busy):
                    m.d.sync += [sigma.eq(root), factor.eq(recip), shift.eq(top + nb + 1)]
                    m.next = "values"
            with m.State("values"):
                m.d.comb += [self.i.ready.eq(advance), accept.eq(self.i.valid & advance)]
                with m.If(accept):
                    m.d.sync += count.eq(Mux(count == d - 1, 0, count + 1))
                    with m.If(count == d - 1):
                        m.next = "stats"
        return states
