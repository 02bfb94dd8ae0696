"""The command-level reference model (the random testbench's reference) implements the contract."""

import itertools
import random
from dataclasses import replace

import numpy as np
import pytest

from hw.config import SMALL
from hw.isa import Op, header
from hw.program import compile_layer, decode_result, load_words, read_words, run_words
from hw.simtools import run_commands
from model import golden
from sim.ops import random_ops
from sim.reference import AcceleratorModel

CONFIGS = {"two_trees": SMALL, "one_tree": replace(SMALL, count_c=False)}


def _operand(rng, encoding, rows, n):
    enc = golden.Encoding.parse(encoding)
    lo, hi = enc.value_range
    values = rng.integers(lo, hi + 1, (rows, n))
    if encoding == "bipolar":
        values = np.where(values >= 0, 1, -1)
    return golden.Operand.from_values(values, enc, SMALL.word_bits)


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_layers_equal_the_golden_model(config):
    rng = np.random.default_rng(0)
    model = AcceleratorModel(config)
    for ex, ey in itertools.product(("bipolar", "unipolar", "ternary", "int3"), repeat=2):
        gx, gy = [_operand(rng, ex, 2, 11)], [_operand(rng, ey, 3, 11)]
        coefs = rng.integers(-40, 40, (1, 1))
        y = golden.layer_output(gx, gy, coefs)
        thr = golden.fold_threshold(rng.normal(size=3), rng.normal(size=3), int(y.min()), int(y.max()))
        for thresholds, expect in ((None, y), (thr, golden.apply_threshold(y, *thr))):
            image = compile_layer(config, gx, gy, coefs, thresholds)
            for words in (load_words(config, image), run_words(config, image)):
                assert model.feed(words) == []
            got = decode_result(config, image, model.feed(read_words(image)))
            assert np.array_equal(got, expect), (ex, ey, thresholds is not None)
    assert model.execute([header(Op.READ_CYCLES)])[0] > 0


def test_random_commands_equal_the_amaranth_simulation():
    """The same 150 random commands give the same answers in the model and the Amaranth simulator."""
    ops = random_ops(random.Random(9), SMALL, 150)
    model = AcceleratorModel(SMALL)
    expected = [w for _, words in ops for w in model.execute(words)]
    words = [w for _, op_words in ops for w in op_words]
    assert run_commands(SMALL, words, len(expected), seed=3, stall=0.2) == expected
