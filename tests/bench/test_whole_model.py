"""bench.whole_model: the whole-model design's cycles and stores, by arithmetic on an integer program."""

import numpy as np
import pytest

from bench.whole_model import budget, products, quantizer_inputs, stores, unit_cycles
from host.compiled_program import CompiledProgram
from hw.config import DEFAULT
from hw.layernorm import LayerNorm
from model import intvit
from model.random_model import TINY, random_integer_model


@pytest.fixture(scope="module")
def program() -> intvit.IntegerProgram:
    return intvit.program(random_integer_model(seed=11))


def test_the_products_are_the_ones_the_compiled_program_counts(program):
    """The same engine cycles as CompiledProgram counts while it runs an image (its lanes, the model's words)."""
    compiled = CompiledProgram(program)
    compiled.logits(np.zeros((1, TINY.in_channels, TINY.image_size, TINY.image_size), np.int64))
    counted = sum(p.cycles(program.model.word_bits, DEFAULT.lanes) for p in products(program))
    assert counted == compiled.cycles() > 0


def test_every_quantizer_of_the_program_is_counted_once(program):
    inputs = quantizer_inputs(program)
    assert set(inputs) == {key[:-len(".hi")] for key in program.arrays if key.endswith(".hi")}
    t, d = TINY.tokens, TINY.dim
    assert inputs["blocks.0.attn.qkv.in"] == (t * d, intvit.NORM_BITS + 1)
    assert inputs["blocks.0.mlp.fc2.in"][0] == t * TINY.mlp_hidden


def test_layernorm_cycles_are_every_token_norm_of_an_image(program):
    norms = 2 * TINY.tokens * TINY.depth + len(program.head_names)
    assert unit_cycles(program)["layernorm"] == norms * LayerNorm(TINY.dim, 16, 16).cycles_per_token
    fast = LayerNorm(TINY.dim, 16, 16, divider="reciprocal")
    assert unit_cycles(program, "reciprocal")["layernorm"] == norms * (fast.cycles_per_token + fast.PIPELINE)


def test_stores_hold_every_table_array_and_the_weights(program):
    rows = {r["store"]: r for r in stores(program)}
    levels = program.arrays["blocks.0.attn.levels"]
    assert rows["blocks.0.attn.levels"]["entries"] == levels.size
    qkv = program.model.layers["blocks.0.attn.qkv"]
    assert rows["blocks.0.attn.qkv weights"]["entries"] == qkv.out_features * qkv.in_features
    assert rows["head weights"]["bits"] == 8
    assert all(r["kbit"] == round(r["entries"] * r["bits"] / 1024, 1) for r in rows.values())


def test_budget_gives_each_board_its_cycles_and_images_per_second(program):
    result = budget(program, ["icebreaker", "ulx3s"])
    for b in result["boards"]:
        assert b["cycles"] == b["engine_cycles"] + sum(b["unit_cycles"].values())
        assert b["images_per_s"] == pytest.approx(b["clock_mhz"] * 1e6 / b["cycles"], abs=0.1)
        hidden = b["unit_cycles"]["multithreshold"] + b["unit_cycles"]["requantize"]
        assert b["streamed_cycles"] == b["cycles"] - hidden > b["engine_cycles"]
    ice, ecp = result["boards"]
    assert ice["engine_cycles"] > ecp["engine_cycles"]  # 4 lanes x 8 bits against 16 x 32
    assert ice["unit_cycles"]["layernorm"] > ecp["unit_cycles"]["layernorm"]  # serial against reciprocal
