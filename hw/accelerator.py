"""The accelerator: decoder, buffers and engine behind two 32-bit streams."""

from __future__ import annotations

from pathlib import Path

from amaranth.back import verilog
from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.buffers import Buffer
from hw.config import STREAM_BITS, AccelConfig
from hw.decoder import Decoder
from hw.engine import Engine
from hw.isa import LOAD_OPS


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
        wiring.connect(m, wiring.flipped(self.cmd), decoder.cmd)
        wiring.connect(m, decoder.rsp, wiring.flipped(self.rsp))
        m.d.comb += [engine.start.eq(decoder.start), engine.args.eq(decoder.args), decoder.busy.eq(engine.busy)]
        readers = {"load_x": engine.x, "load_y": engine.y, "load_thresh": engine.thresh, "load_prog": engine.prog}
        for op, (banks, _, item_bits, depth) in zip(LOAD_OPS, decoder.targets):
            name = op.name.lower()
            buf = Buffer(item_bits, banks, depth)
            m.submodules[name.removeprefix("load_")] = buf
            wiring.connect(m, buf.write, getattr(decoder, name))
            wiring.connect(m, buf.read, readers[name])
        m.submodules.result = result = Buffer(c.acc_bits, c.lanes, c.result_depth)
        wiring.connect(m, result.write, engine.result)
        wiring.connect(m, result.read, decoder.result)
        return m


def write_verilog(config: AccelConfig, path: Path, name: str = "accelerator") -> bool:
    """Generate the Verilog of an accelerator into the file ``path``.

    The file is only rewritten when the text changed (so that simulators
    rebuild exactly when the design did); returns whether it was.
    """
    text = verilog.convert(Accelerator(config), name=name)
    path = Path(path)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return True
