"""The whole-model core: the engine, the integer units and their memories, ordered by a step program.

The design of issue 14 ("the whole ViT on the FPGA"), as far as it is
built: the residual stream ``R`` lives in a memory, and a step program
(:mod:`hw.steps`) runs the stages that move it through a transformer
block with no host between them. Each stage is one route through the
units (:class:`Stage`):

* ``NORM``: ``R``'s tokens, each sent twice (statistics, then values),
  through :class:`~hw.layernorm.LayerNorm`, the per-channel thresholds
  (:class:`~hw.multithreshold.PipelinedMultiThreshold`) and the
  :class:`~hw.packer.Packer` into the engine's x buffer
  (:class:`~hw.packer.EntryWriter`): a linear layer's input;
* ``RUN``: the engine (:class:`~hw.engine.Engine`) on the x and y buffers
  at ``x_offset`` and ``y_offset``, its pass program at ``prog_base`` of a
  descriptor store that holds every product's, its results at
  ``result_offset``;
* ``READ_CODES``: results (:class:`~hw.results.ResultReader`, any window
  or gathering of them) through the thresholds and the Packer into the x
  buffer: the next layer's input, or Q by head;
* ``READ_K``: the same into the y buffer through the
  :class:`~hw.packer.LaneWriter`: K by head as ``Q K^T``'s y operand;
* ``READ_V``: results through the thresholds and the
  :class:`~hw.transpose.TransposePacker` into the y buffer: a Value group
  transposed, ``A V``'s y operand;
* ``SCORES``: ``Q K^T``'s results through :class:`~hw.requantize.Requantize`
  and :class:`~hw.softmax.SoftmaxLevels`, a Packer per level group, into
  the x buffer: ``A V``'s x operand;
* ``READ_ADD``: results requantized and added into ``R`` in place
  (:class:`~hw.residual.ResidualAdd`).

The program's SET steps give each stage its constants
(:func:`core_registers`); the tables (LayerNorm gains and biases,
threshold rows, residual biases, attention levels, the exp table), the
weights and the descriptors are memories initialised from a
:class:`CoreImage` (:mod:`hw.core_program` compiles one from a model's
integer program). Not built yet: the patch embedding, the heads and the
argmax, and the upload path (docs/integer-gateware.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig, ceil_log2
from hw.descriptor import descriptor_layout
from hw.engine import Engine
from hw.layernorm import LayerNorm
from hw.multithreshold import PipelinedMultiThreshold, row_layout
from hw.packer import EntryWriter, LaneWriter, Packer
from hw.requantize import Requantize
from hw.residual import ResidualAdd
from hw.results import ResultReader
from hw.softmax import SoftmaxLevels
from hw.steps import StepSequencer, step_layout
from hw.transpose import TransposePacker
from model.golden import PlaneKind, words_for
from model.intvit import ATTN_FRAC_BITS, NORM_BITS, RESIDUAL_BITS

#: The levels every threshold row holds (a quantizer with fewer is padded with levels never reached).
LEVELS = 2
#: The signed width of a quantizer's code (a GELU fold's 0..2, a sign's -1..1).
CODE_BITS = 4
#: Bits of a residual bias (the contract's bound).
BIAS_BITS = 26
#: Bits of LayerNorm's eps.
EPS_BITS = 40
#: Bits of an exp table entry and of an attention level.
EXP_BITS, LEVEL_BITS = 16, 17


class Stage(enum.IntEnum):
    NORM = 0
    RUN = 1
    READ_CODES = 2
    READ_ADD = 3
    READ_K = 4
    READ_V = 5
    SCORES = 6


@dataclass(frozen=True)
class CoreImage:
    """What a core's memories start with, and its shape.

    ``residual`` is ``R`` row-major (``tokens x dim``); ``norms`` the
    LayerNorm tables, ``(gain, bias)`` per channel, one table of ``dim``
    after another; ``thresholds`` the threshold rows (:func:`hw.multithreshold.threshold_rows`
    at the accumulator's width and :data:`LEVELS` levels), one table per
    quantizer; ``biases`` the residual biases; ``levels`` the attention
    levels (:func:`hw.softmax.level_words`, block after block) and
    ``exp_table`` the contract's; ``counts`` the levels of each of ``A V``'s
    x groups; ``score_bits`` the requantized scores' width; ``y_rows`` and
    ``descriptors`` the engine's resident weights and every product's
    stored pass descriptors; ``steps`` the program; ``channels`` the widest
    layer's outputs.
    """

    dim: int
    heads: int
    tokens: int
    channels: int
    counts: tuple[int, ...]
    score_bits: int
    residual: tuple[int, ...]
    norms: tuple[tuple[int, int], ...]
    thresholds: tuple[dict, ...]
    biases: tuple[int, ...]
    levels: tuple[int, ...]
    exp_table: tuple[int, ...]
    y_rows: tuple[tuple[int, ...], ...]
    descriptors: tuple[int, ...]
    steps: tuple[dict, ...]


def _bits(depth: int) -> int:
    return max(1, ceil_log2(depth))


def core_registers(config: AccelConfig, image: CoreImage) -> data.StructLayout:
    """The constants a core's SET steps write (an engine run's, the result reader's, each unit's, the writers')."""
    c = config
    result = c.addr_bits(c.result_depth)
    write = max(c.addr_bits(c.x_depth), c.addr_bits(c.y_depth))
    return data.StructLayout({
        "rows": range(c.result_depth + 1), "blocks": range(c.result_depth + 1), "words": c.words_bits,
        "passes": range(c.prog_depth + 1), "offset": signed(c.acc_bits), "prog_base": _bits(len(image.descriptors)),
        "x_offset": c.addr_bits(c.x_depth), "y_offset": c.addr_bits(c.y_depth), "result_offset": result,
        "read_rows": result + 1, "read_blocks": result + 1, "read_first": result, "read_stride": result + 1,
        "read_heads": range(1, 65), "read_head_stride": result + 1, "channels": range(image.channels + 1),
        "eps": EPS_BITS, "norm_base": _bits(len(image.norms)),
        "thresh_base": _bits(len(image.thresholds)), "code_base": signed(CODE_BITS),
        "pack_n": range(image.channels + 1), "kind": 2,
        "write_base": write, "write_words": range(c.max_words + 1), "write_heads": range(1, 65),
        "write_head_stride": write + 1, "write_row_stride": write + 1, "entries": range(max(c.x_depth, c.y_depth) + 1),
        "multiplier": 16, "shift": 6, "bias_base": _bits(len(image.biases)), "level_base": _bits(len(image.levels)),
    })


def _memory(shape: object, init: list | tuple) -> Memory:
    return Memory(shape=shape, depth=max(2, len(init)), init=init)  # two words at least: a one-bit address


class ModelCore(wiring.Component):
    """The engine and the units around a residual memory, run by the step program of ``image``.

    ``start`` runs the program from its first step; ``busy`` until its END.
    The memories are attributes (``residual``, ``x``, ...), so a testbench
    can read them. ``divider`` is LayerNorm's (``"serial"`` for parts
    without multipliers to spare, ``"reciprocal"``).
    """

    def __init__(self, config: AccelConfig, image: CoreImage, divider: str = "serial") -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        if len(image.residual) != image.tokens * image.dim:
            raise ValueError(f"image.residual must hold tokens x dim = {image.tokens * image.dim} values, "
                             f"got {len(image.residual)}")
        self.config, self.image, self.divider = config, image, divider
        self.registers = core_registers(config, image)
        c = config
        self.residual = _memory(signed(RESIDUAL_BITS), image.residual)
        self.norms = _memory(data.StructLayout({"gain": signed(NORM_BITS), "bias": signed(NORM_BITS)}),
                             [{"gain": g, "bias": b} for g, b in image.norms])
        self.thresholds = _memory(row_layout(c.acc_bits, LEVELS), image.thresholds)
        self.biases = _memory(signed(BIAS_BITS), image.biases)
        self.levels = _memory(LEVEL_BITS, image.levels)
        self.exp_table = _memory(EXP_BITS, image.exp_table)
        self.x = Memory(shape=data.ArrayLayout(c.entry_bits, 1), depth=c.x_depth, init=[])
        self.y = Memory(shape=data.ArrayLayout(c.entry_bits, c.lanes), depth=c.y_depth,
                        init=[list(row) for row in image.y_rows])
        self.prog = _memory(data.ArrayLayout(descriptor_layout(c).size, 1), [[d] for d in image.descriptors])
        self.result = Memory(shape=data.ArrayLayout(signed(c.acc_bits), c.lanes), depth=c.result_depth, init=[])
        self.program = _memory(step_layout(self.registers, len(Stage)), image.steps)
        super().__init__({"start": In(1), "busy": Out(1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c, image = self.config, self.image
        for name in ("residual", "norms", "thresholds", "biases", "levels", "exp_table", "x", "y", "prog", "result",
                     "program"):
            m.submodules[f"mem_{name}"] = getattr(self, name)
        m.submodules.steps = steps = StepSequencer(self.registers, len(Stage), _bits(len(image.steps)))
        wiring.connect(m, self.program.read_port(), steps.program)
        regs, go = steps.regs, steps.go
        m.d.comb += [steps.start.eq(self.start), self.busy.eq(steps.busy)]
        route = Signal(Stage)  # the last stage started other than RUN: which way the streams go
        for stage in Stage:
            if stage is not Stage.RUN:
                with m.If(go[stage]):
                    m.d.sync += route.eq(stage)

        # the engine: its operands, descriptors and results at the offsets of the run
        m.submodules.engine = engine = Engine(c)
        x_read, y_read, prog = self.x.read_port(), self.y.read_port(), self.prog.read_port()
        for port, own, offset in ((x_read, engine.x, regs.x_offset), (y_read, engine.y, regs.y_offset),
                                  (prog, engine.prog, regs.prog_base)):
            m.d.comb += [port.addr.eq(offset + own.addr), port.en.eq(own.en), own.data.eq(port.data)]
        result_write = self.result.write_port(granularity=1)
        m.d.comb += [result_write.addr.eq(regs.result_offset + engine.result.addr),
                     result_write.data.eq(engine.result.data), result_write.en.eq(engine.result.en)]
        m.d.comb += [engine.start.eq(go[Stage.RUN]),
                     engine.args.rows.eq(regs.rows), engine.args.blocks.eq(regs.blocks),
                     engine.args.words.eq(regs.words), engine.args.passes.eq(regs.passes),
                     engine.args.offset.eq(regs.offset), engine.args.binary.eq(0)]

        # NORM's source: each token of R twice, with its channels' gains and biases
        m.submodules.norm = norm = LayerNorm(image.dim, RESIDUAL_BITS, NORM_BITS, EPS_BITS, self.divider)
        r_port, table = self.residual.read_port(), self.norms.read_port()
        token_base = Signal(_bits(len(image.residual)), reset_less=True)  # R's address of the token's first value
        column = Signal(range(image.dim), reset_less=True)
        second = Signal(reset_less=True)                  # the token's second pass
        left = Signal(range(2 * len(image.residual) + 1))  # values still to read
        have = Signal()                                    # the ports hold the next value for LayerNorm
        advance = ~have | norm.i.ready
        m.d.comb += [norm.i.valid.eq(have), norm.i.payload.x.eq(r_port.data),
                     norm.i.payload.gain.eq(table.data.gain), norm.i.payload.bias.eq(table.data.bias),
                     norm.eps.eq(regs.eps), table.addr.eq(regs.norm_base + column), table.en.eq(advance)]
        with m.If(advance):
            m.d.sync += have.eq(left != 0)
            with m.If(left != 0):
                m.d.sync += [left.eq(left - 1), column.eq(Mux(column == image.dim - 1, 0, column + 1))]
                with m.If(column == image.dim - 1):
                    m.d.sync += second.eq(~second)
                    with m.If(second):
                        m.d.sync += token_base.eq(token_base + image.dim)
        with m.If(go[Stage.NORM]):
            m.d.sync += [left.eq(2 * len(image.residual)), column.eq(0), second.eq(0), token_base.eq(0), have.eq(0)]

        # the result reader, and READ_ADD: results requantized into R; R's one read port is NORM's or the adder's
        m.submodules.reader = reader = ResultReader(c.lanes, c.acc_bits, c.addr_bits(c.result_depth),
                                                    _bits(image.channels))
        wiring.connect(m, self.result.read_port(), reader.result)
        reading = go[Stage.READ_CODES] | go[Stage.READ_ADD] | go[Stage.READ_K] | go[Stage.READ_V] | go[Stage.SCORES]
        m.d.comb += [reader.start.eq(reading), reader.rows.eq(regs.read_rows), reader.blocks.eq(regs.read_blocks),
                     reader.first.eq(regs.read_first), reader.row_stride.eq(regs.read_stride),
                     reader.heads.eq(regs.read_heads), reader.head_stride.eq(regs.read_head_stride),
                     reader.channels.eq(regs.channels)]
        m.submodules.add = add = ResidualAdd(c.acc_bits, RESIDUAL_BITS, BIAS_BITS, _bits(len(image.residual)),
                                             _bits(image.channels))
        wiring.connect(m, self.residual.write_port(), add.r_write)
        bias = self.biases.read_port()
        m.d.comb += [bias.addr.eq(regs.bias_base + add.bias.addr), bias.en.eq(add.bias.en), add.bias.data.eq(bias.data),
                     add.start.eq(go[Stage.READ_ADD]), add.r_base.eq(0),
                     add.multiplier.eq(regs.multiplier), add.shift.eq(regs.shift), add.r_read.data.eq(r_port.data)]
        with m.If(route == Stage.READ_ADD):
            m.d.comb += [r_port.addr.eq(add.r_read.addr), r_port.en.eq(add.r_read.en)]
        with m.Else():
            m.d.comb += [r_port.addr.eq(token_base + column), r_port.en.eq(advance)]

        # the thresholds, behind LayerNorm (NORM) or the results (READ_CODES, READ_K, READ_V)
        m.submodules.quantize = quantize = PipelinedMultiThreshold(c.acc_bits, image.channels, LEVELS, CODE_BITS)
        rows = self.thresholds.read_port()
        m.d.comb += [rows.addr.eq(regs.thresh_base + quantize.thresh.addr), rows.en.eq(quantize.thresh.en),
                     quantize.thresh.data.eq(rows.data), quantize.base.eq(regs.code_base)]
        norm_channel = Signal(range(image.dim))  # each LayerNorm output's channel
        with m.If(norm.o.valid & norm.o.ready):
            m.d.sync += norm_channel.eq(Mux(norm_channel == image.dim - 1, 0, norm_channel + 1))
        with m.If(go[Stage.NORM]):
            m.d.sync += norm_channel.eq(0)

        # SCORES: the scores requantized, their softmax levels, a Packer per level group
        m.submodules.score = score = Requantize(c.acc_bits, 1, 1, image.score_bits)
        m.d.comb += [score.multiplier.eq(regs.multiplier), score.shift.eq(regs.shift), score.i.payload.y.eq(reader.o.payload.value)]
        m.submodules.softmax = softmax = SoftmaxLevels(image.score_bits, image.tokens, len(image.exp_table), image.counts,
                                                       ATTN_FRAC_BITS, EXP_BITS, LEVEL_BITS, _bits(len(image.levels)))
        wiring.connect(m, self.exp_table.read_port(), softmax.table)
        wiring.connect(m, self.levels.read_port(), softmax.thresh)
        score_column = Signal(range(image.tokens))
        row_base = Signal(_bits(len(image.levels)))  # the row's first level word
        m.d.comb += [softmax.i.valid.eq(score.o.valid), score.o.ready.eq(softmax.i.ready),
                     softmax.i.payload.score.eq(score.o.payload), softmax.i.payload.last.eq(score_column == image.tokens - 1),
                     softmax.i.payload.base.eq(row_base)]
        with m.If(score.o.valid & score.o.ready):
            m.d.sync += score_column.eq(Mux(score_column == image.tokens - 1, 0, score_column + 1))
            with m.If(score_column == image.tokens - 1):
                m.d.sync += row_base.eq(row_base + image.tokens * sum(image.counts))
        with m.If(go[Stage.SCORES]):
            m.d.sync += [score_column.eq(0), row_base.eq(regs.level_base)]
        score_packers = [Packer(c.word_bits, image.tokens, PlaneKind.UNIPOLAR, softmax.code_bits + 1)
                         for _ in image.counts]
        for g, packer in enumerate(score_packers):
            m.submodules[f"score_pack{g}"] = packer
            m.d.comb += [packer.i.valid.eq(softmax.o.valid & softmax.o.ready), packer.i.payload.eq(softmax.o.payload[g])]
        m.d.comb += softmax.o.ready.eq(Cat(*(p.i.ready for p in score_packers)).all())

        # the reader's stream goes where the stage takes it
        with m.If((route == Stage.READ_CODES) | (route == Stage.READ_K) | (route == Stage.READ_V)):
            m.d.comb += [quantize.i.valid.eq(reader.o.valid), reader.o.ready.eq(quantize.i.ready),
                         quantize.i.payload.eq(reader.o.payload)]
        with m.Elif(route == Stage.NORM):
            m.d.comb += [quantize.i.valid.eq(norm.o.valid), norm.o.ready.eq(quantize.i.ready),
                         quantize.i.payload.value.eq(norm.o.payload), quantize.i.payload.channel.eq(norm_channel)]
        with m.Elif(route == Stage.READ_ADD):
            wiring.connect(m, reader.o, add.i)
        with m.Else():
            m.d.comb += [score.i.valid.eq(reader.o.valid), reader.o.ready.eq(score.i.ready)]

        # the codes packed: into the x buffer (NORM, READ_CODES) or as K by head into the y buffer (READ_K); a
        # Value group transposed into the y buffer (READ_V)
        m.submodules.pack = pack = Packer(c.word_bits, image.channels, PlaneKind.BIPOLAR, CODE_BITS)
        m.submodules.transpose = transpose = TransposePacker(c.word_bits, image.tokens, image.dim, PlaneKind.BIPOLAR,
                                                             CODE_BITS)
        m.d.comb += [pack.n.eq(regs.pack_n), pack.kind.eq(regs.kind), transpose.kind.eq(regs.kind)]
        with m.If(route == Stage.READ_V):
            wiring.connect(m, quantize.o, transpose.i)
        with m.Else():
            wiring.connect(m, quantize.o, pack.i)
        m.submodules.writer = writer = EntryWriter(c.entry_bits, c.addr_bits(c.x_depth), 1, 1)
        max_words = words_for(max(image.channels, image.tokens), c.word_bits)
        m.submodules.lanes = lanes = LaneWriter(c.entry_bits, c.lanes, c.addr_bits(c.y_depth), max_words, c.y_depth)
        wiring.connect(m, lanes.write, self.y.write_port(granularity=1))
        with m.If(route == Stage.READ_K):
            wiring.connect(m, pack.o, lanes.i)
        with m.Elif(route == Stage.READ_V):
            wiring.connect(m, transpose.o, lanes.i)
        with m.Else():
            wiring.connect(m, pack.o, writer.i)
        x_write = self.x.write_port()
        merged = Signal(range(c.x_depth + 1))  # SCORES: entries written, the groups' entries in turn
        group_counts = [Signal(range(c.x_depth + 1), name=f"group{g}_written") for g in range(len(score_packers))]
        with m.If(route == Stage.SCORES):
            earlier = Const(0)
            for g, packer in enumerate(score_packers):
                take = packer.o.valid & ~earlier
                earlier = earlier | packer.o.valid
                m.d.comb += packer.o.ready.eq(take)
                with m.If(take):
                    m.d.comb += [x_write.addr.eq(regs.write_base + g * regs.write_head_stride + group_counts[g]),
                                 x_write.data[0].eq(packer.o.payload), x_write.en.eq(1)]
                    m.d.sync += [group_counts[g].eq(group_counts[g] + 1), merged.eq(merged + 1)]
        with m.Else():
            wiring.connect(m, writer.write, x_write)
        with m.If(go[Stage.SCORES]):
            m.d.sync += [merged.eq(0)] + [count.eq(0) for count in group_counts]
        for target in (writer, lanes):
            m.d.comb += [target.base.eq(regs.write_base), target.words.eq(regs.write_words),
                         target.heads.eq(regs.write_heads), target.head_stride.eq(regs.write_head_stride)]
        m.d.comb += [writer.row_stride.eq(regs.write_row_stride),
                     writer.start.eq(go[Stage.NORM] | go[Stage.READ_CODES]),
                     lanes.start.eq(go[Stage.READ_K] | go[Stage.READ_V])]

        # each stage's busy, from the cycle after its go: the writers' stages until the layer's entries are written
        written = Signal.like(merged)
        with m.Switch(route):
            with m.Case(Stage.NORM, Stage.READ_CODES):
                m.d.comb += written.eq(writer.written)
            with m.Case(Stage.READ_K, Stage.READ_V):
                m.d.comb += written.eq(lanes.written)
            with m.Default():
                m.d.comb += written.eq(merged)
        writing = Signal()
        with m.If(go[Stage.NORM] | go[Stage.READ_CODES] | go[Stage.READ_K] | go[Stage.READ_V] | go[Stage.SCORES]):
            m.d.sync += writing.eq(1)
        with m.Elif(written == regs.entries):
            m.d.sync += writing.eq(0)
        adding = reader.busy | reader.o.valid | add.busy
        m.d.comb += steps.stage_busy.eq(sum((busy << stage) for stage, busy in (
            (Stage.NORM, writing), (Stage.RUN, engine.busy), (Stage.READ_CODES, writing), (Stage.READ_ADD, adding),
            (Stage.READ_K, writing), (Stage.READ_V, writing), (Stage.SCORES, writing))))
        return m

