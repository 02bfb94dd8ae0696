"""The lane array: the contract's primitive on one word per lane per cycle."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, Value, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.config import _check_int
from hw.cycles import lane_latency
from hw.pipeline import delay, pipe_signature
from model import golden


def plane_word(word_bits: int) -> data.StructLayout:
    """One word of one plane row: the sign word, then the mask word."""
    return data.StructLayout({"sign": word_bits, "mask": word_bits})


def popcount_tree(m: Module, bits: Value, stage_levels: int, name: str) -> Value:
    """The number of ones in ``bits``: an adder tree with a register after every
    ``stage_levels`` levels and after the last one (``ceil(log2(len(bits)) /
    stage_levels)`` cycles)."""
    values = [bits[i] for i in range(len(bits))]
    level = 0
    while len(values) > 1:
        paired = [a + b for a, b in zip(values[0::2], values[1::2])]
        values = paired + values[len(paired) * 2:]
        level += 1
        if level % stage_levels == 0 or len(values) == 1:
            regs = [Signal(Shape.cast(v.shape()), name=f"{name}_l{level}_{j}", reset_less=True)
                    for j, v in enumerate(values)]
            m.d.sync += [r.eq(v) for r, v in zip(regs, values)]
            values = regs
    return values[0]


class LaneArray(wiring.Component):
    """``lanes`` lanes computing ``popcount(m & (a ^ b))`` on ``word_bits`` bits.

    Lane ``i`` takes the broadcast ``x`` word and its own ``y[i]`` word and
    computes ``m = x.mask & y[i].mask`` and ``P = popcount(m & (x.sign ^
    y[i].sign))``, or with ``cmode`` ``C = popcount(m)`` (the contract's
    ``C``: the same primitive with ``a = 0, b = ~0``).  With ``count_c`` a
    second tree counts ``C`` alongside and the lane's value is the plane dot
    product ``D = C - 2P`` (``cmode`` is then ignored).  The popcount is an adder
    tree with a register after every ``stage_levels`` levels, so its depth
    per stage is set by a parameter, not by ``word_bits``.  The ``tag``
    payload field is delayed along, unchanged.
    """

    def __init__(
        self, word_bits: int, lanes: int, tag_shape: object, stage_levels: int = 2, count_c: bool = False
    ) -> None:
        self.word_bits = golden.check_word_bits(word_bits)
        self.lanes = _check_int(lanes, "lanes", 1)
        self.stage_levels = _check_int(stage_levels, "stage_levels", 1)
        if not isinstance(count_c, bool):
            raise TypeError(f"count_c must be a bool, got {type(count_c).__name__}")
        self.count_c = count_c
        word = plane_word(word_bits)
        super().__init__({
            "i": In(pipe_signature(data.StructLayout({
                "x": word, "y": data.ArrayLayout(word, lanes), "cmode": 1, "tag": tag_shape,
            }))),
            "o": Out(pipe_signature(data.StructLayout({
                "value": data.ArrayLayout(signed(golden.dot_bits(word_bits)), lanes), "tag": tag_shape,
            }))),
        })

    @property
    def latency(self) -> int:
        """Cycles from ``i`` to ``o``."""
        return lane_latency(self.word_bits, self.stage_levels)

    def elaborate(self, platform: object) -> Module:
        m = Module()
        x = self.i.payload.x
        for lane in range(self.lanes):
            y = self.i.payload.y[lane]
            m_word = x.mask & y.mask
            selected = Signal(self.word_bits, name=f"sel{lane}", reset_less=True)
            if self.count_c:
                m_reg = Signal(self.word_bits, name=f"m{lane}", reset_less=True)
                m.d.sync += [selected.eq(m_word & (x.sign ^ y.sign)), m_reg.eq(m_word)]
                c = popcount_tree(m, m_reg, self.stage_levels, f"c{lane}")
                value = c - (popcount_tree(m, selected, self.stage_levels, f"p{lane}") << 1)
            else:
                m.d.sync += selected.eq(Mux(self.i.payload.cmode, m_word, m_word & (x.sign ^ y.sign)))
                value = popcount_tree(m, selected, self.stage_levels, f"p{lane}")
            m.d.comb += self.o.payload.value[lane].eq(value)
        m.d.comb += [
            self.o.valid.eq(delay(m, self.i.valid, self.latency, "lanes_valid")),
            self.o.payload.tag.eq(delay(m, self.i.payload.tag, self.latency, "lanes_tag", reset_less=True)),
        ]
        return m
