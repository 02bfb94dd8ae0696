# amaranth: UnusedElaboratable=no
"""hw.results and hw.residual: the engine's result entries back as values and channels, alone, into the thresholds
and the packer, and added into the residual stream in place."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.config import ceil_log2
from hw.multithreshold import PipelinedMultiThreshold, row_layout, threshold_rows
from hw.packer import Packer
from hw.program import code_entries
from hw.residual import ResidualAdd
from hw.results import ResultReader
from hw.simtools import send
from model import intops
from model.golden import PlaneKind

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
              stall: float, seed: int, **layout: int) -> tuple[list, int]:
    """Start a pass (one run's entries unless ``layout`` sets ``first``, ``row_stride``, ``heads``, ``head_stride``)
    and take ``count`` payloads from ``sink``; returns them and the cycles until the reader is idle."""
    got, cycles = [], []
    settings = {"rows": rows, "blocks": blocks, "channels": channels, "row_stride": blocks, **layout, "start": 1}

    async def bench(ctx):
        for name, value in settings.items():
            ctx.set(getattr(reader, name), value)
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


@pytest.mark.parametrize("lanes", [4, 1])
def test_a_window_of_each_rows_channels(lanes):
    """K of a qkv run: the middle third of every row's channels, numbered from 0."""
    rows, d = 3, 8
    y = np.random.default_rng(lanes).integers(-(1 << 23), 1 << 23, (rows, 3 * d))
    m, reader, blocks = _reader(y, lanes)
    got, _ = _simulate(m, reader, reader.o, rows, d // lanes, d, rows * d, 0.3, seed=2,
                       first=d // lanes, row_stride=blocks)
    assert [(int(g.value), int(g.channel)) for g in got] == [(int(v), c) for r in y[:, d:2 * d] for c, v in enumerate(r)]


@pytest.mark.parametrize("lanes, head_dim", [(4, 8), (2, 2)])
def test_every_heads_run_gathered_into_rows(lanes, head_dim):
    """Each head's A V run left its (rows, head_dim) result one after another: read back as rows of all heads."""
    rows, heads = 5, 3
    rng = np.random.default_rng(head_dim)
    per_head = [rng.integers(-(1 << 23), 1 << 23, (rows, head_dim)) for _ in range(heads)]
    m = Module()
    blocks = head_dim // lanes
    init = [[int(v) for v in y[r, b * lanes:(b + 1) * lanes]] for y in per_head for r in range(rows) for b in range(blocks)]
    m.submodules.mem = mem = Memory(shape=data.ArrayLayout(signed(ACC_BITS), lanes), depth=1 << ADDR_BITS, init=init)
    m.submodules.reader = reader = ResultReader(lanes, ACC_BITS, ADDR_BITS)
    wiring.connect(m, mem.read_port(), reader.result)
    got, _ = _simulate(m, reader, reader.o, rows, blocks, heads * head_dim, rows * heads * head_dim, 0.3, seed=3,
                       heads=heads, head_stride=rows * blocks)
    want = np.concatenate(per_head, axis=1)
    assert [(int(g.value), int(g.channel)) for g in got] == [(int(v), c) for r in want for c, v in enumerate(r)]


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
    want = code_entries(codes, PlaneKind.UNIPOLAR, word_bits)

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
                            (reader.row_stride, blocks), (reader.channels, channels), (reader.start, 1)):
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
