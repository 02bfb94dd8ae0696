"""The whole-model core: the engine, the integer units and their memories, ordered by a step program.

The design of issue 14 ("the whole ViT on the FPGA"), as far as it is
built: the residual stream ``R`` lives in a memory, and a step program
(:mod:`hw.steps`) runs the stages that move it through the layers with no
host between them. Each stage is one route through the units:

* ``NORM``: ``R``'s tokens, each sent twice (statistics, then values),
  through :class:`~hw.layernorm.LayerNorm`, the per-channel thresholds
  (:class:`~hw.multithreshold.PipelinedMultiThreshold`) and the
  :class:`~hw.packer.Packer` into the engine's x buffer
  (:class:`~hw.packer.EntryWriter`): a linear layer's input;
* ``RUN``: the engine (:class:`~hw.engine.Engine`) on the x buffer and the
  resident weights, its pass program at ``prog_base`` of a descriptor
  store that holds every layer's;
* ``READ_CODES``: the results (:class:`~hw.results.ResultReader`) through
  the thresholds and the Packer into the x buffer: the next layer's input;
* ``READ_ADD``: the results requantized and added into ``R`` in place
  (:class:`~hw.residual.ResidualAdd`).

The program's SET steps give each layer its constants (:func:`core_registers`:
the run's arguments, table bases, LayerNorm's eps, the quantizer's code
base, the packing's row length and kind, requantize's multiplier and
shift); the tables (LayerNorm gains and biases, threshold rows, residual
biases), the weights and the descriptors are memories initialised from a
:class:`CoreImage` (:mod:`hw.core_program` compiles one from a model's
integer program). So far this runs the MLP half of a block and any chain
of linear layers between norms and residual adds; the attention path
(``Q K^T``, the softmax levels, ``A V``), the patch embedding, the heads and
the upload path are not built (docs/integer-gateware.md).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from amaranth.hdl import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import AccelConfig, ceil_log2
from hw.descriptor import descriptor_layout
from hw.engine import Engine
from hw.layernorm import LayerNorm
from hw.multithreshold import PipelinedMultiThreshold, row_layout
from hw.packer import EntryWriter, Packer
from hw.residual import ResidualAdd
from hw.results import ResultReader
from hw.steps import StepSequencer, step_layout
from model.golden import PlaneKind
from model.intvit import NORM_BITS, RESIDUAL_BITS

#: The levels every threshold row holds (a quantizer with fewer is padded with levels never reached).
LEVELS = 2
#: The signed width of a quantizer's code (a GELU fold's 0..2, a sign's -1..1).
CODE_BITS = 4
#: Bits of a residual bias (the contract's bound).
BIAS_BITS = 26
#: Bits of LayerNorm's eps.
EPS_BITS = 40


class Stage(enum.IntEnum):
    NORM = 0
    RUN = 1
    READ_CODES = 2
    READ_ADD = 3


@dataclass(frozen=True)
class CoreImage:
    """What a core's memories start with, and its shape.

    ``residual`` is ``R`` row-major (``tokens x dim``); ``norms`` the
    LayerNorm tables, ``(gain, bias)`` per channel, one table of ``dim``
    after another; ``thresholds`` the threshold rows (:func:`hw.multithreshold.threshold_rows`
    at the accumulator's width and :data:`LEVELS` levels), one table per
    quantizer; ``biases`` the residual biases; ``y_rows`` and
    ``descriptors`` the engine's resident weights and every layer's stored
    pass descriptors; ``steps`` the program; ``channels`` the widest layer's
    outputs.
    """

    dim: int
    tokens: int
    channels: int
    residual: tuple[int, ...]
    norms: tuple[tuple[int, int], ...]
    thresholds: tuple[dict, ...]
    biases: tuple[int, ...]
    y_rows: tuple[tuple[int, ...], ...]
    descriptors: tuple[int, ...]
    steps: tuple[dict, ...]


def _bits(depth: int) -> int:
    return max(1, ceil_log2(depth))


def core_registers(config: AccelConfig, image: CoreImage) -> data.StructLayout:
    """The constants a core's SET steps write."""
    c = config
    return data.StructLayout({
        "rows": range(c.result_depth + 1), "blocks": range(c.result_depth + 1), "words": c.words_bits,
        "passes": range(c.prog_depth + 1), "offset": signed(c.acc_bits), "prog_base": _bits(len(image.descriptors)),
        "channels": range(image.channels + 1),
        "eps": EPS_BITS, "norm_base": _bits(len(image.norms)),
        "thresh_base": _bits(len(image.thresholds)), "code_base": signed(CODE_BITS),
        "pack_n": range(image.channels + 1), "kind": 2,
        "x_base": c.addr_bits(c.x_depth), "entries": range(c.x_depth + 1),
        "multiplier": 16, "shift": 6, "bias_base": _bits(len(image.biases)),
    })


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
        self.residual = Memory(shape=signed(RESIDUAL_BITS), depth=len(image.residual), init=image.residual)
        self.norms = Memory(shape=data.StructLayout({"gain": signed(NORM_BITS), "bias": signed(NORM_BITS)}),
                            depth=len(image.norms), init=[{"gain": g, "bias": b} for g, b in image.norms])
        self.thresholds = Memory(shape=row_layout(c.acc_bits, LEVELS), depth=len(image.thresholds),
                                 init=image.thresholds)
        self.biases = Memory(shape=signed(BIAS_BITS), depth=len(image.biases), init=image.biases)
        self.x = Memory(shape=data.ArrayLayout(c.entry_bits, 1), depth=c.x_depth, init=[])
        self.y = Memory(shape=data.ArrayLayout(c.entry_bits, c.lanes), depth=c.y_depth,
                        init=[list(row) for row in image.y_rows])
        self.prog = Memory(shape=data.ArrayLayout(descriptor_layout(c).size, 1), depth=len(image.descriptors),
                           init=[[d] for d in image.descriptors])
        self.result = Memory(shape=data.ArrayLayout(signed(c.acc_bits), c.lanes), depth=c.result_depth, init=[])
        self.program = Memory(shape=step_layout(self.registers, len(Stage)), depth=len(image.steps),
                              init=image.steps)
        super().__init__({"start": In(1), "busy": Out(1)})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c, image = self.config, self.image
        for name in ("residual", "norms", "thresholds", "biases", "x", "y", "prog", "result", "program"):
            m.submodules[f"mem_{name}"] = getattr(self, name)
        m.submodules.steps = steps = StepSequencer(self.registers, len(Stage), _bits(len(image.steps)))
        wiring.connect(m, self.program.read_port(), steps.program)
        regs, go = steps.regs, steps.go
        m.d.comb += [steps.start.eq(self.start), self.busy.eq(steps.busy)]
        route = Signal(Stage)  # the last stage started other than RUN: which way the streams go
        for stage in (Stage.NORM, Stage.READ_CODES, Stage.READ_ADD):
            with m.If(go[stage]):
                m.d.sync += route.eq(stage)

        # the engine: resident weights, its descriptors at prog_base of the store
        m.submodules.engine = engine = Engine(c)
        wiring.connect(m, self.x.read_port(), engine.x)
        wiring.connect(m, self.y.read_port(), engine.y)
        prog = self.prog.read_port()
        m.d.comb += [prog.addr.eq(regs.prog_base + engine.prog.addr), prog.en.eq(engine.prog.en),
                     engine.prog.data.eq(prog.data)]
        wiring.connect(m, self.result.write_port(granularity=1), engine.result)
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

        # READ_ADD: the results requantized into R; R's one read port is NORM's or the adder's
        m.submodules.reader = reader = ResultReader(c.lanes, c.acc_bits, c.addr_bits(c.result_depth),
                                                    _bits(image.channels))
        wiring.connect(m, self.result.read_port(), reader.result)
        m.d.comb += [reader.start.eq(go[Stage.READ_CODES] | go[Stage.READ_ADD]), reader.rows.eq(regs.rows),
                     reader.blocks.eq(regs.blocks), reader.row_stride.eq(regs.blocks), reader.channels.eq(regs.channels)]
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

        # the thresholds and the Packer into the x buffer, behind LayerNorm (NORM) or the results (READ_CODES)
        m.submodules.quantize = quantize = PipelinedMultiThreshold(c.acc_bits, image.channels, LEVELS, CODE_BITS)
        rows = self.thresholds.read_port()
        m.d.comb += [rows.addr.eq(regs.thresh_base + quantize.thresh.addr), rows.en.eq(quantize.thresh.en),
                     quantize.thresh.data.eq(rows.data), quantize.base.eq(regs.code_base)]
        norm_channel = Signal(range(image.dim))  # each LayerNorm output's channel
        with m.If(norm.o.valid & norm.o.ready):
            m.d.sync += norm_channel.eq(Mux(norm_channel == image.dim - 1, 0, norm_channel + 1))
        with m.If(go[Stage.NORM]):
            m.d.sync += norm_channel.eq(0)
        with m.If(route == Stage.NORM):
            m.d.comb += [quantize.i.valid.eq(norm.o.valid), norm.o.ready.eq(quantize.i.ready),
                         quantize.i.payload.value.eq(norm.o.payload), quantize.i.payload.channel.eq(norm_channel)]
        with m.Elif(route == Stage.READ_CODES):
            m.d.comb += [quantize.i.valid.eq(reader.o.valid), reader.o.ready.eq(quantize.i.ready),
                         quantize.i.payload.eq(reader.o.payload)]
        with m.Else():
            wiring.connect(m, reader.o, add.i)
        m.submodules.pack = pack = Packer(c.word_bits, image.channels, PlaneKind.BIPOLAR, CODE_BITS)
        m.d.comb += [pack.n.eq(regs.pack_n), pack.kind.eq(regs.kind)]
        wiring.connect(m, quantize.o, pack.i)
        m.submodules.writer = writer = EntryWriter(c.entry_bits, c.addr_bits(c.x_depth), image.tokens,
                                                   c.x_depth // image.tokens)
        wiring.connect(m, pack.o, writer.i)
        wiring.connect(m, self.x.write_port(), writer.write)
        writing = go[Stage.NORM] | go[Stage.READ_CODES]
        m.d.comb += [writer.start.eq(writing), writer.base.eq(regs.x_base)]

        # each stage's busy, from the cycle after its go
        packing = Signal()  # NORM or READ_CODES: until the writer has written the layer's entries
        with m.If(writing):
            m.d.sync += packing.eq(1)
        with m.Elif(writer.written == regs.entries):
            m.d.sync += packing.eq(0)
        adding = reader.busy | reader.o.valid | add.busy
        m.d.comb += steps.stage_busy.eq(sum((busy << stage) for stage, busy in (
            (Stage.NORM, packing), (Stage.RUN, engine.busy), (Stage.READ_CODES, packing), (Stage.READ_ADD, adding))))
        return m
