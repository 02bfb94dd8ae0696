"""The whole-model core: the engine, the integer units and their memories, ordered by a step program.

The design of issue 14 ("the whole ViT on the FPGA"): raw pixels in, the
class and the integer logits out, with no host between. The residual
stream ``R`` lives in a memory, and a step program (:mod:`hw.steps`) runs
the stages that move it through the model. Each stage is one route
through the units (:class:`Stage`):

* ``TOKENS``: ``R`` takes the class/position tokens;
* ``BITS``: the values memory (the pixels, or a head's LayerNorm output)
  bit-plane by bit-plane through the :class:`~hw.packer.Packer` into the
  engine's x buffer: a multi-bit input (the patch embedding's ``uint``
  pixels, a head's ``int16``) as its planes;
* ``NORM``: ``R``'s tokens, each sent twice (statistics, then values),
  through :class:`~hw.layernorm.LayerNorm`, the per-channel thresholds
  (:class:`~hw.multithreshold.PipelinedMultiThreshold`) and the Packer
  into the x buffer (:class:`~hw.packer.EntryWriter`): a linear layer's
  input; ``NORM_VALUES`` the same LayerNorm into the values memory;
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
* ``READ_ADD``: results requantized and added into ``R`` in place from
  ``residual_base`` (:class:`~hw.residual.ResidualAdd`); ``LOGITS`` the
  same into the logits memory (from zero, or onto the logits so far);
* ``ARGMAX``: the logits through :class:`~hw.argmax.Argmax`: ``klass``.

The program's SET steps give each stage its constants
(:func:`core_registers`); the tables (tokens, LayerNorm gains and biases,
threshold rows, biases, attention levels, the exp table), the weights and
the descriptors are memories initialised from a :class:`CoreImage`
(:mod:`hw.core_program` compiles one from a model's integer program).
The pixels come in on ``pixels`` while the core is idle, patch by patch
(each patch's values in the order :func:`model.deploy.patchify` gives);
``start`` runs the program; the logits are read through ``logit_addr``
and ``logit`` once ``busy`` falls.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.accelerator import SkidBuffer
from hw.argmax import Argmax
from hw.config import AccelConfig
from hw.descriptor import descriptor_layout
from hw.engine import Engine, index_bits
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
from model.intvit import ATTN_FRAC_BITS, LOGIT_BITS, NORM_BITS, RESIDUAL_BITS

#: The levels every threshold row holds (a quantizer with fewer is padded with levels never reached).
LEVELS = 2
#: The signed width of a quantizer's code (a GELU fold's 0..2, a sign's -1..1).
CODE_BITS = 4
#: Bits of a residual or logit bias (the contract's bound).
BIAS_BITS = 26
#: Bits of LayerNorm's eps.
EPS_BITS = 40
#: Bits of an exp table entry and of an attention level.
EXP_BITS, LEVEL_BITS = 16, 17
#: Bits of a values-memory word: a LayerNorm output (a pixel is narrower).
VALUE_WORD_BITS = NORM_BITS + 1
#: Bits of a pixel on the ``pixels`` stream.
PIXEL_BITS = 8


class Stage(enum.IntEnum):
    NORM = 0
    RUN = 1
    READ_CODES = 2
    READ_ADD = 3
    READ_K = 4
    READ_V = 5
    SCORES = 6
    TOKENS = 7
    BITS = 8
    NORM_VALUES = 9
    LOGITS = 10
    ARGMAX = 11


@dataclass(frozen=True)
class CoreImage:
    """What a core's memories start with, and its shape.

    ``residual`` is ``R``'s first contents row-major (``tokens x dim``, or
    empty: zeros) and ``token_table`` what ``TOKENS`` copies into it;
    ``norms`` the LayerNorm tables, ``(gain, bias)`` per channel, one table
    of ``dim`` after another; ``thresholds`` the threshold rows
    (:func:`hw.multithreshold.threshold_rows` at the accumulator's width
    and :data:`LEVELS` levels), one table per quantizer; ``biases`` the
    residual and logit biases; ``levels`` the attention levels
    (:func:`hw.softmax.level_words`, block after block) and ``exp_table``
    the contract's; ``counts`` the levels of each of ``A V``'s x groups;
    ``score_bits`` the requantized scores' width; ``values`` the values
    memory's words (a whole image's pixels, a LayerNorm's outputs);
    ``y_rows`` and ``descriptors`` the engine's resident weights and every
    product's stored pass descriptors; ``steps`` the program; ``channels``
    the widest layer's outputs.
    """

    dim: int
    heads: int
    tokens: int
    classes: int
    channels: int
    counts: tuple[int, ...]
    score_bits: int
    values: int
    residual: tuple[int, ...]
    token_table: tuple[int, ...]
    norms: tuple[tuple[int, int], ...]
    thresholds: tuple[dict, ...]
    biases: tuple[int, ...]
    levels: tuple[int, ...]
    exp_table: tuple[int, ...]
    y_rows: tuple[tuple[int, ...], ...]
    descriptors: tuple[int, ...]
    steps: tuple[dict, ...]


def core_registers(config: AccelConfig, image: CoreImage) -> data.StructLayout:
    """The constants a core's SET steps write (an engine run's, the result reader's, each unit's, the writers')."""
    c = config
    result = c.addr_bits(c.result_depth)
    write = max(c.addr_bits(c.x_depth), c.addr_bits(c.y_depth))
    r_addr = index_bits(image.tokens * image.dim)
    return data.StructLayout({
        "rows": range(c.result_depth + 1), "blocks": range(c.result_depth + 1), "words": c.words_bits,
        "passes": range(c.prog_depth + 1), "offset": signed(c.acc_bits), "prog_base": index_bits(len(image.descriptors)),
        "x_offset": c.addr_bits(c.x_depth), "y_offset": c.addr_bits(c.y_depth), "result_offset": result,
        "read_rows": result + 1, "read_blocks": result + 1, "read_first": result, "read_stride": result + 1,
        "read_heads": range(1, 65), "read_head_stride": result + 1, "channels": range(image.channels + 1),
        "eps": EPS_BITS, "norm_base": index_bits(len(image.norms)), "norm_from": r_addr, "norm_tokens": range(image.tokens + 1),
        "thresh_base": index_bits(len(image.thresholds)), "code_base": signed(CODE_BITS),
        "pack_n": range(image.channels + 1), "kind": 2, "planes": range(VALUE_WORD_BITS + 1),
        "bits_count": range(image.values + 1),
        "write_base": write, "write_words": range(c.max_words + 1), "write_heads": range(1, 65),
        "write_head_stride": write + 1, "write_row_stride": write + 1,
        "entries": range(max(c.x_depth, c.y_depth, image.values) + 1),
        "multiplier": 16, "shift": 6, "bias_base": index_bits(len(image.biases)), "residual_base": r_addr,
        "accumulate": 1, "level_base": index_bits(len(image.levels)),
    })


def _memory(shape: object, init: list | tuple, depth: int = 0) -> Memory:
    """A memory of ``init`` (and ``depth`` words at least); two words at least, so that its address has a bit."""
    return Memory(shape=shape, depth=max(2, depth, len(init)), init=init)


class ModelCore(wiring.Component):
    """The engine and the units around a residual memory, run by the step program of ``image``.

    Ports: ``pixels`` (a stream, taken while idle: the next image's values,
    patch by patch; with ``pixels_first`` high a pixel is an image's first), ``start`` (runs the program from its first step; the
    next pixels go to the memory's start again), ``busy`` (until its END),
    ``klass`` (the last ARGMAX's index), ``logit_addr`` and ``logit`` (the
    logits memory, read a cycle after the address, while idle). The
    memories are attributes (``residual``, ``x``, ...), so a testbench can
    read them. ``divider`` is LayerNorm's (``"serial"`` for parts without
    multipliers to spare, ``"reciprocal"``).
    """

    def __init__(self, config: AccelConfig, image: CoreImage, divider: str = "serial") -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        r_words = image.tokens * image.dim
        for name in ("residual", "token_table"):
            if len(getattr(image, name)) not in (0, r_words):
                raise ValueError(f"image.{name} must hold tokens x dim = {r_words} values or none, "
                                 f"got {len(getattr(image, name))}")
        self.config, self.image, self.divider = config, image, divider
        self.registers = core_registers(config, image)
        c = config
        self.residual = _memory(signed(RESIDUAL_BITS), image.residual, r_words)
        self.token_table = _memory(signed(RESIDUAL_BITS), image.token_table)
        self.norms = _memory(data.StructLayout({"gain": signed(NORM_BITS), "bias": signed(NORM_BITS)}),
                             [{"gain": g, "bias": b} for g, b in image.norms])
        self.thresholds = _memory(row_layout(c.acc_bits, LEVELS), image.thresholds)
        self.biases = _memory(signed(BIAS_BITS), image.biases)
        self.levels = _memory(LEVEL_BITS, image.levels)
        self.exp_table = _memory(EXP_BITS, image.exp_table)
        self.values = _memory(signed(VALUE_WORD_BITS), [], image.values)
        self.logits = _memory(signed(LOGIT_BITS), [], image.classes)
        self.x = Memory(shape=data.ArrayLayout(c.entry_bits, 1), depth=c.x_depth, init=[])
        self.y = Memory(shape=data.ArrayLayout(c.entry_bits, c.lanes), depth=c.y_depth,
                        init=[list(row) for row in image.y_rows])
        self.prog = _memory(data.ArrayLayout(descriptor_layout(c).size, 1), [[d] for d in image.descriptors])
        self.result = Memory(shape=data.ArrayLayout(signed(c.acc_bits), c.lanes), depth=c.result_depth, init=[])
        self.program = _memory(step_layout(self.registers, len(Stage)), image.steps)
        super().__init__({
            "pixels": In(stream.Signature(unsigned(PIXEL_BITS))), "pixels_first": In(1),
            "start": In(1), "busy": Out(1),
            "klass": Out(index_bits(image.classes)),
            "logit_addr": In(index_bits(image.classes)), "logit": Out(signed(LOGIT_BITS)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c, image = self.config, self.image
        for name in ("residual", "token_table", "norms", "thresholds", "biases", "levels", "exp_table", "values",
                     "logits", "x", "y", "prog", "result", "program"):
            m.submodules[f"mem_{name}"] = getattr(self, name)
        m.submodules.steps = steps = StepSequencer(self.registers, len(Stage), index_bits(len(image.steps)))
        wiring.connect(m, self.program.read_port(), steps.program)
        regs, go = steps.regs, steps.go
        m.d.comb += [steps.start.eq(self.start), self.busy.eq(steps.busy)]
        route = Signal(Stage)  # the last stage started other than RUN: which way the streams go
        for stage in Stage:
            if stage is not Stage.RUN:
                with m.If(go[stage]):
                    m.d.sync += route.eq(stage)

        engine = self._engine(m, regs, go)
        r_port, r_write = self.residual.read_port(), self.residual.write_port()
        norm, norm_source = self._norm_source(m, regs, go, r_port)
        values, reading = self._reader(m, regs, go)
        adding = self._adders(m, regs, go, route, values, reading, r_port, r_write, norm_source)
        quantize = self._quantizer(m, regs, go, route, values, norm)
        score_write, score_written = self._scores(m, regs, go, route, values)
        bits_source = self._bits_source(m, regs, go)
        values_written = self._values(m, go, route, norm)
        pack_written, lanes_written = self._packing(m, regs, go, route, quantize, bits_source, score_write)
        argmax_busy = self._argmax(m, go)

        # each stage's busy, from the cycle after its go: the writers' stages until their entries are written
        written = Signal(range(max(c.x_depth, c.y_depth, image.values) + 1))
        with m.Switch(route):
            with m.Case(Stage.NORM, Stage.READ_CODES, Stage.BITS):
                m.d.comb += written.eq(pack_written)
            with m.Case(Stage.READ_K, Stage.READ_V):
                m.d.comb += written.eq(lanes_written)
            with m.Case(Stage.SCORES):
                m.d.comb += written.eq(score_written)
            with m.Default():
                m.d.comb += written.eq(values_written)
        writing = Signal()
        writers = (Stage.NORM, Stage.READ_CODES, Stage.READ_K, Stage.READ_V, Stage.SCORES, Stage.BITS,
                   Stage.NORM_VALUES)
        with m.If(Cat(*(go[s] for s in writers)).any()):
            m.d.sync += writing.eq(1)
        with m.Elif(written == regs.entries):
            m.d.sync += writing.eq(0)
        busy = {Stage.RUN: engine.busy, Stage.READ_ADD: adding, Stage.LOGITS: adding, Stage.TOKENS: norm_source["copying"],
                Stage.ARGMAX: argmax_busy}
        m.d.comb += steps.stage_busy.eq(sum(busy.get(stage, writing) << stage for stage in Stage))
        return m

    def _engine(self, m: Module, regs: object, go: object) -> Engine:
        """The engine: its operands, descriptors and results at the offsets of the run."""
        c = self.config
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
        return engine

    def _norm_source(self, m: Module, regs: object, go: object, r_port: object) -> tuple:
        """LayerNorm, fed ``norm_tokens`` tokens of R from ``norm_from``, each twice, with its channels' gains and
        biases (NORM, NORM_VALUES); and TOKENS' copy of the token table into R. Returns LayerNorm and the
        signals R's ports need."""
        image = self.image
        d = image.dim
        m.submodules.norm = norm = LayerNorm(d, RESIDUAL_BITS, NORM_BITS, EPS_BITS, self.divider)
        table = self.norms.read_port()
        token_base = Signal(index_bits(image.tokens * d), reset_less=True)  # R's address of the token's first value
        column = Signal(range(d), reset_less=True)
        second = Signal(reset_less=True)                                # the token's second pass
        left = Signal(range(2 * image.tokens * d + 1))                  # values still to read
        have = Signal()                                                 # the ports hold the next value
        advance = ~have | norm.i.ready
        m.d.comb += [norm.i.valid.eq(have), norm.i.payload.x.eq(r_port.data),
                     norm.i.payload.gain.eq(table.data.gain), norm.i.payload.bias.eq(table.data.bias),
                     norm.eps.eq(regs.eps), table.addr.eq(regs.norm_base + column), table.en.eq(advance)]
        with m.If(advance):
            m.d.sync += have.eq(left != 0)
            with m.If(left != 0):
                m.d.sync += [left.eq(left - 1), column.eq(Mux(column == d - 1, 0, column + 1))]
                with m.If(column == d - 1):
                    m.d.sync += second.eq(~second)
                    with m.If(second):
                        m.d.sync += token_base.eq(token_base + d)
        with m.If(go[Stage.NORM] | go[Stage.NORM_VALUES]):
            m.d.sync += [left.eq(regs.norm_tokens * (2 * d)), column.eq(0), second.eq(0),
                         token_base.eq(regs.norm_from), have.eq(0)]
        # TOKENS: the token table into R, a word a cycle (read, then written)
        tokens = self.token_table.read_port()
        copy_addr = Signal(index_bits(image.tokens * d), reset_less=True)
        copy_left = Signal(range(image.tokens * d + 1))
        copy_write = Signal()
        write_addr = Signal.like(copy_addr, reset_less=True)
        m.d.comb += [tokens.addr.eq(copy_addr), tokens.en.eq(1)]
        m.d.sync += copy_write.eq(copy_left != 0)
        with m.If(copy_left != 0):
            m.d.sync += [copy_left.eq(copy_left - 1), copy_addr.eq(copy_addr + 1), write_addr.eq(copy_addr)]
        with m.If(go[Stage.TOKENS]):
            m.d.sync += [copy_left.eq(image.tokens * d if image.token_table else 0), copy_addr.eq(0)]
        return norm, {"r_addr": token_base + column, "advance": advance, "copying": (copy_left != 0) | copy_write,
                      "copy_write": copy_write, "copy_addr": write_addr, "copy_data": tokens.data}

    def _reader(self, m: Module, regs: object, go: object) -> tuple[stream.Interface, Value]:
        """The result reader, started by every stage that reads results; returns its values, registered, and
        whether any are still to come."""
        c, image = self.config, self.image
        m.submodules.reader = reader = ResultReader(c.lanes, c.acc_bits, c.addr_bits(c.result_depth),
                                                    index_bits(image.channels))
        wiring.connect(m, self.result.read_port(), reader.result)
        readers = (Stage.READ_CODES, Stage.READ_ADD, Stage.READ_K, Stage.READ_V, Stage.SCORES, Stage.LOGITS)
        m.d.comb += [reader.start.eq(Cat(*(go[s] for s in readers)).any()), reader.rows.eq(regs.read_rows),
                     reader.blocks.eq(regs.read_blocks), reader.first.eq(regs.read_first),
                     reader.row_stride.eq(regs.read_stride), reader.heads.eq(regs.read_heads),
                     reader.head_stride.eq(regs.read_head_stride), reader.channels.eq(regs.channels)]
        # registered: the reader's lane select (a 16-way mux on the ECP5's preset) ends in a flip-flop before
        # it fans out to the thresholds, the adders and the scores' multiplier
        m.submodules.reader_out = out = SkidBuffer(len(reader.o.payload.as_value()))
        m.d.comb += [out.i.valid.eq(reader.o.valid), out.i.payload.eq(reader.o.payload), reader.o.ready.eq(out.i.ready)]
        values = stream.Signature(reader.o.payload.shape()).create()
        m.d.comb += [values.valid.eq(out.o.valid), values.payload.eq(out.o.payload), out.o.ready.eq(values.ready)]
        return values, reader.busy | reader.o.valid | out.o.valid | ~out.i.ready

    def _adders(self, m: Module, regs: object, go: object, route: Signal, values: stream.Interface, reading: Value,
                r_port: object, r_write: object, norm_source: dict) -> Value:
        """READ_ADD: results requantized into R from ``residual_base``; LOGITS: into the logits memory (onto the
        logits so far when ``accumulate``). R's ports are NORM's, TOKENS' or the adder's; the biases' port either
        adder's. Returns their stage's busy."""
        c, image = self.config, self.image
        channel_bits = index_bits(image.channels)
        m.submodules.add = add = ResidualAdd(c.acc_bits, RESIDUAL_BITS, BIAS_BITS, index_bits(image.tokens * image.dim),
                                             channel_bits)
        m.submodules.add_logits = add_logits = ResidualAdd(c.acc_bits, LOGIT_BITS, BIAS_BITS, index_bits(image.classes),
                                                           channel_bits)
        bias = self.biases.read_port()
        for adder, stage in ((add, Stage.READ_ADD), (add_logits, Stage.LOGITS)):
            m.d.comb += [adder.start.eq(go[stage]), adder.multiplier.eq(regs.multiplier), adder.shift.eq(regs.shift),
                         adder.bias.data.eq(bias.data)]
        m.d.comb += [add.r_base.eq(regs.residual_base), add.r_read.data.eq(r_port.data), add_logits.r_base.eq(0)]
        with m.If(route == Stage.LOGITS):
            m.d.comb += [bias.addr.eq(regs.bias_base + add_logits.bias.addr), bias.en.eq(add_logits.bias.en)]
        with m.Else():
            m.d.comb += [bias.addr.eq(regs.bias_base + add.bias.addr), bias.en.eq(add.bias.en)]
        with m.If(route == Stage.READ_ADD):
            m.d.comb += [r_port.addr.eq(add.r_read.addr), r_port.en.eq(add.r_read.en)]
        with m.Else():
            m.d.comb += [r_port.addr.eq(norm_source["r_addr"]), r_port.en.eq(norm_source["advance"])]
        with m.If(route == Stage.TOKENS):
            m.d.comb += [r_write.addr.eq(norm_source["copy_addr"]), r_write.data.eq(norm_source["copy_data"]),
                         r_write.en.eq(norm_source["copy_write"])]
        with m.Else():
            wiring.connect(m, add.r_write, r_write)
        # the logits memory: the adder's, the argmax's (self._logit_port), or the host's while idle
        self._logit_read, logit_write = self.logits.read_port(), self.logits.write_port()
        wiring.connect(m, add_logits.r_write, logit_write)
        m.d.comb += add_logits.r_read.data.eq(Mux(regs.accumulate, self._logit_read.data, 0))
        m.d.comb += self.logit.eq(self._logit_read.data)
        with m.If(route == Stage.LOGITS):
            m.d.comb += [self._logit_read.addr.eq(add_logits.r_read.addr), self._logit_read.en.eq(add_logits.r_read.en)]
        with m.Elif(~self.busy):
            m.d.comb += [self._logit_read.addr.eq(self.logit_addr), self._logit_read.en.eq(1)]
        with m.If(route == Stage.READ_ADD):
            wiring.connect(m, values, add.i)
        with m.Elif(route == Stage.LOGITS):
            wiring.connect(m, values, add_logits.i)
        return reading | add.busy | add_logits.busy

    def _quantizer(self, m: Module, regs: object, go: object, route: Signal, values: stream.Interface,
                   norm: LayerNorm) -> PipelinedMultiThreshold:
        """The thresholds, behind LayerNorm (NORM) or the results (READ_CODES, READ_K, READ_V)."""
        c, image = self.config, self.image
        m.submodules.quantize = quantize = PipelinedMultiThreshold(c.acc_bits, image.channels, LEVELS, CODE_BITS)
        rows = self.thresholds.read_port()
        m.d.comb += [rows.addr.eq(regs.thresh_base + quantize.thresh.addr), rows.en.eq(quantize.thresh.en),
                     quantize.thresh.data.eq(rows.data), quantize.base.eq(regs.code_base)]
        norm_channel = Signal(range(image.dim))  # each LayerNorm output's channel
        with m.If(norm.o.valid & norm.o.ready):
            m.d.sync += norm_channel.eq(Mux(norm_channel == image.dim - 1, 0, norm_channel + 1))
        with m.If(go[Stage.NORM]):
            m.d.sync += norm_channel.eq(0)
        with m.If((route == Stage.READ_CODES) | (route == Stage.READ_K) | (route == Stage.READ_V)):
            m.d.comb += [quantize.i.valid.eq(values.valid), values.ready.eq(quantize.i.ready),
                         quantize.i.payload.eq(values.payload)]
        with m.Elif(route == Stage.NORM):
            m.d.comb += [quantize.i.valid.eq(norm.o.valid), norm.o.ready.eq(quantize.i.ready),
                         quantize.i.payload.value.eq(norm.o.payload), quantize.i.payload.channel.eq(norm_channel)]
        return quantize

    def _scores(self, m: Module, regs: object, go: object, route: Signal, values: stream.Interface) -> tuple:
        """SCORES: the scores requantized, their softmax levels, a Packer per level group; the groups' entries
        written in turn into the x buffer, group ``g`` at ``write_base + g * write_head_stride``. Returns the
        Packers' outputs' write (a function of the x port) and the entries written."""
        c, image = self.config, self.image
        m.submodules.score = score = Requantize(c.acc_bits, 1, 1, image.score_bits)
        m.d.comb += [score.multiplier.eq(regs.multiplier), score.shift.eq(regs.shift),
                     score.i.payload.y.eq(values.payload.value)]
        with m.If(route == Stage.SCORES):
            m.d.comb += [score.i.valid.eq(values.valid), values.ready.eq(score.i.ready)]
        m.submodules.softmax = softmax = SoftmaxLevels(image.score_bits, image.tokens, len(image.exp_table),
                                                       image.counts, ATTN_FRAC_BITS, EXP_BITS, LEVEL_BITS,
                                                       index_bits(len(image.levels)))
        wiring.connect(m, self.exp_table.read_port(), softmax.table)
        wiring.connect(m, self.levels.read_port(), softmax.thresh)
        column = Signal(range(image.tokens))
        row_base = Signal(index_bits(len(image.levels)))  # the row's first level word
        m.d.comb += [softmax.i.valid.eq(score.o.valid), score.o.ready.eq(softmax.i.ready),
                     softmax.i.payload.score.eq(score.o.payload), softmax.i.payload.last.eq(column == image.tokens - 1),
                     softmax.i.payload.base.eq(row_base)]
        with m.If(score.o.valid & score.o.ready):
            m.d.sync += column.eq(Mux(column == image.tokens - 1, 0, column + 1))
            with m.If(column == image.tokens - 1):
                m.d.sync += row_base.eq(row_base + image.tokens * sum(image.counts))
        with m.If(go[Stage.SCORES]):
            m.d.sync += [column.eq(0), row_base.eq(regs.level_base)]
        packers = [Packer(c.word_bits, image.tokens, PlaneKind.UNIPOLAR, softmax.code_bits + 1) for _ in image.counts]
        for g, packer in enumerate(packers):
            m.submodules[f"score_pack{g}"] = packer
            m.d.comb += [packer.i.valid.eq(softmax.o.valid & softmax.o.ready), packer.i.payload.eq(softmax.o.payload[g])]
        m.d.comb += softmax.o.ready.eq(Cat(*(p.i.ready for p in packers)).all())
        written = Signal(range(c.x_depth + 1))
        counts = [Signal(range(c.x_depth + 1), name=f"group{g}_written") for g in range(len(packers))]
        with m.If(go[Stage.SCORES]):
            m.d.sync += [written.eq(0)] + [count.eq(0) for count in counts]

        def write(x_write: object) -> None:
            earlier = Const(0)
            for g, packer in enumerate(packers):
                take = packer.o.valid & ~earlier
                earlier = earlier | packer.o.valid
                m.d.comb += packer.o.ready.eq(take)
                with m.If(take):
                    m.d.comb += [x_write.addr.eq(regs.write_base + g * regs.write_head_stride + counts[g]),
                                 x_write.data[0].eq(packer.o.payload), x_write.en.eq(1)]
                    m.d.sync += [counts[g].eq(counts[g] + 1), written.eq(written + 1)]
        return write, written

    def _bits_source(self, m: Module, regs: object, go: object) -> stream.Interface:
        """BITS' source: the values memory's first ``bits_count`` words, once per bit-plane (``planes``), as
        codes: bit ``k`` of each value (two's complement), least significant plane first."""
        image = self.image
        port = self.values.read_port()
        index = Signal(range(image.values), reset_less=True)
        plane = Signal(range(VALUE_WORD_BITS + 1), reset_less=True)
        plane_read = Signal.like(plane, reset_less=True)   # the plane of the value on the port
        active, have = Signal(), Signal()                  # values left to read; the port holds one
        out = stream.Signature(signed(CODE_BITS)).create()
        advance = ~have | out.ready
        m.d.comb += [out.valid.eq(have), out.payload.eq(port.data.bit_select(plane_read, 1)),
                     port.addr.eq(index), port.en.eq(advance)]
        with m.If(advance):
            m.d.sync += have.eq(active)
            with m.If(active):
                m.d.sync += [plane_read.eq(plane), index.eq(index + 1)]
                with m.If(index == regs.bits_count - 1):
                    m.d.sync += [index.eq(0), plane.eq(plane + 1)]
                    with m.If(plane == regs.planes - 1):
                        m.d.sync += active.eq(0)
        with m.If(go[Stage.BITS]):
            m.d.sync += [active.eq((regs.planes != 0) & (regs.bits_count != 0)), index.eq(0), plane.eq(0), have.eq(0)]
        return out

    def _values(self, m: Module, go: object, route: Signal, norm: LayerNorm) -> Signal:
        """The values memory's writes: the pixels while idle (from its start after each ``start``), LayerNorm's
        outputs in NORM_VALUES. Returns NORM_VALUES' count."""
        image = self.image
        write = self.values.write_port()
        pixel_addr = Signal(range(image.values), reset_less=True)
        written = Signal(range(image.values + 1))
        m.d.comb += self.pixels.ready.eq(~self.busy)
        with m.If(route == Stage.NORM_VALUES):
            m.d.comb += [norm.o.ready.eq(1), write.addr.eq(written), write.data.eq(norm.o.payload),
                         write.en.eq(norm.o.valid)]
            with m.If(norm.o.valid):
                m.d.sync += written.eq(written + 1)
        with m.Elif(~self.busy):
            addr = Mux(self.pixels_first, 0, pixel_addr)
            m.d.comb += [write.addr.eq(addr), write.data.eq(self.pixels.payload), write.en.eq(self.pixels.valid)]
            with m.If(self.pixels.valid):
                m.d.sync += pixel_addr.eq(addr + 1)
        with m.If(self.start):
            m.d.sync += pixel_addr.eq(0)
        with m.If(go[Stage.NORM_VALUES]):
            m.d.sync += written.eq(0)
        return written

    def _packing(self, m: Module, regs: object, go: object, route: Signal, quantize: PipelinedMultiThreshold,
                 bits_source: stream.Interface, score_write: object) -> tuple[Signal, Signal]:
        """The codes packed: into the x buffer (NORM, READ_CODES, BITS) or as K by head into the y buffer
        (READ_K); a Value group transposed into the y buffer (READ_V); SCORES' groups into the x buffer.
        Returns the two writers' counts."""
        c, image = self.config, self.image
        m.submodules.pack = pack = Packer(c.word_bits, image.channels, PlaneKind.BIPOLAR, CODE_BITS)
        m.submodules.transpose = transpose = TransposePacker(c.word_bits, image.tokens, image.dim, PlaneKind.BIPOLAR,
                                                             CODE_BITS)
        m.d.comb += [pack.n.eq(regs.pack_n), pack.kind.eq(regs.kind), transpose.kind.eq(regs.kind)]
        with m.If(route == Stage.READ_V):
            wiring.connect(m, quantize.o, transpose.i)
        with m.Elif(route == Stage.BITS):
            wiring.connect(m, bits_source, pack.i)
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
        with m.If(route == Stage.SCORES):
            score_write(x_write)
        with m.Else():
            wiring.connect(m, writer.write, x_write)
        for target in (writer, lanes):
            m.d.comb += [target.base.eq(regs.write_base), target.words.eq(regs.write_words),
                         target.heads.eq(regs.write_heads), target.head_stride.eq(regs.write_head_stride)]
        m.d.comb += [writer.row_stride.eq(regs.write_row_stride),
                     writer.start.eq(go[Stage.NORM] | go[Stage.READ_CODES] | go[Stage.BITS]),
                     lanes.start.eq(go[Stage.READ_K] | go[Stage.READ_V])]
        return writer.written, lanes.written

    def _argmax(self, m: Module, go: object) -> Signal:
        """ARGMAX: the logits memory through the argmax into ``klass``. Returns its stage's busy."""
        image = self.image
        m.submodules.argmax = argmax = Argmax(LOGIT_BITS, image.classes)
        index = Signal(range(image.classes + 1), reset_less=True)
        have, running = Signal(), Signal()
        read = self._logit_read
        advance = ~have | argmax.i.ready
        with m.If(running):
            m.d.comb += [read.addr.eq(index), read.en.eq(advance)]
        m.d.comb += [argmax.i.valid.eq(have), argmax.i.payload.value.eq(read.data),
                     argmax.i.payload.last.eq(index == image.classes), argmax.o.ready.eq(1)]
        with m.If(advance & running):
            m.d.sync += have.eq(index != image.classes)
            with m.If(index != image.classes):
                m.d.sync += index.eq(index + 1)
        with m.If(argmax.o.valid):
            m.d.sync += [self.klass.eq(argmax.o.payload.index), running.eq(0)]
        with m.If(go[Stage.ARGMAX]):
            m.d.sync += [index.eq(0), have.eq(0), running.eq(1)]
        return running
