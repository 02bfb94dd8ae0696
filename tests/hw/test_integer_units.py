# amaranth: UnusedElaboratable=no
"""The integer units on one forward of an integer program, at the contract's widths.

A random GSB-shaped integer program (:func:`model.random_model.random_integer_model`)
runs two images through :func:`model.intvit.forward` with its trace kept;
each non-matmul step of the first block, the heads and the class is then
recomputed by its unit from the traced inputs and the program's own
constants, and must equal the traced output.
"""

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory

from hw.argmax import Argmax
from hw.config import ceil_log2
from hw.layernorm import LayerNorm
from hw.multithreshold import MultiThreshold, PipelinedMultiThreshold, row_layout, threshold_layout, threshold_rows, threshold_words
from hw.requantize import Requantize
from hw.softmax import SoftmaxLevels, level_words
from hw.streamsim import run_batches, run_stream
from model import intops, intvit
from model.random_model import random_integer_model


@pytest.fixture(scope="module")
def traced():
    prog = intvit.program(random_integer_model(seed=3))
    images = np.random.default_rng(4).integers(0, 17, size=(2, 1, 8, 8))
    trace = intvit.Trace(keep=True)
    logits = intvit.forward(prog, images, intvit.ReferenceEngine(prog), trace)
    return prog, trace.values, logits


def _signed_bits(bound: int) -> int:
    """Signed width of -bound..bound."""
    return bound.bit_length() + 1


def test_layer_norms(traced):
    prog, values, _ = traced
    p, a, d = prog.params, prog.arrays, prog.model.architecture.dim
    dut = LayerNorm(d, intvit.RESIDUAL_BITS, intvit.NORM_BITS, 40)
    cases = [("blocks.0.norm1", values["embed"][0, :3]), ("blocks.0.norm2", values["blocks.0.attn.residual"][1, -2:]),
             ("norm", values["blocks.1.mlp.residual"][:, 0])]
    batches = []
    for name, tokens in cases:
        async def setup(ctx, eps=p[f"{name}.eps"]):
            ctx.set(dut.eps, eps)
        items = []
        for x in tokens:
            items += [{"x": int(v), "gain": 0, "bias": 0} for v in x]
            items += [{"x": int(v), "gain": int(g), "bias": int(b)} for v, g, b in zip(x, a[f"{name}.gain"], a[f"{name}.bias"])]
        batches.append((setup, items, tokens.size))
    got, _ = run_batches(dut, dut.i, dut.o, batches)
    want = np.concatenate([values["blocks.0.norm1"][0, :3], values["blocks.0.norm2"][1, -2:], values["head.norm"]])
    assert np.array_equal(np.array(got).reshape(-1, d), want)
    assert np.abs(want).max() < 1 << (intvit.NORM_BITS - 1)  # the contract's bound: the int16 output


@pytest.mark.parametrize("unit", [MultiThreshold, PipelinedMultiThreshold])
@pytest.mark.parametrize("name, source, width", [
    ("blocks.0.attn.qkv.in", "blocks.0.norm1", lambda prog: intvit.NORM_BITS),
    ("blocks.0.attn.q", "blocks.0.attn.qkv", lambda prog: prog.model.layers["blocks.0.attn.qkv"].accumulator_bits),
    ("blocks.0.mlp.fc2.in", "blocks.0.mlp.fc1", lambda prog: prog.model.layers["blocks.0.mlp.fc1"].accumulator_bits),
])
def test_multithresholds(traced, name, source, width, unit):
    """A sign on a LayerNorm output, a sign on the qkv accumulator and the GELU fold on fc1's.

    (This random program's GELU fold has no downward threshold in range:
    ``tests/hw/test_multithreshold.py`` checks a two-sided one exhaustively.)
    """
    prog, values, _ = traced
    hi, lo, base = prog.arrays[f"{name}.hi"], prog.arrays[f"{name}.lo"], prog.params[f"{name}.base"]
    y = values[source].reshape(-1, values[source].shape[-1])[:, :hi.shape[0]][:3]  # three tokens, q's columns of qkv
    want = values[name].reshape(-1, hi.shape[0])[:3]
    in_bits = width(prog)
    dut = unit(in_bits, hi.shape[0], hi.shape[1], 4)
    m = Module()
    m.submodules.dut = dut
    if unit is MultiThreshold:
        mem = Memory(shape=threshold_layout(in_bits), depth=hi.size, init=threshold_words(hi, lo, in_bits))
    else:
        mem = Memory(shape=row_layout(in_bits, hi.shape[1]), depth=hi.shape[0], init=threshold_rows(hi, lo, in_bits))
    m.submodules.mem = mem
    wiring.connect(m, mem.read_port(), dut.thresh)

    async def setup(ctx):
        ctx.set(dut.base, base)

    items = [{"value": int(v), "channel": c} for row in y for c, v in enumerate(row)]
    got, _ = run_stream(m, dut.i, dut.o, items, len(items), setup=setup)
    assert np.array_equal(np.array(got).reshape(want.shape), want)


def _requantize(dut, layers):
    batches = []
    for mult, shift, y, r, bias in layers:
        async def setup(ctx, mult=mult, shift=shift):
            ctx.set(dut.multiplier, mult)
            ctx.set(dut.shift, shift)
        batches.append((setup, [{"y": int(u), "r": int(v), "bias": int(w)} for u, v, w in zip(y, r, bias)], len(y)))
    return np.array(run_batches(dut, dut.i, dut.o, batches)[0], np.int64)


def test_residual_adds_and_patch_embedding(traced):
    """R = sat16(R + rq(Y) + b) after proj and fc2, and the patch tokens: sat16(tokens + rq(E) + b) (one channel)."""
    prog, values, _ = traced
    p, a = prog.params, prog.arrays
    layers, want = [], []
    for name, prev, y_name, out in (("blocks.0.attn.proj.out", "embed", "blocks.0.attn.proj", "blocks.0.attn.residual"),
                                    ("blocks.0.mlp.fc2.out", "blocks.0.attn.residual", "blocks.0.mlp.fc2", "blocks.0.mlp.residual")):
        r, y = values[prev][0, :4].reshape(-1), values[y_name][0, :4].reshape(-1)
        layers.append((p[f"{name}.multiplier"], p[f"{name}.shift"], y, r, np.resize(a[f"{name}.bias"], len(y))))
        want.append(values[out][0, :4].reshape(-1))
    first = prog.model.architecture.tokens - prog.model.architecture.num_patches
    y = values["patch_embed.c0"][:3].reshape(-1)  # the first image's first three patches
    layers.append((p["patch_embed.c0.multiplier"], p["patch_embed.c0.shift"], y, a["tokens"][first:first + 3].reshape(-1),
                   np.resize(a["patch_embed.bias"], len(y))))
    want.append(values["embed"][0, first:first + 3].reshape(-1))
    y_bits = max(prog.model.layers[n].accumulator_bits for n in ("blocks.0.attn.proj", "blocks.0.mlp.fc2"))
    y_bits = max(y_bits, _signed_bits(127 * p["pixel_max"] * prog.model.architecture.patch_size**2))
    dut = Requantize(y_bits, intvit.RESIDUAL_BITS, 26, intvit.RESIDUAL_BITS, intvit.MULTIPLIER_BITS, 6)
    assert np.array_equal(_requantize(dut, layers), np.concatenate(want))


def test_scores_logits_and_class(traced):
    """Scores rq(QK^T) (r = b = 0), the logits summed over both heads (r = the running sum), then the class."""
    prog, values, logits = traced
    p, a, arch = prog.params, prog.arrays, prog.model.architecture
    qk = values["blocks.0.attn.qk"][0, 0, :2].reshape(-1)
    zeros = np.zeros(len(qk), np.int64)
    qk_bits = prog.model.layers["blocks.0.attn.qk"].accumulator_bits(arch.head_dim)
    dut = Requantize(qk_bits, 2, 2, 32, intvit.MULTIPLIER_BITS, 6)
    scores = _requantize(dut, [(p["blocks.0.attn.scores.multiplier"], p["blocks.0.attn.scores.shift"], qk, zeros, zeros)])
    assert np.array_equal(scores, values["blocks.0.attn.scores"][0, 0, :2].reshape(-1))

    head_bits = _signed_bits(127 * (1 << (intvit.NORM_BITS - 1)) * arch.dim)
    dut = Requantize(head_bits, intvit.LOGIT_BITS, intvit.LOGIT_BITS, intvit.LOGIT_BITS, intvit.MULTIPLIER_BITS, 6)
    first = _requantize(dut, [(p["head.multiplier"], p["head.shift"], values["head"].reshape(-1),
                               np.zeros(values["head"].size, np.int64), np.tile(a["head.bias"], 2))])
    summed = _requantize(dut, [(p["head_dist.multiplier"], p["head_dist.shift"], values["head_dist"].reshape(-1),
                                first, np.tile(a["head_dist.bias"], 2))])
    assert np.array_equal(summed.reshape(logits.shape), logits)

    dut = Argmax(intvit.LOGIT_BITS, arch.num_classes)
    items = [{"value": int(v), "last": j == arch.num_classes - 1} for row in logits for j, v in enumerate(row)]
    got, _ = run_stream(dut, dut.i, dut.o, items, len(logits))
    assert [g.index for g in got] == intops.argmax(logits).tolist()


def test_attention_levels(traced):
    """GSB's three step levels of every row of block 0, both heads, both images."""
    prog, values, _ = traced
    p, a, arch = prog.params, prog.arrays, prog.model.architecture
    t, heads = arch.tokens, arch.heads
    counts = intvit.level_counts(prog.model.layers["blocks.0.attn.av"])
    words, per_row = level_words(a["blocks.0.attn.levels"])
    table = a["exp_table"]
    scores = values["blocks.0.attn.scores"]
    m = Module()
    m.submodules.dut = dut = SoftmaxLevels(24, t, len(table), tuple(counts), p["attn_frac"], 16, 17, ceil_log2(len(words)))
    m.submodules.table = tmem = Memory(shape=16, depth=len(table), init=[int(e) for e in table])
    m.submodules.thresh = amem = Memory(shape=17, depth=len(words), init=words)
    wiring.connect(m, tmem.read_port(), dut.table)
    wiring.connect(m, amem.read_port(), dut.thresh)
    items = [{"score": int(scores[b, h, i, j]), "last": j == t - 1, "base": (h * t + i) * per_row}
             for b in range(len(scores)) for h in range(heads) for i in range(t) for j in range(t)]
    got, _ = run_stream(m, dut.i, dut.o, items, len(items))
    codes = np.array([[c[g] for g in range(len(counts))] for c in got]).T.reshape(len(counts), *scores.shape)
    assert np.array_equal(codes, values["blocks.0.attn.codes"])
    assert 0 < codes.mean() < 1  # levels both passed and not
