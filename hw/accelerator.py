"""The accelerator: decoder, buffers and engine behind two 32-bit streams."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.buffers import Buffer, spram_blocks_available
from hw.config import STREAM_BITS, AccelConfig
from hw.decoder import Decoder
from hw.engine import Engine
from hw.isa import LOAD_OPS


class SkidBuffer(wiring.Component):
    """A register slice for a stream: ``o``'s valid and payload and ``i``'s
    ready all come from flip-flops, at full rate.

    The second register (the skid) catches the word that arrives in the
    cycle ``o`` stalls, since ``i.ready`` is one cycle late to say so.
    """

    def __init__(self, width: int) -> None:
        super().__init__({"i": In(stream.Signature(width)), "o": Out(stream.Signature(width))})

    def elaborate(self, platform: object) -> Module:
        m = Module()
        skid = Signal.like(self.i.payload)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        with m.If(self.o.ready | ~self.o.valid):
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(self.i.valid)]
        with m.Elif(self.i.valid & ~skid_valid):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m


class Accelerator(wiring.Component):
    """The top level: ``cmd`` in, ``rsp`` out (``stream.Signature(32)`` each).

    Weights stay resident in the per-lane ``y`` buffer, activations are
    loaded into the ``x`` buffer for every image; thresholds and the pass
    program have their own small buffers; results go to a result buffer that
    READ streams out.  See ``docs/accelerator.md``.
    """

    def __init__(self, config: AccelConfig) -> None:
        if not isinstance(config, AccelConfig):
            raise TypeError(f"config must be an AccelConfig, got {type(config).__name__}")
        self.config = config
        super().__init__({
            "cmd": In(stream.Signature(STREAM_BITS)),
            "rsp": Out(stream.Signature(STREAM_BITS)),
        })

    def elaborate(self, platform: object) -> Module:
        m = Module()
        c = self.config
        m.submodules.decoder = decoder = Decoder(c)
        m.submodules.engine = engine = Engine(c)
        # both streams are registered: the UART bridge's handshake logic and
        # the decoder's would otherwise form one long path
        m.submodules.cmd_reg = cmd_reg = SkidBuffer(STREAM_BITS)
        m.submodules.rsp_reg = rsp_reg = SkidBuffer(STREAM_BITS)
        wiring.connect(m, wiring.flipped(self.cmd), cmd_reg.i)
        wiring.connect(m, cmd_reg.o, decoder.cmd)
        wiring.connect(m, decoder.rsp, rsp_reg.i)
        wiring.connect(m, rsp_reg.o, wiring.flipped(self.rsp))
        m.d.comb += [engine.start.eq(decoder.start), engine.args.eq(decoder.args), decoder.busy.eq(engine.busy)]
        readers = {"load_x": engine.x, "load_y": engine.y, "load_thresh": engine.thresh, "load_prog": engine.prog}
        buffers = []
        for op, (banks, _, item_bits, depth) in zip(LOAD_OPS, decoder.targets):
            name = op.name.lower()
            short = name.removeprefix("load_")
            m.submodules[short] = buf = Buffer(item_bits, banks, depth, spram=short in c.spram)
            wiring.connect(m, buf.write, getattr(decoder, name))
            wiring.connect(m, buf.read, readers[name])
            buffers.append(buf)
        m.submodules.result = result = Buffer(c.acc_bits, c.lanes, c.result_depth, spram="result" in c.spram)
        wiring.connect(m, result.write, engine.result)
        wiring.connect(m, result.read, decoder.result)
        buffers.append(result)
        needed = sum(buf.spram_blocks for buf in buffers if buf.uses_spram(platform))
        if needed > spram_blocks_available(platform):
            raise ValueError(
                f"spram={c.spram!r} needs {needed} SPRAM blocks, {platform.device} has "
                f"{spram_blocks_available(platform)}: put fewer or narrower buffers into SPRAM"
            )
        return m
