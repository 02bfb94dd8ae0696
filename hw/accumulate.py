"""Accumulation over the words of a row, then over the passes of a layer."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from hw.cycles import PASS_ACCUMULATOR_LATENCY, WORD_ACCUMULATOR_LATENCY
from hw.pipeline import delay, duplicate, pipe_signature


class WordAccumulator(wiring.Component):
    """Sums each lane's per-word values over the words of one pass.

    ``first`` starts a new sum, ``last`` emits it: ``o`` is valid once per
    pass, one cycle after its last word, with ``p`` the primitive (or ``D``)
    over the whole row, signed ``p_bits`` wide (``dot_bits(max_n)``).
    """

    def __init__(self, lanes: int, value_bits: int, p_bits: int, tag_shape: object) -> None:
        self.lanes = _check_int(lanes, "lanes", 1)
        self.value_bits = _check_int(value_bits, "value_bits", 2)
        self.p_bits = _check_int(p_bits, "p_bits", value_bits)
        super().__init__({
            "i": In(pipe_signature(data.StructLayout({
                "value": data.ArrayLayout(signed(value_bits), lanes), "first": 1, "last": 1, "tag": tag_shape,
            }))),
            "o": Out(pipe_signature(data.StructLayout({
                "p": data.ArrayLayout(signed(p_bits), lanes), "tag": tag_shape,
            }))),
        })

    latency = WORD_ACCUMULATOR_LATENCY

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i = self.i.payload
        sums = Signal.like(self.o.payload.p, reset_less=True)
        tag = Signal.like(i.tag, reset_less=True)
        with m.If(self.i.valid):
            for lane in range(self.lanes):
                m.d.sync += sums[lane].eq(Mux(i.first, 0, sums[lane]) + i.value[lane])
        m.d.sync += [self.o.valid.eq(self.i.valid & i.last), tag.eq(i.tag)]
        m.d.comb += [self.o.payload.p.eq(sums), self.o.payload.tag.eq(tag)]
        return m


#: Where :class:`PassAccumulator` splits the coefficient for its two DSP blocks.
MUL_SPLIT = 16


class PassAccumulator(wiring.Component):
    """The affine correction and the superposition: ``acc += (coef * p) << shift``.

    ``p`` is a lane's ``D`` (lanes that count ``C``) or ``P`` or ``C``;
    the host folds the contract's constants into the pass coefficients
    (``c w_k w_j`` for ``D`` and ``C``, ``-2 c w_k w_j`` for ``P``) and the
    terms with ``C = n`` into ``offset``; see ``docs/accelerator.md``.  ``first``
    restarts the accumulator at ``offset``, ``last`` emits it.  Seven
    stages: the shift; its split into two halves; a copy of the halves and of
    ``first`` per lane (:func:`hw.pipeline.duplicate`: one register cannot
    reach the multipliers of 16 lanes in a 100 MHz cycle on the ECP5); the
    two half products, one DSP block each, registered twice (the first
    register by the DSP block); their sum; the add.  The halves
    split the coefficient at :data:`MUL_SPLIT` bits with a signed low half
    (``coef = hi * 2**MUL_SPLIT + lo``, ``lo`` in ``-2**15..2**15-1``), so
    each half product fits one 16 x 16 SB_MAC16 or 18 x 18 MULT18X18D.  The accumulator wraps modulo
    ``2**acc_bits``, so the coefficient is shifted once for all lanes,
    modulo ``2**acc_bits`` (``(coef << shift) * p`` and ``(coef * p) << shift``
    agree there), and each lane has an ``acc_bits x p_bits`` multiplier (DSP
    blocks) and no shifter: a shifter per lane cost about 120 LUTs each on
    the UP5K, and the shift amount's fan-out to all of them was the ECP5's
    longest path.
    """

    def __init__(
        self, lanes: int, p_bits: int, coef_bits: int, shift_bits: int, acc_bits: int, tag_shape: object
    ) -> None:
        self.lanes = _check_int(lanes, "lanes", 1)
        self.p_bits = _check_int(p_bits, "p_bits", 1)
        self.coef_bits = _check_int(coef_bits, "coef_bits", 2)
        self.shift_bits = _check_int(shift_bits, "shift_bits", 0)
        self.acc_bits = _check_int(acc_bits, "acc_bits", 2)
        super().__init__({
            "i": In(pipe_signature(data.StructLayout({
                "p": data.ArrayLayout(signed(p_bits), lanes), "coef": signed(coef_bits), "shift": shift_bits,
                "first": 1, "last": 1, "tag": tag_shape,
            }))),
            "offset": In(signed(acc_bits)),
            "o": Out(pipe_signature(data.StructLayout({
                "value": data.ArrayLayout(signed(acc_bits), lanes), "tag": tag_shape,
            }))),
        })

    latency = PASS_ACCUMULATOR_LATENCY

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i = self.i.payload
        # stage 1: the shift; stage 2: the halves; stage 3: per-lane copies of
        # them; stages 4 and 5: the half products; stage 6: their sum; stage 7: the add
        a = self.acc_bits
        scaled = Signal(signed(a), reset_less=True)
        low = Signal(signed(MUL_SPLIT), reset_less=True)
        high = Signal(signed(max(1, a - MUL_SPLIT + 1)), reset_less=True)
        m.d.sync += scaled.eq((i.coef << i.shift)[:a].as_signed())
        m.d.sync += [low.eq(scaled), high.eq((scaled - scaled[:MUL_SPLIT].as_signed()) >> MUL_SPLIT)]
        lows = duplicate(m, low, self.lanes, "coef_lo")
        highs = duplicate(m, high, self.lanes, "coef_hi")
        p = delay(m, i.p, 3, "p", reset_less=True)
        products = [Signal(signed(a), name=f"prod{lane}", reset_less=True) for lane in range(self.lanes)]
        for lane, prod in enumerate(products):
            lo_prod = Signal(signed(MUL_SPLIT + self.p_bits), name=f"prod_lo{lane}", reset_less=True)
            hi_prod = Signal(signed(len(high) + self.p_bits), name=f"prod_hi{lane}", reset_less=True)
            m.d.sync += [lo_prod.eq(lows[lane] * p[lane]), hi_prod.eq(highs[lane] * p[lane])]
            # registered again: the first register sits by its DSP block
            lo_prod, hi_prod = (delay(m, v, 1, f"{v.name}_r", reset_less=True) for v in (lo_prod, hi_prod))
            m.d.sync += prod.eq(((hi_prod << MUL_SPLIT) + lo_prod)[:a].as_signed())
        valid = delay(m, self.i.valid, 6, "valid")
        firsts = duplicate(m, delay(m, i.first, 5, "first", reset_less=True), self.lanes, "first")
        last = delay(m, i.last, 6, "last", reset_less=True)
        accs = Signal.like(self.o.payload.value, reset_less=True)
        with m.If(valid):
            for lane, (first, term) in enumerate(zip(firsts, products)):
                m.d.sync += accs[lane].eq(Mux(first, self.offset, accs[lane]) + term)
        m.d.sync += self.o.valid.eq(valid & last)
        m.d.comb += [self.o.payload.value.eq(accs),
                     self.o.payload.tag.eq(delay(m, i.tag, self.latency, "pass_tag", reset_less=True))]
        return m
