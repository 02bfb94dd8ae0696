# amaranth: UnusedElaboratable=no
"""hw.steps: the step program orders a whole linear layer on chip, with no host and no testbench between its stages."""

import random

import numpy as np
from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.sim import Simulator

from hw.config import DEFAULT, ceil_log2
from hw.descriptor import descriptor_layout, stored_descriptor
from hw.engine import Engine
from hw.layernorm import LayerNorm
from hw.multithreshold import PipelinedMultiThreshold, row_layout, threshold_rows
from hw.packer import EntryWriter, Packer
from hw.program import code_entries, compile_layer
from hw.results import ResultReader
from hw.simtools import receive, send
from hw.steps import StepOp, StepSequencer, layer_steps, step_layout
from model import intops
from model.golden import Operand, PlaneKind, layer_output


def test_a_linear_layer_on_chip_ordered_by_its_step_program():
    """Tokens through LayerNorm, a sign per channel, the Packer and the EntryWriter into the engine's x buffer;
    the step program waits for them, runs the engine on resident weights and pass program, and reads its
    results back through a GELU-style two-sided threshold per channel and a Packer. The testbench only feeds
    the tokens and takes the last entries: the x entries written and the next layer's entries equal the
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
    want = code_entries(intops.multithreshold(y, 0, hi2, lo2), PlaneKind.UNIPOLAR, c.word_bits)

    m = Module()
    # stage 1: the residual stream to the x buffer
    m.submodules.norm = norm = LayerNorm(d, 16, 16, 40, "reciprocal")
    m.submodules.sign = sign = PipelinedMultiThreshold(17, d, 2, 4)
    m.submodules.sign_rows = sign_rows = Memory(shape=row_layout(17, 2), depth=d, init=threshold_rows(hi1, lo1, 17))
    wiring.connect(m, sign_rows.read_port(), sign.thresh)
    m.submodules.pack_x = pack_x = Packer(c.word_bits, d, PlaneKind.BIPOLAR, 4)
    channel = Signal(range(d))  # each LayerNorm output's channel, for its threshold
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
                       init=[[stored_descriptor(c, words)] for words in image.descriptors]),
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
    m.d.comb += gelu.base.eq(0)
    # the step program, in its own memory, orders the stages
    m.submodules.steps = steps = StepSequencer(c)
    m.submodules.program = program = Memory(shape=step_layout(c), depth=256, init=layer_steps(image, out))
    wiring.connect(m, program.read_port(), steps.program)
    m.d.comb += [steps.written.eq(x_writer.written), engine.start.eq(steps.engine_start), engine.args.eq(steps.engine_args),
                 steps.engine_busy.eq(engine.busy), reader.start.eq(steps.reader_start), reader.rows.eq(steps.reader_rows),
                 reader.blocks.eq(steps.reader_blocks), reader.channels.eq(steps.reader_channels),
                 steps.reader_busy.eq(reader.busy)]
    items = []
    for x in tokens:
        items += [{"x": int(v), "gain": 0, "bias": 0} for v in x]
        items += [{"x": int(v), "gain": int(g), "bias": int(b)} for v, g, b in zip(x, gain, bias)]
    got, written, idle = [], [], []

    async def feed(ctx):
        ctx.set(steps.start, 1)
        await ctx.tick()
        ctx.set(steps.start, 0)
        await send(ctx, norm.i, items, random.Random(3), 0.2)

    async def take(ctx):
        got.extend(await receive(ctx, pack_next.o, len(want), random.Random(5), 0.2))
        for _ in range(20):
            if not ctx.get(steps.busy):
                break
            await ctx.tick()
        idle.append(not ctx.get(steps.busy))
        written.extend(int(ctx.get(mems["x"].data[k])[0]) for k in range(len(image.x_entries)))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(feed)
    sim.add_testbench(take)
    sim.run()
    assert written == list(image.x_entries)
    assert [int(g) for g in got] == want
    assert idle == [True]  # the program reached its END


def test_each_step_waits_for_its_stage():
    """WAIT_WRITTEN holds the RUN until enough entries are written; RUN waits for the engine, READ for the reader."""
    c = DEFAULT
    image = compile_layer(c, [Operand.from_values(np.ones((2, 16), np.int64), "bipolar", c.word_bits)],
                          [Operand.from_values(np.ones((3, 16), np.int64), "bipolar", c.word_bits)], np.array([[1]]))
    m = Module()
    m.submodules.steps = steps = StepSequencer(c)
    m.submodules.program = program = Memory(shape=step_layout(c), depth=256, init=layer_steps(image, 3))
    wiring.connect(m, program.read_port(), steps.program)
    trace = []

    async def bench(ctx):
        """The entries arrive at cycle 10; the engine and the reader each stay busy 10 cycles after their start."""
        ctx.set(steps.start, 1)
        await ctx.tick()
        ctx.set(steps.start, 0)
        engine_until = reader_until = -1
        for cycle in range(80):
            ctx.set(steps.written, 2 if cycle >= 10 else 0)
            ctx.set(steps.engine_busy, cycle <= engine_until)
            ctx.set(steps.reader_busy, cycle <= reader_until)
            run, read, busy = ctx.get(steps.engine_start), ctx.get(steps.reader_start), ctx.get(steps.busy)
            trace.append((cycle, run, read, busy, ctx.get(steps.engine_args.rows), ctx.get(steps.reader_channels)))
            if run:
                engine_until = cycle + 10
            if read:
                reader_until = cycle + 10
            await ctx.tick()

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    runs = [row for row in trace if row[1]]
    reads = [row for row in trace if row[2]]
    assert len(runs) == 1 and runs[0][0] >= 10 and runs[0][4] == image.rows_x  # after the entries, once, its args
    assert len(reads) == 1 and reads[0][0] > runs[0][0] + 10 and reads[0][5] == 3  # after the run is done
    done = next(cycle for cycle, _, _, busy, _, _ in trace if cycle > reads[0][0] and not busy)
    assert done > reads[0][0] + 10  # END once the read is done
    assert image.x_entries and layer_steps(image, 3)[0]["count"] == len(image.x_entries) == 2
    assert [s["op"] for s in layer_steps(image, 3)] == [StepOp.WAIT_WRITTEN, StepOp.RUN, StepOp.READ, StepOp.END]
