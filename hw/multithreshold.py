"""MultiThreshold: an integer into a quantizer's code, ``base + #(y >= hi[c, k]) + #(y <= lo[c, k])``.

The gateware form of :func:`model.intops.multithreshold` (numeric contract,
section 11): every quantizer of the integer program on an integer input (a
sign, a step, a ternary, PTQ's ``int<b>``, and fc2's GELU fold with its
downward thresholds ``lo``) is one of these.
"""

from __future__ import annotations

import numpy as np
from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import ReadPort
from amaranth.lib.wiring import In, Out

from hw.config import _check_int, ceil_log2


def threshold_layout(in_bits: int) -> data.StructLayout:
    """One memory word: the ``hi`` and ``lo`` threshold of one channel and level, ``in_bits + 1`` bits each."""
    return data.StructLayout({"hi": signed(in_bits + 1), "lo": signed(in_bits + 1)})


def threshold_words(hi: np.ndarray, lo: np.ndarray, in_bits: int) -> list[dict[str, int]]:
    """The threshold memory's contents for the contract's ``hi`` and ``lo`` (channels, K): word ``c*K + k``.

    A threshold outside a ``in_bits``-wide input's range is clamped to one
    past it (``hi`` above the range to ``max + 1``, never reached; ``lo``
    below it to ``min - 1``; a ``hi`` below the range to ``min``, always
    reached, and a ``lo`` above it to ``max``), so every code is unchanged
    and each threshold fits ``in_bits + 1`` bits whatever the export chose
    (the schema allows up to 2**40).
    """
    hi, lo = np.asarray(hi), np.asarray(lo)
    if hi.dtype.kind not in "iu" or lo.dtype.kind not in "iu":
        raise TypeError("hi and lo must be integer arrays")
    if hi.ndim != 2 or hi.shape != lo.shape:
        raise ValueError(f"hi and lo must have the same shape (channels, K), got {hi.shape} and {lo.shape}")
    in_bits = _check_int(in_bits, "in_bits", 1)
    y_min, y_max = -(1 << (in_bits - 1)), (1 << (in_bits - 1)) - 1
    hi = np.clip(hi.astype(object), y_min, y_max + 1)
    lo = np.clip(lo.astype(object), y_min - 1, y_max)
    return [{"hi": int(h), "lo": int(w)} for h, w in zip(hi.reshape(-1), lo.reshape(-1))]


class MultiThreshold(wiring.Component):
    """``code = base + #{k: y >= hi[c, k]} + #{k: y <= lo[c, k]}``, one level a cycle.

    Parameters: ``in_bits`` (the signed input's width, the accumulator or
    LayerNorm output), ``channels``, ``levels`` (K, the same for every
    channel) and ``code_bits`` (the signed width of ``base`` and the code).

    ``i`` carries ``{value, channel}``; ``base`` is held for a layer (the
    encoding's lowest code). The thresholds are read through ``thresh``, a
    synchronous memory read port of :func:`threshold_layout` words, word
    ``channel*K + k`` (:func:`threshold_words`). Per input: the accept cycle
    presents the first address; the next registers the first word (block
    RAM output is slow on the ECP5); each of the next K cycles compares one
    level's ``hi`` and ``lo`` (two comparators) while the next word is read
    and registered; then ``o`` holds the code until it is taken. Latency
    K + 2 cycles from the accept to ``o.valid``; one input every K + 3
    cycles with a ready sink. The code wraps modulo ``2**code_bits``: the contract's codes (the
    encoding's range) fit by choice of ``code_bits``.
    """

    def __init__(self, in_bits: int, channels: int, levels: int, code_bits: int) -> None:
        self.in_bits = _check_int(in_bits, "in_bits", 2, 48)
        self.channels = _check_int(channels, "channels", 1, 1 << 16)
        self.levels = _check_int(levels, "levels", 1, 1 << 12)
        self.code_bits = _check_int(code_bits, "code_bits", 2, 32)
        if (2 * levels).bit_length() + 1 > code_bits:
            raise ValueError(f"code_bits must hold the count 0..{2 * levels} of {levels} levels as a signed value: "
                             f"at least {(2 * levels).bit_length() + 1}, got {code_bits}")
        self.addr_bits = ceil_log2(channels * levels)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": signed(in_bits), "channel": unsigned(max(1, ceil_log2(channels)))}))),
            "base": In(signed(code_bits)),
            "thresh": In(ReadPort.Signature(addr_width=self.addr_bits, shape=threshold_layout(in_bits))),
            "o": Out(stream.Signature(signed(code_bits))),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        levels = self.levels
        value = Signal(signed(self.in_bits), reset_less=True)
        addr = Signal(self.addr_bits, reset_less=True)
        k = Signal(range(levels + 1), reset_less=True)
        count = Signal(range(2 * levels + 1), reset_less=True)
        word = Signal.like(self.thresh.data, reset_less=True)  # registered: the ECP5's block RAM output is slow
        hits = (value >= word.hi).as_unsigned() + (value <= word.lo).as_unsigned()
        m.d.comb += self.o.payload.eq(self.base + count)
        with m.FSM():
            with m.State("idle"):
                m.d.comb += [self.i.ready.eq(1), self.thresh.addr.eq(self.i.payload.channel * levels)]
                with m.If(self.i.valid):
                    m.d.sync += [value.eq(self.i.payload.value), addr.eq(self.i.payload.channel * levels + 1),
                                 k.eq(0), count.eq(0)]
                    m.next = "read"
            with m.State("read"):  # word 0 on the port: register it, read word 1
                m.d.comb += self.thresh.addr.eq(addr)
                m.d.sync += [word.eq(self.thresh.data), addr.eq(addr + 1)]
                m.next = "compare"
            with m.State("compare"):  # word k registered, word k + 1 on the port; read word k + 2
                m.d.comb += self.thresh.addr.eq(addr)
                m.d.sync += [count.eq(count + hits), word.eq(self.thresh.data), k.eq(k + 1), addr.eq(addr + 1)]
                with m.If(k == levels - 1):
                    m.next = "out"
            with m.State("out"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "idle"
        return m


def row_layout(in_bits: int, levels: int) -> data.StructLayout:
    """One memory word of :class:`PipelinedMultiThreshold`: a channel's K ``hi`` and K ``lo`` thresholds."""
    return data.StructLayout({"hi": data.ArrayLayout(signed(in_bits + 1), levels),
                              "lo": data.ArrayLayout(signed(in_bits + 1), levels)})


def threshold_rows(hi: np.ndarray, lo: np.ndarray, in_bits: int) -> list[dict[str, list[int]]]:
    """The memory of :class:`PipelinedMultiThreshold`: word ``c`` holds channel ``c``'s levels, clamped as :func:`threshold_words`."""
    words = threshold_words(hi, lo, in_bits)
    levels = np.asarray(hi).shape[1]
    return [{"hi": [w["hi"] for w in words[c:c + levels]], "lo": [w["lo"] for w in words[c:c + levels]]}
            for c in range(0, len(words), levels)]


class PipelinedMultiThreshold(wiring.Component):
    """:class:`MultiThreshold` with every level compared at once: one value a cycle.

    The same ports and codes, but the thresholds memory has one word per
    channel (:func:`row_layout`, :func:`threshold_rows`: all K ``hi`` and
    ``lo``), so it is ``2 K (in_bits + 1)`` bits wide, and the unit has 2K
    comparators and their count. Four stages: the accept presents the
    channel's address (the read port's ``en`` follows the pipeline, so a
    stalled word stays on the port); the word, registered (block RAM output
    is slow on the ECP5); the 2K compares, registered; ``base +`` their
    count, registered. Latency 4 cycles, one value a cycle; ``o``
    back-pressures every stage.
    """

    def __init__(self, in_bits: int, channels: int, levels: int, code_bits: int) -> None:
        self.in_bits = _check_int(in_bits, "in_bits", 2, 48)
        self.channels = _check_int(channels, "channels", 1, 1 << 16)
        self.levels = _check_int(levels, "levels", 1, 64)
        self.code_bits = _check_int(code_bits, "code_bits", 2, 32)
        if (2 * levels).bit_length() + 1 > code_bits:
            raise ValueError(f"code_bits must hold the count 0..{2 * levels} of {levels} levels as a signed value: "
                             f"at least {(2 * levels).bit_length() + 1}, got {code_bits}")
        self.addr_bits = ceil_log2(channels)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({
                "value": signed(in_bits), "channel": unsigned(max(1, ceil_log2(channels)))}))),
            "base": In(signed(code_bits)),
            "thresh": In(ReadPort.Signature(addr_width=self.addr_bits, shape=row_layout(in_bits, levels))),
            "o": Out(stream.Signature(signed(code_bits))),
        })

    latency = 4

    def elaborate(self, platform: object) -> Module:
        m = Module()
        valid = [Signal(name=f"valid{stage}") for stage in range(1, self.latency + 1)]
        advance = ~valid[-1] | self.o.ready
        value = [Signal(signed(self.in_bits), name=f"value{stage}", reset_less=True) for stage in (1, 2)]
        word = Signal.like(self.thresh.data, reset_less=True)  # registered: the ECP5's block RAM output is slow
        hits = Signal(2 * self.levels, reset_less=True)
        out = Signal(signed(self.code_bits), reset_less=True)
        m.d.comb += [self.i.ready.eq(advance), self.o.valid.eq(valid[-1]), self.o.payload.eq(out),
                     self.thresh.addr.eq(self.i.payload.channel), self.thresh.en.eq(advance)]
        compares = ([value[1] >= word.hi[k] for k in range(self.levels)] +
                    [value[1] <= word.lo[k] for k in range(self.levels)])
        with m.If(advance):
            m.d.sync += [valid[k].eq(valid[k - 1]) for k in range(1, self.latency)]
            m.d.sync += [valid[0].eq(self.i.valid), value[0].eq(self.i.payload.value),
                         word.eq(self.thresh.data), value[1].eq(value[0]), hits.eq(Cat(*compares)),
                         out.eq(self.base + sum(hits[k] for k in range(2 * self.levels)))]
        return m
