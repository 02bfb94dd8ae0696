# amaranth: UnusedElaboratable=no
"""The whole accelerator in the Amaranth simulator against the golden model."""

import itertools
from dataclasses import replace

import numpy as np
import pytest

from hw.config import SMALL
from hw.engine import Engine
from hw.isa import Op, header
from hw.program import compile_layer, decode_result, load_words, read_words, response_length, run_words
from hw.simtools import run_commands
from model import golden
from sim.ops import random_operand

KINDS = ("bipolar", "unipolar", "ternary")


def layer_words(config, image):
    """Load, run, read the result and the cycle counter, then reset the counter."""
    return (load_words(config, image) + run_words(config, image) + read_words(image)
            + [header(Op.READ_CYCLES), header(Op.RESET)])


def run_layers(config, layers, seed, stall):
    """Run ``(groups_x, groups_y, coefs, thresholds)`` layers back to back in one simulation."""
    images = [compile_layer(config, *layer) for layer in layers]
    words = [w for image in images for w in layer_words(config, image)]
    answers = run_commands(config, words, sum(response_length(config, i) + 2 for i in images), seed=seed, stall=stall)
    out = []
    for image in images:
        size = response_length(config, image)
        out.append((decode_result(config, image, answers[:size]), answers[size], image))
        answers = answers[size + 2:]
    return out


CONFIGS = {
    "two_trees": SMALL, "one_tree": replace(SMALL, count_c=False),
    # more banks than hw.decoder.REGION_BANKS, in block RAM: loads through a register per region, a cycle later
    "eight_lanes": replace(SMALL, lanes=8, spram=()),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_every_pair_of_plane_kinds(config):
    """Random stalls on both streams; n = 13 is not a multiple of the word."""
    rng = np.random.default_rng(0)
    pairs = list(itertools.product(KINDS, KINDS))
    layers = [
        ([random_operand(rng, kx, 2, 13, config.word_bits)], [random_operand(rng, ky, 3, 13, config.word_bits)],
         rng.integers(-50, 50, (1, 1)), None)
        for kx, ky in pairs
    ]
    results = run_layers(config, layers, seed=1, stall=0.3)
    for (kx, ky), (gx, gy, coefs, _), (got, cycles, image) in zip(pairs, layers, results):
        assert np.array_equal(got, golden.layer_output(gx, gy, coefs)), (kx, ky)
        assert cycles == image.items + Engine(config).latency


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_groups_int_planes_and_thresholds(config):
    rng = np.random.default_rng(7)
    n = 17
    gx = [random_operand(rng, "int3", 2, n, 8), random_operand(rng, "unipolar", 2, n, 8)]
    gy = [random_operand(rng, "ternary", 3, n, 8)]
    coefs = np.array([[5], [-12]])
    y = golden.layer_output(gx, gy, coefs)
    thr = golden.fold_threshold(rng.normal(size=3), rng.normal(size=3), int(y.min()), int(y.max()))
    at_equality = (y[0] * np.array([1, -1, 1]), np.array([1, -1, 1], dtype=np.int8))  # row 0 meets them exactly
    layers = [(gx, gy, coefs, thr), (gx, gy, coefs, at_equality), (gx, gy, coefs, None)]
    [(bits, _, _), (edge, _, _), (raw, _, _)] = run_layers(config, layers, seed=2, stall=0.5)
    assert np.array_equal(bits, golden.apply_threshold(y, *thr))
    assert np.array_equal(edge, golden.apply_threshold(y, *at_equality)) and edge[0].all()
    assert np.array_equal(raw, y)
