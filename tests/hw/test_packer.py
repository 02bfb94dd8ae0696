# amaranth: UnusedElaboratable=no
"""hw.packer against hw.program's x entries: alone, behind LayerNorm and the thresholds (the sequencer's first stage),
and behind SoftmaxLevels (the attention map as A V's x operand, from codes or from the engine's scores)."""

import random

from dataclasses import replace

import numpy as np
import pytest
from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.config import ceil_log2
from hw.layernorm import LayerNorm
from hw.multithreshold import PipelinedMultiThreshold, row_layout, threshold_rows
from hw.packer import KIND_CODES, EntryWriter, LaneWriter, Packer
from hw.config import DEFAULT
from hw.program import code_entries, y_layout
from hw.transpose import TransposePacker
from model.golden import Operand
from hw.requantize import Requantize
from hw.results import ResultReader
from hw.simtools import send
from hw.softmax import SoftmaxLevels, level_words
from hw.streamsim import run_batches, run_stream
from model import intops
from model.golden import PlaneKind
from model.intvit import ATTN_FRAC_BITS, EXP_FRAC_BITS, NORM_BITS, RESIDUAL_BITS, SCORE_FRAC_BITS


@pytest.mark.parametrize("kind", list(PlaneKind))
@pytest.mark.parametrize("word_bits, n", [(8, 5), (8, 16), (16, 37), (32, 64), (64, 70)])
def test_rows_of_codes_become_the_x_entries(kind, word_bits, n):
    rng = np.random.default_rng(n * word_bits)
    values = {PlaneKind.BIPOLAR: [-1, 1], PlaneKind.UNIPOLAR: [0, 1], PlaneKind.TERNARY: [-1, 0, 1]}[kind]
    codes = rng.choice(values, (3, n))
    dut = Packer(word_bits, n, kind)
    want = code_entries(codes, kind, word_bits)
    got, cycles = run_stream(dut, dut.i, dut.o, [int(c) for c in codes.ravel()], len(want), seed=n, stall=0.3)
    assert got == want
    got, cycles = run_stream(dut, dut.i, dut.o, [int(c) for c in codes.ravel()], len(want))
    assert got == want and cycles <= codes.size + 3  # a code a cycle


def test_the_row_length_and_kind_ports_change_between_layers():
    """One Packer built for rows of up to 40 codes packs, through its ports, rows of 40 bipolar, 20 unipolar
    and 33 ternary codes one layer after another (how the whole-model core reuses it)."""
    rng = np.random.default_rng(8)
    layers = [(40, PlaneKind.BIPOLAR, [-1, 1]), (20, PlaneKind.UNIPOLAR, [0, 1]), (33, PlaneKind.TERNARY, [-1, 0, 1])]
    dut = Packer(16, 40, PlaneKind.BIPOLAR)
    batches, want = [], []
    for n, kind, values in layers:
        codes = rng.choice(values, (3, n))

        async def setup(ctx, n=n, kind=kind):
            ctx.set(dut.n, n)
            ctx.set(dut.kind, KIND_CODES[kind])

        entries = code_entries(codes, kind, 16)
        batches.append((setup, [int(c) for c in codes.ravel()], len(entries)))
        want += entries
    got, _ = run_batches(dut, dut.i, dut.o, batches, seed=4, stall=0.3)
    assert got == want


def test_layernorm_thresholds_and_packer_make_a_layers_x_entries():
    """Tokens of the residual stream through LayerNorm (the reciprocal divider), a sign per channel and the
    packer: the x entries of the next linear layer's bipolar input, as the host would compile them."""
    d, word_bits = 64, 16
    rng = np.random.default_rng(2)
    tokens = rng.integers(-3000, 3000, (4, d))
    gain, bias, eps = rng.integers(-9000, 9000, d), rng.integers(-2000, 2000, d), 99
    sign_at = rng.integers(-3000, 3000, d)
    hi = np.stack([sign_at, sign_at], axis=1)  # a sign: base -1, the same threshold twice
    lo = np.full((d, 2), -(1 << 40))
    codes = intops.multithreshold(intops.layer_norm(tokens, gain, bias, eps), -1, hi, lo)

    m = Module()
    m.submodules.norm = norm = LayerNorm(d, RESIDUAL_BITS, NORM_BITS, 40, "reciprocal")
    in_bits = NORM_BITS + 1
    m.submodules.thresholds = thresholds = PipelinedMultiThreshold(in_bits, d, 2, 4)
    m.submodules.rows = rows = Memory(shape=row_layout(in_bits, 2), depth=d, init=threshold_rows(hi, lo, in_bits))
    wiring.connect(m, rows.read_port(), thresholds.thresh)
    m.submodules.packer = packer = Packer(word_bits, d, PlaneKind.BIPOLAR, code_bits=4)
    channel = Signal(range(d))  # the glue a sequencer supplies: each LayerNorm output's channel
    m.d.comb += [thresholds.i.valid.eq(norm.o.valid), norm.o.ready.eq(thresholds.i.ready),
                 thresholds.i.payload.value.eq(norm.o.payload), thresholds.i.payload.channel.eq(channel),
                 packer.i.valid.eq(thresholds.o.valid), thresholds.o.ready.eq(packer.i.ready),
                 packer.i.payload.eq(thresholds.o.payload)]
    with m.If(norm.o.valid & norm.o.ready):
        m.d.sync += channel.eq(channel + 1)
    m.d.comb += [norm.eps.eq(eps), thresholds.base.eq(-1)]
    items = []
    for x in tokens:  # each token twice: LayerNorm's statistics, then its outputs
        items += [{"x": int(v), "gain": 0, "bias": 0} for v in x]
        items += [{"x": int(v), "gain": int(g), "bias": int(b)} for v, g, b in zip(x, gain, bias)]
    want = code_entries(codes, PlaneKind.BIPOLAR, word_bits)
    got, _ = run_stream(m, norm.i, packer.o, items, len(want), seed=3, stall=0.2)
    assert got == want


@pytest.mark.parametrize("kwargs, name", [
    (dict(word_bits=12, n=4, kind=PlaneKind.BIPOLAR), "word_bits"), (dict(word_bits=8, n=0, kind=PlaneKind.BIPOLAR), "n"),
    (dict(word_bits=8, n=4, kind="bipolar"), "kind"), (dict(word_bits=8, n=4, kind=PlaneKind.TERNARY, code_bits=1), "code_bits"),
])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Packer(**kwargs)


async def _take_entries(ctx, packers: list[Packer], want: list[list[int]], got: list[list[int]], limit: int) -> None:
    """Take every packer's entries (always ready) into ``got`` until each has as many as ``want``, or ``limit`` cycles."""
    for p in packers:
        ctx.set(p.o.ready, 1)
    for _ in range(limit):
        samples = await ctx.tick().sample(*(s for p in packers for s in (p.o.valid, p.o.payload)))
        for g in range(len(packers)):
            if samples[2 + 2 * g]:
                got[g].append(int(samples[3 + 2 * g]))
        if all(len(got[g]) == len(want[g]) for g in range(len(packers))):
            return


def test_softmax_levels_and_packers_make_the_attention_operand():
    """The scores of one head through SoftmaxLevels (GSB's three steps) into a Packer per level group: the
    x entries of the A V product's three unipolar groups, as the host would compile them."""
    t, word_bits, counts = 18, 16, (1, 1, 1)
    rng = np.random.default_rng(8)
    scores = rng.integers(-400, 400, (1, t, t))
    levels = rng.integers(0, (1 << 16) + 2, (3, 1, t, t))
    table = intops.exp_table(SCORE_FRAC_BITS, EXP_FRAC_BITS)
    codes = intops.attention_codes(scores, table, levels, ATTN_FRAC_BITS, counts)  # (groups, 1, t, t)
    want = [code_entries(codes[g, 0], PlaneKind.UNIPOLAR, word_bits) for g in range(3)]

    words, per_row = level_words(levels)
    m = Module()
    m.submodules.softmax = softmax = SoftmaxLevels(16, t, len(table), counts, thresh_addr_bits=ceil_log2(len(words)))
    m.submodules.table = table_mem = Memory(shape=16, depth=len(table), init=[int(e) for e in table])
    m.submodules.thresh = thresh = Memory(shape=17, depth=len(words), init=words)
    wiring.connect(m, table_mem.read_port(), softmax.table)
    wiring.connect(m, thresh.read_port(), softmax.thresh)
    packers = [Packer(word_bits, t, PlaneKind.UNIPOLAR, 2) for _ in counts]
    for g, packer in enumerate(packers):
        m.submodules[f"packer{g}"] = packer
        # every group's packer takes the column's codes in the same cycle
        m.d.comb += [packer.i.valid.eq(softmax.o.valid & softmax.o.ready), packer.i.payload.eq(softmax.o.payload[g])]
    m.d.comb += softmax.o.ready.eq(Cat(*(p.i.ready for p in packers)).all())
    items = [{"score": int(scores[0, i, j]), "last": j == t - 1, "base": i * per_row} for i in range(t) for j in range(t)]
    got = [[] for _ in counts]

    async def bench(ctx):
        rng_stall = random.Random(4)
        await send(ctx, softmax.i, items, rng_stall, 0.2)

    async def collect(ctx):
        await _take_entries(ctx, packers, want, got, 20 * len(items))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.add_testbench(collect)
    sim.run()
    assert got == want


def test_the_attention_map_from_the_engines_scores():
    """Q K^T's accumulators of one head in the result buffer, read back (ResultReader), requantized to scores
    (Requantize, no residual), through SoftmaxLevels and a Packer per level group: A V's x operands,
    equal to the host's from intops."""
    t, lanes, word_bits, counts = 18, 4, 16, (1, 1, 1)
    rng = np.random.default_rng(12)
    y = rng.integers(-3000, 3000, (t, t))
    multiplier, shift = 23170, 14
    scores = intops.requantize(y, multiplier, shift)[None]
    levels = rng.integers(0, (1 << 16) + 2, (3, 1, t, t))
    table = intops.exp_table(SCORE_FRAC_BITS, EXP_FRAC_BITS)
    codes = intops.attention_codes(scores, table, levels, ATTN_FRAC_BITS, counts)
    want = [code_entries(codes[g, 0], PlaneKind.UNIPOLAR, word_bits) for g in range(3)]

    m = Module()
    blocks = -(-t // lanes)
    padded = np.zeros((t, blocks * lanes), np.int64)
    padded[:, :t] = y
    result = Memory(shape=data.ArrayLayout(signed(24), lanes), depth=256,
                    init=[[int(v) for v in padded[r, b * lanes:(b + 1) * lanes]] for r in range(t) for b in range(blocks)])
    m.submodules.result = result
    m.submodules.reader = reader = ResultReader(lanes, 24, 8, 5)
    wiring.connect(m, result.read_port(), reader.result)
    m.submodules.rq = rq = Requantize(24, 1, 1, 16)
    m.d.comb += [rq.multiplier.eq(multiplier), rq.shift.eq(shift),
                 rq.i.valid.eq(reader.o.valid), reader.o.ready.eq(rq.i.ready), rq.i.payload.y.eq(reader.o.payload.value)]
    words, per_row = level_words(levels)
    m.submodules.softmax = softmax = SoftmaxLevels(16, t, len(table), counts, thresh_addr_bits=ceil_log2(len(words)))
    m.submodules.table = table_mem = Memory(shape=16, depth=len(table), init=[int(e) for e in table])
    m.submodules.thresh = thresh = Memory(shape=17, depth=len(words), init=words)
    wiring.connect(m, table_mem.read_port(), softmax.table)
    wiring.connect(m, thresh.read_port(), softmax.thresh)
    # the glue a sequencer supplies: each score's column (the row's last) and its row's first level word
    column, row_base = Signal(range(t)), Signal(softmax.thresh.addr.shape())
    m.d.comb += [softmax.i.valid.eq(rq.o.valid), rq.o.ready.eq(softmax.i.ready), softmax.i.payload.score.eq(rq.o.payload),
                 softmax.i.payload.last.eq(column == t - 1), softmax.i.payload.base.eq(row_base)]
    with m.If(rq.o.valid & rq.o.ready):
        m.d.sync += [column.eq(Mux(column == t - 1, 0, column + 1)),
                     row_base.eq(Mux(column == t - 1, row_base + per_row, row_base))]
    packers = [Packer(word_bits, t, PlaneKind.UNIPOLAR, 2) for _ in counts]
    for g, packer in enumerate(packers):
        m.submodules[f"packer{g}"] = packer
        m.d.comb += [packer.i.valid.eq(softmax.o.valid & softmax.o.ready), packer.i.payload.eq(softmax.o.payload[g])]
    m.d.comb += softmax.o.ready.eq(Cat(*(p.i.ready for p in packers)).all())
    got = [[] for _ in counts]

    async def bench(ctx):
        for port, value in ((reader.rows, t), (reader.blocks, blocks), (reader.row_stride, blocks), (reader.channels, t),
                            (reader.start, 1)):
            ctx.set(port, value)
        await ctx.tick()
        ctx.set(reader.start, 0)
        await _take_entries(ctx, packers, want, got, 40 * t * t)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


@pytest.mark.parametrize("heads, head_dim, base", [(4, 16, 3), (1, 64, 0), (2, 40, 7)])
def test_q_codes_by_head_land_where_each_heads_operand_is(heads, head_dim, base):
    """A token's codes split by head (a Packer with n = head_dim) and written by the EntryWriter: at ``base``
    the host's operand of head 0, then head 1, and so on (each ``rows`` rows of head_dim codes)."""
    rows, word_bits = 5, 16
    codes = np.random.default_rng(heads + head_dim).choice([-1, 1], (rows, heads * head_dim))
    words = -(-head_dim // word_bits)
    want = [e for h in range(heads)
            for e in code_entries(codes[:, h * head_dim:(h + 1) * head_dim], PlaneKind.BIPOLAR, word_bits)]
    m = Module()
    m.submodules.packer = packer = Packer(word_bits, head_dim, PlaneKind.BIPOLAR)
    m.submodules.writer = writer = EntryWriter(2 * word_bits, 8, rows, words, heads)
    m.submodules.x = x = Memory(shape=data.ArrayLayout(2 * word_bits, 1), depth=256, init=[])
    wiring.connect(m, x.write_port(), writer.write)
    wiring.connect(m, packer.o, writer.i)
    got = []

    async def bench(ctx):
        ctx.set(writer.base, base)
        ctx.set(writer.start, 1)
        await ctx.tick()
        ctx.set(writer.start, 0)
        await send(ctx, packer.i, [int(c) for c in codes.ravel()], random.Random(heads), 0.3)
        for _ in range(10):
            if ctx.get(writer.written) == len(want):
                break
            await ctx.tick()
        got.extend(int(ctx.get(x.data[base + k])[0]) for k in range(len(want)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def _lane_writes(source: object, writer: LaneWriter, codes: np.ndarray, settings: dict, entries: int, seed: int,
                 lanes: int, m: Module) -> list[tuple[int, ...]]:
    """Send ``codes`` row-major into ``source`` with ``writer`` (set by ``settings``) behind it into a y buffer;
    the buffer's rows once the writer has written ``entries``."""
    m.submodules.y = y = Memory(shape=data.ArrayLayout(writer.entry_bits, lanes), depth=64, init=[])
    wiring.connect(m, y.write_port(granularity=1), writer.write)
    got = []

    async def bench(ctx):
        for name, value in settings.items():
            ctx.set(getattr(writer, name), value)
        ctx.set(writer.start, 1)
        await ctx.tick()
        ctx.set(writer.start, 0)
        await send(ctx, source.i, [int(c) for c in codes.ravel()], random.Random(seed), 0.3)
        for _ in range(400):
            if ctx.get(writer.written) == entries:
                break
            await ctx.tick()
        got.extend(tuple(int(v) for v in ctx.get(y.data[k])) for k in range(64))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got


def _y_rows(codes: np.ndarray, kind: PlaneKind, word_bits: int, lanes: int) -> list[tuple[int, ...]]:
    """The host's y buffer rows (hw.program.y_layout) of ``codes`` (rows, n) as one operand."""
    config = replace(DEFAULT, word_bits=word_bits, lanes=lanes)
    rows, _ = y_layout(config, [Operand.from_values(codes, kind.value, word_bits)])
    return rows


@pytest.mark.parametrize("lanes, heads, head_dim", [(4, 2, 16), (2, 3, 8)])
def test_k_codes_by_head_land_as_each_heads_y_operand(lanes, heads, head_dim):
    """K of 7 tokens through a Packer (n = head_dim) into the LaneWriter: head h's y operand (the tokens as rows)
    at base + h * head_stride, as the host lays it out."""
    tokens, word_bits, base = 7, 8, 3
    codes = np.random.default_rng(lanes + heads).choice([-1, 1], (tokens, heads * head_dim))
    words = -(-head_dim // word_bits)
    stride = -(-tokens // lanes) * words
    m = Module()
    m.submodules.packer = packer = Packer(word_bits, head_dim, PlaneKind.BIPOLAR)
    m.submodules.writer = writer = LaneWriter(2 * word_bits, lanes, 6, 4, 64)
    wiring.connect(m, packer.o, writer.i)
    got = _lane_writes(packer, writer, codes, {"base": base, "words": words, "heads": heads, "head_stride": stride},
                       tokens * heads * words, 1, lanes, m)
    for h in range(heads):
        want = _y_rows(codes[:, h * head_dim:(h + 1) * head_dim], PlaneKind.BIPOLAR, word_bits, lanes)
        assert got[base + h * stride:base + h * stride + len(want)] == [tuple(r) for r in want]


@pytest.mark.parametrize("kind", [PlaneKind.BIPOLAR, PlaneKind.TERNARY])
def test_v_transposed_lands_as_its_y_operand(kind):
    """V (tokens x channels) through the TransposePacker into the LaneWriter: V^T as a y operand (the channels
    as rows, the tokens as their words), every head's rows after the one before."""
    tokens, channels, word_bits, lanes = 18, 8, 8, 4
    codes = np.random.default_rng(9).choice([-1, 0, 1] if kind is PlaneKind.TERNARY else [-1, 1], (tokens, channels))
    words = -(-tokens // word_bits)
    m = Module()
    m.submodules.transpose = transpose = TransposePacker(word_bits, tokens, channels, kind)
    m.submodules.writer = writer = LaneWriter(2 * word_bits, lanes, 6, 4, 64)
    wiring.connect(m, transpose.o, writer.i)
    got = _lane_writes(transpose, writer, codes, {"base": 0, "words": words}, channels * words, 2, lanes, m)
    want = _y_rows(codes.T, kind, word_bits, lanes)
    assert got[:len(want)] == [tuple(r) for r in want]


def test_the_entry_writer_refuses_a_layout_its_addresses_cannot_hold():
    with pytest.raises(ValueError, match="addr_bits"):
        EntryWriter(32, 4, rows=5, words=2, heads=2)
