"""The accelerator's cycle model: how many engine cycles a run takes.

The engine (:mod:`hw.engine`) issues one *item* a cycle, without bubbles:
one word of one x row against the same word of a block of ``lanes`` y rows,
for one pass of the layer's program.  Behind the issue the datapath is a
pipeline of fixed latency without back-pressure, so a RUN of ``rows_x`` x
rows, ``blocks`` blocks, ``passes`` passes and ``words`` words per row keeps
the engine busy for::

    rows_x * blocks * passes * words + engine_latency(config)

cycles (``docs/accelerator.md``).  Everything that counts cycles uses this
module: the compiler (:mod:`hw.program`: the cycles of a layer image, and of
a layer split into runs), the device backend (the cycle counter each run must
advance), the emulator (:func:`ideal_cycles`: the same lane work with one pass
per plane pair and no pipeline latency), and the benches.
``tests/hw/test_cycles.py`` pins it to the RTL: runs of the simulated
gateware take exactly these cycles.

Plain Python (no Amaranth): the host needs it without the HDL stack.
"""

from __future__ import annotations

from typing import Sequence

from hw.config import AccelConfig
from model import golden

#: Cycles ahead of the lane array: the start cycle, the descriptor read and
#: its register, the address add, and the operand read and its two registers.
ISSUE_LATENCY = 7
#: The word accumulator's cycles (the affine correction, :class:`hw.accumulate.WordAccumulator`).
WORD_ACCUMULATOR_LATENCY = 1
#: The pass accumulator's cycles (coefficient product, shift, sum: :class:`hw.accumulate.PassAccumulator`).
PASS_ACCUMULATOR_LATENCY = 7
#: The threshold compare's cycles (:class:`hw.threshold.Threshold`).
THRESHOLD_LATENCY = 3
#: A run with a zero count (no items) takes its start cycle, in which the engine finds it empty.
EMPTY_RUN_CYCLES = 1


def lane_latency(word_bits: int, stage_levels: int) -> int:
    """Cycles of the lane array: the input register, then one register per
    ``stage_levels`` levels of the ``log2(word_bits)``-level adder tree."""
    levels = (word_bits - 1).bit_length()
    return 1 + -(-levels // stage_levels)


def engine_latency(config: AccelConfig) -> int:
    """The fixed cycles of a run beyond one per item: every stage of the pipeline."""
    return (ISSUE_LATENCY + lane_latency(config.word_bits, config.stage_levels) + WORD_ACCUMULATOR_LATENCY
            + PASS_ACCUMULATOR_LATENCY + THRESHOLD_LATENCY)


def blocks(rows_y: int, lanes: int) -> int:
    """Blocks of ``lanes`` y rows that hold ``rows_y`` rows (the last one may be partly idle)."""
    return -(-rows_y // lanes)


def items(rows_x: int, blocks: int, passes: int, words: int) -> int:
    """The items of a run: one (x row, y block, pass, word) a cycle."""
    return rows_x * blocks * passes * words


def run_cycles(config: AccelConfig, items: int) -> int:
    """The busy cycles of a run of ``items`` items: one a cycle, then the pipeline (an empty run: its start cycle)."""
    return items + engine_latency(config) if items else EMPTY_RUN_CYCLES


def ideal_cycles(groups_x: Sequence[golden.Operand], groups_y: Sequence[golden.Operand], lanes: int) -> int:
    """The lane work of a layer: one pass per plane pair, no pipeline latency.

    Every plane pair of every group pair costs ``rows_x * ceil(rows_y /
    lanes) * words`` items, with ``words`` in the operands' own word width.
    It is what a run costs at best, the measure of a layer's work that the
    emulator counts and the benches divide by the measured cycles.
    """
    total = 0
    for gx in groups_x:
        for gy in groups_y:
            total += product_cycles([gx.encoding], [gy.encoding], gx.rows, gy.rows, gx.n, gx.word_bits, lanes)
    return total


def product_cycles(x: Sequence[golden.Encoding], y: Sequence[golden.Encoding], rows_x: int, rows_y: int, n: int,
                   word_bits: int, lanes: int) -> int:
    """:func:`ideal_cycles` of a product given by its shape: groups of encodings ``x`` and ``y``, length ``n``."""
    words = golden.words_for(n, word_bits)
    return sum(items(rows_x, blocks(rows_y, lanes), len(ex.plane_weights) * len(ey.plane_weights), words)
               for ex in x for ey in y)
