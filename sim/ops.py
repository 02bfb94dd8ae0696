"""Random test data: operands, and command sequences for the stress testbench."""

from __future__ import annotations

import random

import numpy as np

from hw.config import STREAM_BITS, AccelConfig
from hw.isa import Op, descriptor, entry_words, header, run_args
from model import golden

#: Relative frequency of each operation in :func:`random_ops`.
WEIGHTS = {
    "load_x": 10, "load_y": 10, "load_thresh": 6, "load_prog": 10, "run": 20,
    "read": 14, "read_bits": 10, "read_cycles": 8, "reset": 3,
}


def random_operand(rng: np.random.Generator, encoding: str, rows: int, n: int, word_bits: int) -> golden.Operand:
    """``rows`` random rows of ``n`` values of ``encoding``, packed in ``word_bits``-bit words."""
    enc = golden.Encoding.parse(encoding)
    lo, hi = enc.value_range
    values = rng.integers(lo, hi + 1, (rows, n))
    if encoding == "bipolar":
        values = np.where(values >= 0, 1, -1)
    return golden.Operand.from_values(values, enc, word_bits)


def _small_or_any(rng: random.Random, bits: int) -> int:
    """A signed ``bits``-bit value: mostly small (so that accumulators meet thresholds), sometimes any."""
    if rng.random() < 0.7:
        return rng.randint(-8, 8)
    return rng.randrange(-(1 << (bits - 1)), 1 << (bits - 1))


def _entries(rng: random.Random, config: AccelConfig, count: int) -> list[int]:
    words = []
    for _ in range(count):
        entry = rng.getrandbits(config.entry_bits)
        words += [(entry >> (STREAM_BITS * i)) & ((1 << STREAM_BITS) - 1) for i in range(entry_words(config))]
    return words


def random_op(rng: random.Random, config: AccelConfig) -> tuple[str, list[int]]:
    """One random, complete command: ``(name, words)``."""
    c = config
    name = rng.choices(list(WEIGHTS), weights=list(WEIGHTS.values()))[0]
    if name == "load_x":
        n = rng.randint(1, 3)
        return name, [header(Op.LOAD_X, rng.randrange(c.x_depth)), n] + _entries(rng, c, n)
    if name == "load_y":
        n = rng.randint(1, 2)
        return name, [header(Op.LOAD_Y, rng.randrange(c.y_depth)), n] + _entries(rng, c, n * c.lanes)
    if name == "load_thresh":
        n = rng.randint(1, 2)
        return name, [header(Op.LOAD_THRESH, rng.randrange(c.thresh_depth)), n] + [
            _small_or_any(rng, STREAM_BITS) & ((1 << STREAM_BITS) - 1) | rng.getrandbits(1) << 31
            for _ in range(n * c.lanes)]
    if name == "load_prog":
        n = rng.randint(1, 3)
        descs = [
            w for _ in range(n) for w in descriptor(
                c, rng.randrange(c.x_depth), rng.randrange(c.y_depth),
                _small_or_any(rng, c.coef_bits),
                rng.randrange(1 << c.shift_bits), rng.random() < 0.5)
        ]
        return name, [header(Op.LOAD_PROG, rng.randrange(c.prog_depth - n + 1)), n] + descs
    if name == "run":
        args = run_args(c, rng.randint(1, 3), rng.randint(1, 2), rng.randint(1, 3),
                        rng.randint(1, min(3, c.prog_depth)), _small_or_any(rng, c.acc_bits))
        return name, [header(Op.RUN, rng.randint(0, 1))] + args
    if name in ("read", "read_bits"):
        op = Op.READ if name == "read" else Op.READ_BITS
        return name, [header(op, rng.randrange(c.result_depth)), rng.randint(1, 3)]
    return name, [header(Op.READ_CYCLES if name == "read_cycles" else Op.RESET)]


def random_ops(rng: random.Random, config: AccelConfig, count: int) -> list[tuple[str, list[int]]]:
    """``count`` random commands."""
    return [random_op(rng, config) for _ in range(count)]
