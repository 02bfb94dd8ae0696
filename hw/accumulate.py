"""Accumulation over the words of a row, then over the passes of a layer."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from hw.pipeline import delay, pipe_signature


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

    latency = 1

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i = self.i.payload
        with m.If(self.i.valid):
            for lane in range(self.lanes):
                base = Mux(i.first, 0, self.o.payload.p[lane])
                m.d.sync += self.o.payload.p[lane].eq(base + i.value[lane])
        m.d.sync += [
            self.o.valid.eq(self.i.valid & i.last),
            self.o.payload.tag.eq(i.tag),
        ]
        return m


class PassAccumulator(wiring.Component):
    """The affine correction and the superposition: ``acc += (coef * p) << shift``.

    ``p`` is a lane's ``D`` (lanes that count ``C``) or ``P`` or ``C``;
    the host folds the contract's constants into the pass coefficients
    (``c w_k w_j`` for ``D`` and ``C``, ``-2 c w_k w_j`` for ``P``) and the
    terms with ``C = n`` into ``offset``; see ``docs/accelerator.md``.  ``first``
    restarts the accumulator at ``offset``, ``last`` emits it.  Three
    stages: the product (one multiplier per lane, DSP blocks), the shift and
    the add.
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

    latency = 3

    def elaborate(self, platform: object) -> Module:
        m = Module()
        i = self.i.payload
        # stage 1: the product; stage 2: the shift; stage 3: the add
        products = [Signal(signed(self.coef_bits + self.p_bits), name=f"prod{lane}") for lane in range(self.lanes)]
        shifted = [Signal(signed(self.acc_bits), name=f"shifted{lane}") for lane in range(self.lanes)]
        shift = Signal(self.shift_bits)
        m.d.sync += [*(prod.eq(i.coef * i.p[lane]) for lane, prod in enumerate(products)), shift.eq(i.shift)]
        m.d.sync += [term.eq(prod << shift) for term, prod in zip(shifted, products)]
        valid, first, last = (delay(m, v, 2, name) for v, name in ((self.i.valid, "valid"), (i.first, "first"), (i.last, "last")))
        with m.If(valid):
            for lane, term in enumerate(shifted):
                acc = self.o.payload.value[lane]
                m.d.sync += acc.eq(Mux(first, self.offset, acc) + term)
        m.d.sync += self.o.valid.eq(valid & last)
        m.d.comb += self.o.payload.tag.eq(delay(m, i.tag, self.latency, "pass_tag"))
        return m
