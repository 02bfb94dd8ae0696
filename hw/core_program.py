"""A model's integer program as a :class:`hw.core.CoreImage`: the core's tables, weights and step program.

:class:`CoreCompiler` lays out, stage by stage, what the core needs to run
a part of :func:`model.intvit.forward` with no host: each LayerNorm's gains
and biases, each quantizer's threshold rows, each residual add's biases,
each linear layer's weight rows (resident, one after another in the y
buffer) and pass descriptors (one store, each layer at its ``prog_base``),
and the SET and GO steps that give every stage its constants. Its methods
are the stages (:meth:`CoreCompiler.norm`, :meth:`~CoreCompiler.run`,
:meth:`~CoreCompiler.read_codes`, :meth:`~CoreCompiler.read_add`);
:func:`mlp_image` writes the MLP half of a block with them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hw.config import AccelConfig
from hw.core import LEVELS, CoreImage, Stage, core_registers
from hw.descriptor import stored_descriptor
from hw.multithreshold import threshold_rows
from hw.packer import KIND_CODES
from hw.program import LayerImage, compile_layer, y_layout
from hw.steps import END_STEP, go_step, set_steps
from model import golden
from model.golden import Operand, PlaneKind
from model.intvit import RESIDUAL_BITS, IntegerProgram
from model.layers import EngineLinear

#: Far past any accumulator: a padding level that is never reached.
NEVER = 1 << 40


class CoreCompiler:
    """Accumulates the core's tables and steps for a part of a model's integer program, from residual ``R``."""

    def __init__(self, config: AccelConfig, prog: IntegerProgram, residual: np.ndarray) -> None:
        arch = prog.model.architecture
        if prog.params["residual_bits"] != RESIDUAL_BITS:
            raise ValueError(f"the core keeps a {RESIDUAL_BITS}-bit residual stream; this program's is "
                             f"{prog.params['residual_bits']} bits")
        residual = np.asarray(residual)
        if residual.shape != (arch.tokens, arch.dim):
            raise ValueError(f"residual must be (tokens, dim) = {(arch.tokens, arch.dim)}, got {residual.shape}")
        self.config, self.prog = config, prog
        self.tokens, self.dim = arch.tokens, arch.dim
        self.residual = tuple(int(v) for v in residual.ravel())
        self.norms: list[tuple[int, int]] = []
        self.thresholds: list[dict] = []
        self.biases: list[int] = []
        self.y_rows: list[tuple[int, ...]] = []
        self.descriptors: list[int] = []
        self.channels = self.dim
        self.plan: list[dict | tuple[str, dict]] = []  # SET values (encoded once the registers are known) and GOs
        self.layers: dict[str, tuple[LayerImage, int]] = {}

    def _set(self, **values: int) -> None:
        self.plan.append(("set", values))

    def _go(self, stage: Stage) -> None:
        self.plan.append(go_step(stage))

    def _quantizer(self, name: str) -> int:
        """Lays out quantizer ``name``'s threshold rows; returns their base."""
        hi, lo = self.prog.arrays[f"{name}.hi"], self.prog.arrays[f"{name}.lo"]
        channels, levels = hi.shape
        if levels > LEVELS:
            raise ValueError(f"{name}: {levels} threshold levels; the core's rows hold {LEVELS}")
        pad = ((0, 0), (0, LEVELS - levels))
        hi, lo = np.pad(hi, pad, constant_values=NEVER), np.pad(lo, pad, constant_values=-NEVER)
        base = len(self.thresholds)
        self.thresholds += threshold_rows(hi, lo, self.config.acc_bits)
        self.channels = max(self.channels, channels)
        return base

    def _layer(self, name: str) -> tuple[LayerImage, int]:
        """Linear layer ``name``'s weights placed in the y buffer and descriptors in the store, once."""
        if name not in self.layers:
            c = self.config
            layer = self.prog.model.layers[name]
            if not isinstance(layer, EngineLinear):
                raise ValueError(f"{name}: the core runs binary linear layers; this one is {type(layer).__name__}")
            x_enc, _, coefs = self.prog.engine_layer(name)
            weights = [Operand.from_values(w.operand.to_values(), w.operand.encoding, c.word_bits) for w in layer.weights]
            rows, firsts = y_layout(c, weights)
            bases = [len(self.y_rows) + first for first in firsts]
            self.y_rows += rows
            n = weights[0].n
            shapes = [Operand.from_values(np.full((self.tokens, n), e.value_range[0]), e, c.word_bits) for e in x_enc]
            if sum(len(g.planes) for g in shapes) != 1:
                raise ValueError(f"{name}: the core packs single-plane inputs; this layer's is {x_enc}")
            image = compile_layer(c, shapes, weights, coefs, y_bases=bases)
            self.layers[name] = (image, len(self.descriptors))
            self.descriptors += [stored_descriptor(c, words) for words in image.descriptors]
            self.channels = max(self.channels, image.rows_y)
        return self.layers[name]

    def _pack_into(self, quantizer: str, layer: str) -> dict:
        """The registers that quantize into ``layer``'s x entries through ``quantizer``."""
        image, _ = self._layer(layer)
        (encoding,) = self.prog.engine_layer(layer)[0]
        n = self.prog.arrays[f"{quantizer}.hi"].shape[0]
        if golden.words_for(n, self.config.word_bits) != image.words:
            raise ValueError(f"{quantizer}: {n} channels, but {layer} takes {image.words} words a row")
        return {"thresh_base": self._quantizer(quantizer), "code_base": self.prog.params[f"{quantizer}.base"],
                "pack_n": n, "kind": KIND_CODES[PlaneKind(encoding.name)], "x_base": 0,
                "entries": self.tokens * golden.words_for(n, self.config.word_bits)}

    def norm(self, name: str, quantizer: str, layer: str) -> None:
        """LayerNorm ``name`` of R, quantized by ``quantizer`` into linear layer ``layer``'s x entries."""
        base = len(self.norms)
        gain, bias = self.prog.arrays[f"{name}.gain"], self.prog.arrays[f"{name}.bias"]
        self.norms += [(int(g), int(b)) for g, b in zip(gain, bias)]
        self._set(eps=self.prog.params[f"{name}.eps"], norm_base=base, **self._pack_into(quantizer, layer))
        self._go(Stage.NORM)

    def run(self, layer: str) -> None:
        """The engine's run of linear layer ``layer`` on the x entries."""
        image, prog_base = self._layer(layer)
        self._set(rows=image.rows_x, blocks=image.blocks, words=image.words, passes=image.passes,
                  offset=image.offset, prog_base=prog_base)
        self._go(Stage.RUN)

    def read_codes(self, quantizer: str, layer: str) -> None:
        """The last run's results, quantized by ``quantizer`` into linear layer ``layer``'s x entries."""
        values = self._pack_into(quantizer, layer)
        self._set(channels=values["pack_n"], **values)
        self._go(Stage.READ_CODES)

    def read_add(self, name: str, channels: int) -> None:
        """The last run's ``channels`` results requantized by ``name`` (its multiplier, shift and bias) into R."""
        p = self.prog.params
        base = len(self.biases)
        self.biases += [int(b) for b in self.prog.arrays[f"{name}.bias"]]
        self._set(channels=channels, multiplier=p[f"{name}.multiplier"], shift=p[f"{name}.shift"], bias_base=base)
        self._go(Stage.READ_ADD)

    def image(self) -> CoreImage:
        """The core's memories and program for the stages so far, ending with END."""
        image = CoreImage(self.dim, self.tokens, self.channels, self.residual, tuple(self.norms),
                          tuple(self.thresholds), tuple(self.biases), tuple(self.y_rows), tuple(self.descriptors), ())
        registers = core_registers(self.config, image)
        steps = []
        for item in self.plan:
            steps += set_steps(registers, **item[1]) if isinstance(item, tuple) else [item]
        return replace(image, steps=tuple(steps + [END_STEP]))


def mlp_image(config: AccelConfig, prog: IntegerProgram, block: int, residual: np.ndarray) -> CoreImage:
    """The MLP half of block ``block`` from residual ``R`` (tokens, dim): norm2, fc1, the GELU fold, fc2 and the
    residual add; the core leaves ``R`` as :func:`model.intvit.forward`'s ``blocks.<block>.mlp.residual``."""
    pre = f"blocks.{block}"
    core = CoreCompiler(config, prog, residual)
    core.norm(f"{pre}.norm2", f"{pre}.mlp.fc1.in", f"{pre}.mlp.fc1")
    core.run(f"{pre}.mlp.fc1")
    core.read_codes(f"{pre}.mlp.fc2.in", f"{pre}.mlp.fc2")
    core.run(f"{pre}.mlp.fc2")
    core.read_add(f"{pre}.mlp.fc2.out", prog.model.architecture.dim)
    return core.image()
