# amaranth: UnusedElaboratable=no
"""The cycle model, pinned to the RTL: runs of the simulated accelerator take exactly its cycles."""

from dataclasses import replace

import numpy as np
import pytest

from hw import cycles
from hw.config import PRESETS, SMALL
from hw.engine import Engine
from hw.isa import Op, header, run_args
from hw.program import compile_chunks, layer_cycles, load_words, read_words, response_length, run_words
from hw.simtools import run_commands
from sim.ops import random_operand

CONFIGS = {
    "small": SMALL,
    "one_tree": replace(SMALL, count_c=False),
    "one_level_a_stage": replace(SMALL, stage_levels=1),
    "wide_words": replace(SMALL, word_bits=16, lanes=3),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_a_layer_in_runs_takes_the_modelled_cycles_in_the_gateware(config):
    """A layer split into runs (results beyond the result buffer), then an empty run: the RTL's cycle counter."""
    rng = np.random.default_rng(0)
    n, rows_x = 13, 8
    rows_y = 2 * (config.result_depth // rows_x) * config.lanes + 1  # three runs, the last of one block
    gx = [random_operand(rng, "ternary", rows_x, n, config.word_bits)]
    gy = [random_operand(rng, kind, rows_y, n, config.word_bits) for kind in ("bipolar", "unipolar")]
    chunks = compile_chunks(config, gx, gy, rng.integers(-9, 9, (1, 2)))
    assert len(chunks) > 1
    words = []
    for _, image in chunks:
        words += load_words(config, image) + run_words(config, image) + read_words(image)
    empty = [header(Op.RUN)] + run_args(config, 0, 1, 1, 1, 0)
    answers = sum(response_length(config, image) for _, image in chunks)
    *_, lo, hi, empty_lo, _ = run_commands(config, words + [header(Op.READ_CYCLES)] + empty + [header(Op.READ_CYCLES)],
                                           answers + 4)
    busy = lo | hi << 32
    passes = chunks[0][1].passes
    assert busy == sum(image.busy_cycles(config) for _, image in chunks) == layer_cycles(config, rows_x, rows_y, n, passes)
    assert empty_lo - busy == cycles.run_cycles(config, 0) == cycles.EMPTY_RUN_CYCLES


@pytest.mark.parametrize("config", [*PRESETS.values(), *CONFIGS.values()])
def test_the_engine_has_the_modelled_latency(config):
    assert Engine(config).latency == cycles.engine_latency(config) == (
        cycles.ISSUE_LATENCY + cycles.lane_latency(config.word_bits, config.stage_levels)
        + cycles.WORD_ACCUMULATOR_LATENCY + cycles.PASS_ACCUMULATOR_LATENCY + cycles.THRESHOLD_LATENCY)


def test_lane_latency_is_a_register_per_stage_of_the_tree():
    assert cycles.lane_latency(8, 3) == 2
    assert cycles.lane_latency(64, 2) == 4
    assert cycles.lane_latency(64, 1) == 7


def test_ideal_cycles_count_every_plane_pair_without_latency():
    rng = np.random.default_rng(1)
    x = random_operand(rng, "int2", 3, 70, 32)      # 2 planes of 3 words
    w = random_operand(rng, "ternary", 9, 70, 32)   # 1 plane: 3 blocks of 4 rows
    assert cycles.ideal_cycles([x], [w, w], 4) == 2 * (3 * 3 * 2 * 3)
