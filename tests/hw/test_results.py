# amaranth: UnusedElaboratable=no
"""hw.results and hw.residual: the engine's result entries back as values and channels, alone, into the thresholds
and the packer, and added into the residual stream in place."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.config import DEFAULT, ceil_log2
from hw.descriptor import descriptor_layout
from hw.engine import Engine
from hw.isa import DESC_FIELD_STARTS
from hw.layernorm import LayerNorm
from hw.multithreshold import PipelinedMultiThreshold, row_layout, threshold_rows
from hw.packer import EntryWriter, Packer
from hw.program import _entries, compile_layer
from hw.residual import ResidualAdd
from hw.results import ResultReader
from hw.simtools import receive, send
from model import intops
from model.golden import Encoding, Operand, PlaneKind, layer_output, pack_planes

ACC_BITS = 24
ADDR_BITS = 8


def _result_memory(y: np.ndarray, lanes: int) -> tuple[Memory, int]:
    """The result buffer a run leaves for ``y`` (rows, channels): entry ``r * blocks + b`` holds lanes ``b*lanes ...``."""
    rows, channels = y.shape
    blocks = -(-channels // lanes)
    padded = np.zeros((rows, blocks * lanes), np.int64)
    padded[:, :channels] = y
    init = [[int(v) for v in padded[r, b * lanes:(b + 1) * lanes]] for r in range(rows) for b in range(blocks)]
    shape = data.ArrayLayout(signed(ACC_BITS), lanes)
    return Memory(shape=shape, depth=1 << ADDR_BITS, init=init), blocks


def _reader(y: np.ndarray, lanes: int, channel_bits: int = 16) -> tuple[Module, ResultReader, int]:
    """A result buffer holding ``y`` and a ResultReader on it; returns the module, the reader and the blocks."""
    m = Module()
    mem, blocks = _result_memory(y, lanes)
    m.submodules.mem = mem
    m.submodules.reader = reader = ResultReader(lanes, ACC_BITS, ADDR_BITS, channel_bits)
    wiring.connect(m, mem.read_port(), reader.result)
    return m, reader, blocks


def _simulate(m: Module, reader: ResultReader, sink: object, rows: int, blocks: int, channels: int, count: int,
              stall: float, seed: int) -> tuple[list, int]:
    """Start a pass and take ``count`` payloads from ``sink``; returns them and the cycles until the reader is idle."""
    got, cycles = [], []

    async def bench(ctx):
        for port, value in ((reader.rows, rows), (reader.blocks, blocks), (reader.channels, channels),
                            (reader.start, 1)):
            ctx.set(port, value)
        await ctx.tick()
        ctx.set(reader.start, 0)
        n = 1
        rng = random.Random(seed)
        while len(got) < count or ctx.get(reader.busy):
            if n > 20 * count + 100:
                raise TimeoutError(f"{len(got)} of {count} payloads after {n} cycles")
            ready = rng.random() >= stall
            ctx.set(sink.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(sink.valid, sink.payload)
            n += 1
            if ready and valid and len(got) < count:
                got.append(payload)
        cycles.append(n)

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return got, cycles[0]


@pytest.mark.parametrize("lanes, channels", [(4, 10), (4, 8), (16, 3), (1, 5)])
@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_values_come_back_in_row_and_channel_order(lanes, channels, stall):
    rows = 3
    y = np.random.default_rng(lanes * channels).integers(-(1 << 23), 1 << 23, (rows, channels))
    m, reader, blocks = _reader(y, lanes)
    got, _ = _simulate(m, reader, reader.o, rows, blocks, channels, y.size, stall, seed=channels)
    assert [(int(g.value), int(g.channel)) for g in got] == [(int(v), c) for r in y for c, v in enumerate(r)]


def test_a_value_a_cycle_with_a_ready_sink():
    y = np.arange(5 * 12).reshape(5, 12)
    m, reader, blocks = _reader(y, 4)
    got, cycles = _simulate(m, reader, reader.o, 5, blocks, 12, y.size, 0.0, seed=0)
    assert len(got) == y.size and cycles <= y.size + 3  # start, the first read, the output register


def test_results_through_the_thresholds_and_the_packer_make_the_next_x_entries():
    """fc1's accumulators (GELU folded: two-sided thresholds, unipolar codes) to fc2's x entries."""
    rows, channels, lanes, word_bits = 3, 40, 4, 16
    rng = np.random.default_rng(7)
    y = rng.integers(-5000, 5000, (rows, channels))
    hi = np.stack([rng.integers(-500, 3000, channels), np.full(channels, 1 << 40)], axis=1)
    lo = np.stack([rng.integers(-5000, -1000, channels), np.full(channels, -(1 << 40))], axis=1)
    codes = intops.multithreshold(y, 0, hi, lo)
    (plane,) = pack_planes(codes, Encoding("unipolar"), word_bits)
    want = [int(e) for e in _entries(plane, channels, word_bits).ravel()]

    m, reader, blocks = _reader(y, lanes, ceil_log2(channels))
    m.submodules.thresholds = thresholds = PipelinedMultiThreshold(ACC_BITS, channels, 2, 4)
    m.submodules.rows = table = Memory(shape=row_layout(ACC_BITS, 2), depth=channels,
                                       init=threshold_rows(hi, lo, ACC_BITS))
    wiring.connect(m, table.read_port(), thresholds.thresh)
    m.submodules.packer = packer = Packer(word_bits, channels, PlaneKind.UNIPOLAR, 4)
    wiring.connect(m, reader.o, thresholds.i)
    wiring.connect(m, thresholds.o, packer.i)
    m.d.comb += thresholds.base.eq(0)
    got, _ = _simulate(m, reader, packer.o, rows, blocks, channels, len(want), 0.3, seed=1)
    assert [int(g) for g in got] == want


@pytest.mark.parametrize("kwargs, name", [
    (dict(lanes=0, acc_bits=24, addr_bits=8), "lanes"), (dict(lanes=4, acc_bits=1, addr_bits=8), "acc_bits"),
    (dict(lanes=4, acc_bits=24, addr_bits=0), "addr_bits"),
])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ResultReader(**kwargs)


@pytest.mark.parametrize("source", ["reader", "stalling"])
def test_the_residual_add_in_place(source):
    """proj's accumulators requantized and added into the residual memory, saturated: intops' integers, in place;
    behind the ResultReader, and from a source that stalls at random."""
    rows, channels, lanes = 4, 24, 4
    rng = np.random.default_rng(11)
    y = rng.integers(-(1 << 22), 1 << 22, (rows, channels))
    residual = rng.integers(-(1 << 15), 1 << 15, (rows, channels))
    residual[0, :3] = [32767, -32768, 32000]  # sums that saturate
    bias = rng.integers(-(1 << 20), 1 << 20, channels)
    multiplier, shift, r_base = 40503, 17, 5
    want = intops.saturate(residual + intops.requantize(y, multiplier, shift) + bias, 16)

    m, reader, blocks = _reader(y, lanes, 8)
    m.submodules.add = add = ResidualAdd(ACC_BITS, 16, 26, 8, 8)
    m.submodules.stream = stream_mem = Memory(shape=signed(16), depth=256,
                                              init=[0] * r_base + [int(v) for v in residual.ravel()])
    m.submodules.biases = biases = Memory(shape=signed(26), depth=256, init=[int(b) for b in bias])
    wiring.connect(m, stream_mem.read_port(), add.r_read)
    wiring.connect(m, stream_mem.write_port(), add.r_write)
    wiring.connect(m, biases.read_port(), add.bias)
    if source == "reader":
        wiring.connect(m, reader.o, add.i)
    m.d.comb += [add.multiplier.eq(multiplier), add.shift.eq(shift), add.r_base.eq(r_base), add.start.eq(reader.start)]
    got = []

    async def bench(ctx):
        # start pulses the reader and the add together; with no rows the reader stays idle
        for port, value in ((reader.rows, rows if source == "reader" else 0), (reader.blocks, blocks),
                            (reader.channels, channels), (reader.start, 1)):
            ctx.set(port, value)
        await ctx.tick()
        ctx.set(reader.start, 0)
        if source == "stalling":
            items = [{"value": int(v), "channel": c} for r in y for c, v in enumerate(r)]
            await send(ctx, add.i, items, random.Random(2), 0.4)
        for _ in range(10 * y.size + 50):
            await ctx.tick()
            if not ctx.get(reader.busy) and not ctx.get(add.busy):
                break
        got.extend(ctx.get(stream_mem.data[r_base + k]) for k in range(y.size))
        assert ctx.get(stream_mem.data[r_base - 1]) == 0 and ctx.get(stream_mem.data[r_base + y.size]) == 0

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert np.array_equal(np.array(got).reshape(rows, channels), want)


def _stored_descriptor(config, words: tuple[int, ...]) -> int:
    """A descriptor's three stream words in the form the prog buffer keeps (hw.descriptor.unpack_descriptor)."""
    raw = sum(w << (32 * k) for k, w in enumerate(words))
    stored, offset = 0, 0
    for name, field in descriptor_layout(config):
        stored |= ((raw >> DESC_FIELD_STARTS[name]) & ((1 << field.width) - 1)) << offset
        offset += field.width
    return stored


def test_a_linear_layer_on_chip_from_the_residual_stream_to_the_next_layers_entries():
    """No host between the stages: tokens through LayerNorm, a sign per channel and the Packer into the engine's
    x buffer; the engine runs the layer on resident weights; its results through the ResultReader, a GELU-style
    two-sided threshold per channel and a Packer. The x entries written and the next layer's entries equal the
    host's (hw.program.compile_layer, model.golden.layer_output)."""
    c = DEFAULT
    t, d, out = 6, 64, 20
    rng = np.random.default_rng(21)
    tokens = rng.integers(-3000, 3000, (t, d))
    gain, bias, eps = rng.integers(-9000, 9000, d), rng.integers(-2000, 2000, d), 77
    sign_at = rng.integers(-3000, 3000, d)
    hi1, lo1 = np.stack([sign_at, sign_at], axis=1), np.full((d, 2), -(1 << 40))
    codes = intops.multithreshold(intops.layer_norm(tokens, gain, bias, eps), -1, hi1, lo1)
    weights = rng.choice([-1, 1], (out, d))
    groups_x = [Operand.from_values(codes, "bipolar", c.word_bits)]
    groups_y = [Operand.from_values(weights, "bipolar", c.word_bits)]
    coefs = np.array([[3]])
    image = compile_layer(c, groups_x, groups_y, coefs)
    y = layer_output(groups_x, groups_y, coefs)
    hi2 = np.stack([rng.integers(-20, 60, out), np.full(out, 1 << 40)], axis=1)
    lo2 = np.stack([rng.integers(-150, -60, out), np.full(out, -(1 << 40))], axis=1)
    (plane,) = pack_planes(intops.multithreshold(y, 0, hi2, lo2), Encoding("unipolar"), c.word_bits)
    want = [int(e) for e in _entries(plane, out, c.word_bits).ravel()]

    m = Module()
    # stage 1: the residual stream to the x buffer
    m.submodules.norm = norm = LayerNorm(d, 16, 16, 40, "reciprocal")
    m.submodules.sign = sign = PipelinedMultiThreshold(17, d, 2, 4)
    m.submodules.sign_rows = sign_rows = Memory(shape=row_layout(17, 2), depth=d, init=threshold_rows(hi1, lo1, 17))
    wiring.connect(m, sign_rows.read_port(), sign.thresh)
    m.submodules.pack_x = pack_x = Packer(c.word_bits, d, PlaneKind.BIPOLAR, 4)
    channel = Signal(range(d))
    m.d.comb += [sign.i.valid.eq(norm.o.valid), norm.o.ready.eq(sign.i.ready), sign.i.payload.value.eq(norm.o.payload),
                 sign.i.payload.channel.eq(channel), norm.eps.eq(eps), sign.base.eq(-1)]
    with m.If(norm.o.valid & norm.o.ready):
        m.d.sync += channel.eq(Mux(channel == d - 1, 0, channel + 1))
    wiring.connect(m, sign.o, pack_x.i)
    # the engine and its buffers: weights and the pass program resident, the x buffer written by stage 1
    m.submodules.engine = engine = Engine(c)
    mems = {
        "x": Memory(shape=data.ArrayLayout(c.entry_bits, 1), depth=c.x_depth, init=[]),
        "y": Memory(shape=data.ArrayLayout(c.entry_bits, c.lanes), depth=c.y_depth, init=[list(r) for r in image.y_rows]),
        "prog": Memory(shape=data.ArrayLayout(descriptor_layout(c).size, 1), depth=c.prog_depth,
                       init=[[_stored_descriptor(c, words)] for words in image.descriptors]),
        "thresh": Memory(shape=data.ArrayLayout(32, c.lanes), depth=c.thresh_depth, init=[]),
        "result": Memory(shape=data.ArrayLayout(signed(c.acc_bits), c.lanes), depth=c.result_depth, init=[]),
    }
    for name, mem in mems.items():
        m.submodules[f"mem_{name}"] = mem
    for name in ("x", "y", "prog", "thresh"):
        wiring.connect(m, mems[name].read_port(), getattr(engine, name))
    m.submodules.x_writer = x_writer = EntryWriter(c.entry_bits, c.addr_bits(c.x_depth), t, image.words)
    wiring.connect(m, mems["x"].write_port(), x_writer.write)
    wiring.connect(m, pack_x.o, x_writer.i)
    wiring.connect(m, mems["result"].write_port(granularity=1), engine.result)
    # stage 2: the results to the next layer's entries
    m.submodules.reader = reader = ResultReader(c.lanes, c.acc_bits, c.addr_bits(c.result_depth), ceil_log2(out))
    wiring.connect(m, mems["result"].read_port(), reader.result)
    m.submodules.gelu = gelu = PipelinedMultiThreshold(c.acc_bits, out, 2, 4)
    m.submodules.gelu_rows = gelu_rows = Memory(shape=row_layout(c.acc_bits, 2), depth=out,
                                                init=threshold_rows(hi2, lo2, c.acc_bits))
    wiring.connect(m, gelu_rows.read_port(), gelu.thresh)
    m.submodules.pack_next = pack_next = Packer(c.word_bits, out, PlaneKind.UNIPOLAR, 4)
    wiring.connect(m, reader.o, gelu.i)
    wiring.connect(m, gelu.o, pack_next.i)
    m.d.comb += [gelu.base.eq(0), reader.rows.eq(image.rows_x), reader.blocks.eq(image.blocks), reader.channels.eq(out)]
    items = []
    for x in tokens:
        items += [{"x": int(v), "gain": 0, "bias": 0} for v in x]
        items += [{"x": int(v), "gain": int(g), "bias": int(b)} for v, g, b in zip(x, gain, bias)]
    got, written = [], []

    async def bench(ctx):  # what a sequencer does: stage 1, then the run, then stage 2
        await send(ctx, norm.i, items, random.Random(3), 0.2)
        for _ in range(500):
            await ctx.tick()
            if ctx.get(x_writer.written) == len(image.x_entries):
                break
        written.extend(int(ctx.get(mems["x"].data[k])[0]) for k in range(len(image.x_entries)))
        for field, value in (("rows", image.rows_x), ("blocks", image.blocks), ("words", image.words),
                             ("passes", image.passes), ("offset", image.offset), ("binary", 0)):
            ctx.set(getattr(engine.args, field), value)
        ctx.set(engine.start, 1)
        await ctx.tick()
        ctx.set(engine.start, 0)
        await ctx.tick().until(~engine.busy)
        ctx.set(reader.start, 1)
        await ctx.tick()
        ctx.set(reader.start, 0)
        got.extend(await receive(ctx, pack_next.o, len(want), random.Random(5), 0.2))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert written == list(image.x_entries)
    assert [int(g) for g in got] == want
