"""A command-level reference model of the accelerator, built on the golden model.

It executes the same command words as the RTL and returns the answers the
RTL must give, computing every lane value with :func:`model.golden.primitive`.
The random-operation testbench uses it as the reference: commands with
arbitrary (even overflowing) arguments have one defined answer here, and
whole layers are checked against :func:`model.golden.layer_output` directly.
"""

from __future__ import annotations

import numpy as np

from hw import cycles
from hw.config import STREAM_BITS, VALUE_BITS, AccelConfig
from hw.isa import DESC_WORDS, LOAD_OPS, Op, entry_words, from_word
from model import golden


def _wrap(value: int, bits: int) -> int:
    return from_word(value & ((1 << bits) - 1), bits)


class AcceleratorModel:
    """Buffers, result buffer and cycle counter, updated command by command."""

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        c = self.config = config
        self.buffers = {
            Op.LOAD_X: np.zeros((c.x_depth, 1), dtype=object),
            Op.LOAD_Y: np.zeros((c.y_depth, c.lanes), dtype=object),
            Op.LOAD_THRESH: np.zeros((c.thresh_depth, c.lanes), dtype=object),
            Op.LOAD_PROG: np.zeros((c.prog_depth, 1), dtype=object),
        }
        self.item_words = {Op.LOAD_X: entry_words(c), Op.LOAD_Y: entry_words(c), Op.LOAD_THRESH: 1, Op.LOAD_PROG: DESC_WORDS}
        self.results = np.zeros((c.result_depth, c.lanes), dtype=object)
        self.cycles = 0

    def reset(self) -> None:
        """The hardware reset: the cycle counter clears, memories keep their contents."""
        self.cycles = 0

    def length(self, words: list[int]) -> int:
        """Words of the command that starts ``words``."""
        op = words[0] & 0xFF
        if op in LOAD_OPS:
            return 2 + (words[1] & 0xFFFF) * self.buffers[Op(op)].shape[1] * self.item_words[Op(op)]
        return {Op.RUN: 4, Op.READ: 2, Op.READ_BITS: 2}.get(op, 1)

    def feed(self, words: list[int]) -> list[int]:
        """Run a stream of complete commands; return all answer words."""
        out = []
        while words:
            size = self.length(words)
            out += self.execute(words[:size])
            words = words[size:]
        return out

    def execute(self, words: list[int]) -> list[int]:
        """Run one complete command; return its answer words."""
        op, arg = words[0] & 0xFF, words[0] >> 8
        if op in LOAD_OPS:
            return self._load(Op(op), arg, words[1], words[2:])
        if op == Op.RUN:
            self._run(arg & 1, words[1:4])
            return []
        if op in (Op.READ, Op.READ_BITS):
            return self._read(op == Op.READ_BITS, arg, words[1])
        if op == Op.READ_CYCLES:
            mask = (1 << STREAM_BITS) - 1
            return [self.cycles & mask, (self.cycles >> STREAM_BITS) & mask]
        if op == Op.RESET:
            self.cycles = 0
        return []

    def _load(self, op: Op, addr: int, count: int, data: list[int]) -> list[int]:
        buf, iw = self.buffers[op], self.item_words[op]
        items = [sum(w << (STREAM_BITS * i) for i, w in enumerate(data[k:k + iw])) for k in range(0, len(data), iw)]
        banks = buf.shape[1]
        if len(items) != (count & 0xFFFF) * banks:
            raise ValueError(f"LOAD {op.name} of {count} rows needs {count * banks} items, got {len(items)}")
        for k, item in enumerate(items):
            buf[(addr + k // banks) % buf.shape[0], k % banks] = item
        return []

    def _lane_value(self, x: int, y: int, cmode: bool) -> int:
        wb = self.config.word_bits
        top = (1 << wb) - 1
        xs, xm, ys, ym = (np.array([v], dtype=np.uint64) for v in (x & top, x >> wb, y & top, y >> wb))
        m = xm & ym
        zero = np.zeros(1, np.uint64)
        p = int(golden.primitive(m, xs, ys))
        count = int(golden.primitive(m, zero, ~zero))
        if self.config.count_c:
            return int(golden.correct(p, count))
        return count if cmode else p

    def _run(self, binary: int, args: list[int]) -> None:
        c = self.config
        rows, blocks = args[0] & 0xFFFF, args[0] >> 16
        words, passes = args[1] & ((1 << c.words_bits) - 1), args[1] >> 16
        offset = _wrap(args[2], c.acc_bits)
        self.cycles += cycles.run_cycles(c, cycles.items(rows, blocks, passes, words))
        if 0 in (rows, blocks, words, passes):
            return
        X, Y, T, prog = (self.buffers[op] for op in (Op.LOAD_X, Op.LOAD_Y, Op.LOAD_THRESH, Op.LOAD_PROG))
        for a in range(rows):
            for blk in range(blocks):
                acc = [offset] * c.lanes
                for p in range(passes):
                    d = int(prog[p % c.prog_depth, 0])
                    x_base, y_base = d & 0xFFFFFF, (d >> 32) & 0xFFFFFF
                    shift = (d >> 56) & ((1 << c.shift_bits) - 1)
                    cmode = bool(d >> 63 & 1)
                    coef = _wrap(d >> 64, c.coef_bits)
                    for lane in range(c.lanes):
                        total = sum(
                            self._lane_value(
                                int(X[(x_base + a * words + t) % c.x_depth, 0]),
                                int(Y[(y_base + blk * words + t) % c.y_depth, lane]), cmode)
                            for t in range(words))
                        acc[lane] = _wrap(acc[lane] + (coef * _wrap(total, c.row_value_bits) << shift), c.acc_bits)
                if binary:
                    acc = [self._compare(v, int(T[blk % c.thresh_depth, lane])) for lane, v in enumerate(acc)]
                self.results[(a * blocks + blk) % c.result_depth] = acc

    @staticmethod
    def _compare(value: int, word: int) -> int:
        """``hw.isa.threshold_word``'s form: ``(Y >= t) XOR direction bit``."""
        return int(value >= from_word(word, VALUE_BITS)) ^ (word >> VALUE_BITS & 1)

    def _read(self, packed: bool, addr: int, count: int) -> list[int]:
        out = []
        mask = (1 << STREAM_BITS) - 1
        for k in range(count & 0xFFFF):
            entry = self.results[(addr + k) % self.config.result_depth]
            if packed:
                out.append(sum((int(v) & 1) << lane for lane, v in enumerate(entry)))
            else:
                out.extend(int(v) & mask for v in entry)
        return out
