"""A model's integer program as a :class:`hw.core.CoreImage`: the core's tables, weights and step program.

:class:`CoreCompiler` lays out what the core needs to run the transformer
blocks of :func:`model.intvit.forward` with no host: every block's linear
weights, resident one after another in the y buffer, with the regions for
K and the Value groups after them; every product's pass descriptors in
one store; each LayerNorm's gains and biases, each quantizer's threshold
rows, each residual add's biases and each block's attention levels as
tables; and the SET and GO steps that give every stage its constants.
Its methods are the stages of a block (:meth:`CoreCompiler.attention`,
:meth:`CoreCompiler.mlp`); :func:`blocks_image` writes a whole program.

The buffers' regions, in entries: the x buffer holds a linear layer's
input at 0, or during attention Q by head at 0 and ``A``'s groups after
it; the result buffer a linear layer's results at 0, or ``Q K^T``'s at 0
and every head's ``A V`` after it, head after head, which the proj input
reads back as rows of all heads.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hw.config import AccelConfig
from hw.core import BIAS_BITS, LEVELS, VALUE_WORD_BITS, CoreImage, Stage, core_registers
from hw.descriptor import stored_descriptor
from hw.multithreshold import threshold_rows
from hw.packer import KIND_CODES
from hw.program import DoesNotFit, LayerImage, compile_layer, y_layout
from hw.softmax import level_words
from hw.steps import END_STEP, go_step, set_steps
from model import golden
from model.golden import Encoding, Operand, PlaneKind
from model.intvit import (INT8, NORM_BITS, RESIDUAL_BITS, IntegerProgram, level_counts, norm_output_bound,
                          requantized_bound)
from model.layers import EngineLinear, EngineMatmul

#: Far past any accumulator: a padding level that is never reached.
NEVER = 1 << 40


def _kind(encoding: Encoding) -> int:
    """The Packer's kind number of a single-plane encoding."""
    if encoding.name not in ("bipolar", "unipolar", "ternary"):
        raise ValueError(f"the core packs single-plane codes (bipolar, unipolar, ternary); got {encoding.name}")
    return KIND_CODES[PlaneKind(encoding.name)]


def _shapes(encodings: list[Encoding], rows: int, n: int, word_bits: int) -> list[Operand]:
    """Operands of ``rows x n`` of each encoding (their values do not matter: a layer's layout only)."""
    return [Operand.from_values(np.full((rows, n), e.value_range[0]), e, word_bits) for e in encodings]


class CoreCompiler:
    """The core's tables and steps for a model's integer program, from residual ``R`` (tokens, dim)."""

    def __init__(self, config: AccelConfig, prog: IntegerProgram, residual: np.ndarray | None = None) -> None:
        arch = prog.model.architecture
        if prog.params["residual_bits"] != RESIDUAL_BITS:
            raise ValueError(f"the core keeps a {RESIDUAL_BITS}-bit residual stream; this program's is "
                             f"{prog.params['residual_bits']} bits")
        if arch.in_channels != 1:
            raise ValueError(f"the core's patch embedding adds one channel's product; this model has "
                             f"{arch.in_channels} input channels")
        residual = np.zeros((0,), np.int64) if residual is None else np.asarray(residual)
        if residual.size and residual.shape != (arch.tokens, arch.dim):
            raise ValueError(f"residual must be (tokens, dim) = {(arch.tokens, arch.dim)}, got {residual.shape}")
        if arch.head_dim % config.lanes:
            raise ValueError(f"the core gathers the heads' A V results by whole blocks: head_dim {arch.head_dim} "
                             f"must be a multiple of the configuration's {config.lanes} lanes")
        self.config, self.prog, self.arch = config, prog, arch
        wb, lanes, t = config.word_bits, config.lanes, arch.tokens
        self.residual = tuple(int(v) for v in residual.ravel())
        self.norms: list[tuple[int, int]] = []
        self.thresholds: list[dict] = []
        self.biases: list[int] = []
        self.levels: list[int] = []
        self.y_rows: list[tuple[int, ...]] = []
        self.descriptors: list[int] = []
        self.channels = max(arch.dim, t, arch.num_classes)
        self.norm_bases: dict[str, int] = {}
        self.values = max(arch.num_patches * arch.patch_size**2, arch.dim)
        self.plan: list[dict | tuple[str, dict]] = []  # SET values (encoded once the registers are known) and GOs
        self.layers: dict[str, tuple[LayerImage, int]] = {}
        self.quantizers: dict[str, int] = {}
        self.x_encodings: dict[str, Encoding] = {}  # the multi-bit inputs' encodings, as the core packs them
        # the words and blocks of the attention operands
        self.wq, self.wt = golden.words_for(arch.head_dim, wb), golden.words_for(t, wb)
        self.bt, self.bh = -(-t // lanes), arch.head_dim // lanes
        self.counts: tuple[int, ...] = ()
        self.score_bits = 2
        #: the buffers' sizes the model needs (:func:`core_config`), kept up to date as layers are placed
        self.need = {"x_depth": 0, "result_depth": 0, "prog_depth": 1}
        # every layer's weights first, then the K and Value regions of the y buffer
        self._int8("patch_embed.c0", arch.num_patches)
        for i in range(arch.depth):
            for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
                self._linear(f"blocks.{i}.{name}")
        self.k_base = len(self.y_rows)
        self.v_bases: list[int] = []
        for i in range(arch.depth):
            self._products(f"blocks.{i}")
        self.a_base = arch.heads * t * self.wq  # A's groups after Q in the x buffer
        self.av_base = t * self.bt              # the heads' A V after Q K^T in the result buffer
        self._need(x_depth=self.a_base + len(self.counts) * t * self.wt,
                   result_depth=self.av_base + arch.heads * t * self.bh)
        self._check_fits("x", self.need["x_depth"], config.x_depth, "x entries")
        self._check_fits("result", self.need["result_depth"], config.result_depth, "result entries")

    def _need(self, **used: int) -> None:
        for key, value in used.items():
            self.need[key] = max(self.need[key], value)

    @staticmethod
    def _check_fits(what: str, used: int, depth: int, unit: str) -> None:
        if used > depth:
            raise DoesNotFit(f"the {what} buffer: the model needs {used} {unit}, the configuration has {depth}")

    def _set(self, **values: int) -> None:
        self.plan.append(("set", values))

    def _go(self, stage: Stage) -> None:
        self.plan.append(go_step(stage))

    def _add_layer(self, name: str, groups_x: list[Operand], groups_y: list[Operand], coefs: np.ndarray,
                   y_bases: list[int]) -> None:
        """Product ``name`` compiled (its y planes at ``y_bases``), its descriptors into the store; a product that
        does not fit the configuration raises :class:`DoesNotFit` naming it."""
        try:
            image = compile_layer(self.config, groups_x, groups_y, coefs, y_bases=y_bases)
        except DoesNotFit as exc:
            raise DoesNotFit(f"{name}: {exc}") from None
        self.layers[name] = (image, len(self.descriptors))
        self.descriptors += [stored_descriptor(self.config, words) for words in image.descriptors]
        self.channels = max(self.channels, image.rows_y)
        self._need(x_depth=len(image.x_entries), result_depth=image.rows_x * image.blocks, prog_depth=image.passes)

    def _place(self, name: str, x_enc: list[Encoding], weights: list[Operand], coefs: np.ndarray, rows: int) -> None:
        """Layer ``name``'s weights into the y buffer, after the layers before; its descriptors into the store."""
        c = self.config
        y_rows, firsts = y_layout(c, weights)
        bases = [len(self.y_rows) + first for first in firsts]
        self.y_rows += y_rows
        self._add_layer(name, _shapes(x_enc, rows, weights[0].n, c.word_bits), weights, coefs, bases)

    def _int8(self, name: str, rows: int, x_bits: int | None = None) -> None:
        """The 8-bit patch embedding or a head: multi-bit inputs (``uint`` pixels, an ``int`` LayerNorm output,
        ``x_bits`` wide when given) on ``rows`` rows, as their bit-planes."""
        x_enc, (codes,), coefs = self.prog.engine_layer(name)
        if len(x_enc) != 1 or x_enc[0].name not in ("int", "uint") or x_enc[0].bits > VALUE_WORD_BITS:
            raise ValueError(f"{name}: the core packs an int or uint input of up to {VALUE_WORD_BITS} bits; got {x_enc}")
        if x_bits is not None:
            x_enc = [Encoding(x_enc[0].name, x_bits)]
        self.x_encodings[name] = x_enc[0]
        self._place(name, x_enc, [Operand.from_values(codes, INT8, self.config.word_bits)], coefs, rows)

    def _linear(self, name: str) -> None:
        """Binary linear layer ``name``: its weights in the y buffer, its descriptors in the store."""
        c = self.config
        layer = self.prog.model.layers[name]
        if not isinstance(layer, EngineLinear):
            raise ValueError(f"{name}: the core runs binary linear layers; this one is {type(layer).__name__}")
        x_enc, _, coefs = self.prog.engine_layer(name)
        if len(x_enc) != 1:
            raise ValueError(f"{name}: the core packs single-plane inputs; this layer's is {x_enc}")
        _kind(x_enc[0])
        weights = [Operand.from_values(w.operand.to_values(), w.operand.encoding, c.word_bits) for w in layer.weights]
        self._place(name, x_enc, weights, coefs, self.arch.tokens)

    def _products(self, pre: str) -> None:
        """Block ``pre``'s ``Q K^T`` and ``A V``: descriptors for one head, run at each head's offsets."""
        c, arch, t, hd = self.config, self.arch, self.arch.tokens, self.arch.head_dim
        qk, av = self.prog.model.layers[f"{pre}.attn.qk"], self.prog.model.layers[f"{pre}.attn.av"]
        assert isinstance(qk, EngineMatmul) and isinstance(av, EngineMatmul)
        x_enc, y_enc, coefs = self.prog.engine_layer(f"{pre}.attn.qk")
        if len(x_enc) != 1 or len(y_enc) != 1:
            raise ValueError(f"{pre}.attn.qk: the core packs single-plane Q and K; got {x_enc} and {y_enc}")
        for e in x_enc + y_enc:
            _kind(e)
        self._add_layer(f"{pre}.attn.qk", _shapes(x_enc, t, hd, c.word_bits), _shapes(y_enc, t, hd, c.word_bits),
                        coefs, [0])
        counts = tuple(level_counts(av))
        if any(n != 1 for n in counts) or (self.counts and counts != self.counts):
            raise ValueError(f"{pre}.attn.av: the core packs one unipolar plane per attention level group, the same "
                             f"groups in every block; got level counts {counts}")
        self.counts = counts
        x_enc, y_enc, coefs = self.prog.engine_layer(f"{pre}.attn.av")
        v_rows = arch.dim // c.lanes * self.wt  # a Value group's y rows, every head's
        if not self.v_bases:
            self.v_bases = [self.k_base + arch.heads * self.bt * self.wq + g * v_rows for g in range(len(y_enc))]
            self.y_rows += [tuple([0] * c.lanes)] * (self.v_bases[-1] + v_rows - self.k_base)
        if len(y_enc) != len(self.v_bases):
            raise ValueError(f"{pre}.attn.av: {len(y_enc)} Value groups; an earlier block has {len(self.v_bases)}")
        for e in y_enc:
            _kind(e)
        self._add_layer(f"{pre}.attn.av", _shapes(x_enc, t, t, c.word_bits), _shapes(y_enc, hd, t, c.word_bits),
                        coefs, self.v_bases)
        # the scores' width: the requantized Q K^T accumulator's bound
        bound = requantized_bound(self.prog, f"{pre}.attn.scores", 1 << qk.accumulator_bits(hd))
        self.score_bits = max(self.score_bits, bound.bit_length() + 1)

    def _quantizer(self, name: str) -> dict:
        """The registers of quantizer ``name``: its threshold rows (laid out once) and code base."""
        if name not in self.quantizers:
            hi, lo = self.prog.arrays[f"{name}.hi"], self.prog.arrays[f"{name}.lo"]
            levels = hi.shape[1]
            if levels > LEVELS:
                raise ValueError(f"{name}: {levels} threshold levels; the core's rows hold {LEVELS}")
            pad = ((0, 0), (0, LEVELS - levels))
            hi, lo = np.pad(hi, pad, constant_values=NEVER), np.pad(lo, pad, constant_values=-NEVER)
            self.quantizers[name] = len(self.thresholds)
            self.thresholds += threshold_rows(hi, lo, self.config.acc_bits)
        return {"thresh_base": self.quantizers[name], "code_base": self.prog.params[f"{name}.base"]}

    def _rows_into(self, quantizer: str, layer: str) -> dict:
        """The registers that quantize rows of all channels into linear layer ``layer``'s x entries at 0."""
        image, _ = self.layers[layer]
        (encoding,) = self.prog.engine_layer(layer)[0]
        n = self.prog.arrays[f"{quantizer}.hi"].shape[0]
        if golden.words_for(n, self.config.word_bits) != image.words:
            raise ValueError(f"{quantizer}: {n} channels, but {layer} takes {image.words} words a row")
        return {**self._quantizer(quantizer), "pack_n": n, "kind": _kind(encoding), "write_base": 0,
                "write_words": image.words, "write_heads": 1, "write_row_stride": image.words,
                "entries": self.arch.tokens * image.words}

    def _read(self, rows: int, blocks: int, channels: int, first: int = 0, stride: int | None = None, heads: int = 1,
              head_stride: int = 0) -> dict:
        return {"read_rows": rows, "read_blocks": blocks, "read_first": first,
                "read_stride": blocks if stride is None else stride, "read_heads": heads,
                "read_head_stride": head_stride, "channels": channels}

    def _run(self, layer: str, x_offset: int = 0, y_offset: int = 0, result_offset: int = 0) -> None:
        image, prog_base = self.layers[layer]
        self._set(rows=image.rows_x, blocks=image.blocks, words=image.words, passes=image.passes,
                  offset=image.offset, prog_base=prog_base, x_offset=x_offset, y_offset=y_offset,
                  result_offset=result_offset)
        self._go(Stage.RUN)

    def _norm_registers(self, name: str, first: int, tokens: int) -> dict:
        """The registers of LayerNorm ``name`` (its table laid out once) on ``tokens`` tokens of R from ``first``."""
        if name not in self.norm_bases:
            a = self.prog.arrays
            self.norm_bases[name] = len(self.norms)
            self.norms += [(int(g), int(b)) for g, b in zip(a[f"{name}.gain"], a[f"{name}.bias"])]
        return {"eps": self.prog.params[f"{name}.eps"], "norm_base": self.norm_bases[name],
                "norm_from": first * self.arch.dim, "norm_tokens": tokens}

    def _norm(self, name: str, quantizer: str, layer: str) -> None:
        """LayerNorm ``name`` of R, quantized by ``quantizer`` into linear layer ``layer``'s x entries."""
        self._set(**self._norm_registers(name, 0, self.arch.tokens), **self._rows_into(quantizer, layer))
        self._go(Stage.NORM)

    def _bias_base(self, name: str) -> int:
        bias = self.prog.arrays[name]
        if np.abs(bias).max(initial=0) >= 1 << (BIAS_BITS - 1):
            raise ValueError(f"{name}: a bias beyond the core's {BIAS_BITS} bits")
        self.biases += [int(b) for b in bias]
        return len(self.biases) - len(bias)

    def _read_add(self, name: str, layer: str, bias: str | None = None, first: int = 0,
                  stage: Stage = Stage.READ_ADD, **registers: int) -> None:
        """Layer ``layer``'s results requantized by ``name`` (its multiplier and shift) plus the ``bias`` array
        (default ``<name>.bias``) into R from token ``first`` (READ_ADD), or into the logits (LOGITS)."""
        p, image = self.prog.params, self.layers[layer][0]
        self._set(multiplier=p[f"{name}.multiplier"], shift=p[f"{name}.shift"],
                  bias_base=self._bias_base(bias or f"{name}.bias"), residual_base=first * self.arch.dim,
                  **self._read(image.rows_x, image.blocks, image.rows_y), **registers)
        self._go(stage)

    def _bits(self, layer: str, count: int) -> None:
        """BITS: the values memory's first ``count`` values as linear layer ``layer``'s multi-bit input planes."""
        image = self.layers[layer][0]
        _, (codes,), _ = self.prog.engine_layer(layer)
        n, encoding = codes.shape[1], self.x_encodings[layer]
        self._set(planes=encoding.bits, bits_count=count, pack_n=n, kind=KIND_CODES[PlaneKind.UNIPOLAR],
                  write_base=0, write_words=image.words, write_heads=1, write_row_stride=image.words,
                  entries=encoding.bits * image.rows_x * image.words)
        self._go(Stage.BITS)

    def embed(self) -> None:
        """The patch embedding: R takes the tokens; the pixels' planes, the 8-bit product, requantized and added
        with the embedding's bias into the patch tokens."""
        arch = self.arch
        self._go(Stage.TOKENS)
        self._bits("patch_embed.c0", arch.num_patches * arch.patch_size**2)
        self._run("patch_embed.c0")
        self._read_add("patch_embed.c0", "patch_embed.c0", "patch_embed.bias", arch.tokens - arch.num_patches)

    def heads(self) -> None:
        """The classifier heads, each on its token's LayerNorm (``norm``) as an int16 input, their requantized
        products summed with their biases into the logits; then the argmax."""
        d = self.arch.dim
        # the int16 head input as the planes its values need (the same integers, fewer passes)
        bound = norm_output_bound(self.prog, "norm")
        for token, name in enumerate(self.prog.head_names):
            if name not in self.layers:
                self._int8(name, 1, min(NORM_BITS, bound.bit_length() + 1))
            self._set(**self._norm_registers("norm", token, 1), entries=d)
            self._go(Stage.NORM_VALUES)
            self._bits(name, d)
            self._run(name)
            self._read_add(name, name, stage=Stage.LOGITS, accumulate=int(token > 0))
        self._go(Stage.ARGMAX)

    def attention(self, block: int) -> None:
        """Block ``block``'s attention: norm1, qkv, K by head and the Value groups into the y buffer, Q by head,
        then per head ``Q K^T``, the softmax levels and ``A V``, then proj on every head's result and the add."""
        arch, t, d, heads = self.arch, self.arch.tokens, self.arch.dim, self.arch.heads
        lanes, pre = self.config.lanes, f"blocks.{block}"
        p = self.prog.params
        self._norm(f"{pre}.norm1", f"{pre}.attn.qkv.in", f"{pre}.attn.qkv")
        self._run(f"{pre}.attn.qkv")
        qkv_blocks, window = self.layers[f"{pre}.attn.qkv"][0].blocks, d // lanes
        qk_x, qk_y, _ = self.prog.engine_layer(f"{pre}.attn.qk")
        k_stride = self.bt * self.wq  # a head's K rows
        self._set(**self._quantizer(f"{pre}.attn.k"), pack_n=arch.head_dim, kind=_kind(qk_y[0]), write_base=self.k_base,
                  write_words=self.wq, write_heads=heads, write_head_stride=k_stride, entries=t * heads * self.wq,
                  **self._read(t, window, d, first=window, stride=qkv_blocks))
        self._go(Stage.READ_K)
        _, v_enc, _ = self.prog.engine_layer(f"{pre}.attn.av")
        for g, encoding in enumerate(v_enc):
            self._set(**self._quantizer(f"{pre}.attn.v{g}"), kind=_kind(encoding), write_base=self.v_bases[g],
                      write_words=self.wt, write_heads=1, entries=d * self.wt,
                      **self._read(t, window, d, first=2 * window, stride=qkv_blocks))
            self._go(Stage.READ_V)
        self._set(**self._quantizer(f"{pre}.attn.q"), pack_n=arch.head_dim, kind=_kind(qk_x[0]), write_base=0,
                  write_words=self.wq, write_heads=heads, write_head_stride=t * self.wq, write_row_stride=self.wq,
                  entries=t * heads * self.wq, **self._read(t, window, d, stride=qkv_blocks))
        self._go(Stage.READ_CODES)
        words, per_row = level_words(self.prog.arrays[f"{pre}.attn.levels"])
        level_base = len(self.levels)
        self.levels += words
        for h in range(heads):
            self._run(f"{pre}.attn.qk", x_offset=h * t * self.wq, y_offset=self.k_base + h * k_stride)
            self._set(multiplier=p[f"{pre}.attn.scores.multiplier"], shift=p[f"{pre}.attn.scores.shift"],
                      level_base=level_base + h * t * per_row, write_base=self.a_base, write_head_stride=t * self.wt,
                      entries=len(self.counts) * t * self.wt, **self._read(t, self.bt, t))
            self._go(Stage.SCORES)
            self._run(f"{pre}.attn.av", x_offset=self.a_base, y_offset=h * self.bh * self.wt,
                      result_offset=self.av_base + h * t * self.bh)
        self._set(**self._rows_into(f"{pre}.attn.proj.in", f"{pre}.attn.proj"),
                  **self._read(t, self.bh, d, first=self.av_base, stride=self.bh, heads=heads, head_stride=t * self.bh))
        self._go(Stage.READ_CODES)
        self._run(f"{pre}.attn.proj")
        self._read_add(f"{pre}.attn.proj.out", f"{pre}.attn.proj")

    def mlp(self, block: int) -> None:
        """Block ``block``'s MLP: norm2, fc1, the GELU fold into fc2's input, fc2 and the residual add."""
        pre = f"blocks.{block}"
        self._norm(f"{pre}.norm2", f"{pre}.mlp.fc1.in", f"{pre}.mlp.fc1")
        self._run(f"{pre}.mlp.fc1")
        fc1 = self.layers[f"{pre}.mlp.fc1"][0]
        self._set(**self._rows_into(f"{pre}.mlp.fc2.in", f"{pre}.mlp.fc2"),
                  **self._read(fc1.rows_x, fc1.blocks, fc1.rows_y))
        self._go(Stage.READ_CODES)
        self._run(f"{pre}.mlp.fc2")
        self._read_add(f"{pre}.mlp.fc2.out", f"{pre}.mlp.fc2")

    def image(self) -> CoreImage:
        """The core's memories and program for the stages so far, ending with END."""
        a = self.arch
        image = CoreImage(a.dim, a.heads, a.tokens, a.num_classes, self.channels, self.counts, self.score_bits,
                          self.values, self.residual, tuple(int(v) for v in self.prog.arrays["tokens"].ravel()),
                          tuple(self.norms), tuple(self.thresholds), tuple(self.biases), tuple(self.levels),
                          tuple(int(e) for e in self.prog.arrays["exp_table"]), tuple(self.y_rows),
                          tuple(self.descriptors), ())
        self._check_fits("y", len(self.y_rows), self.config.y_depth, "y bank rows")
        registers = core_registers(self.config, image)
        steps = []
        for item in self.plan:
            steps += set_steps(registers, **item[1]) if isinstance(item, tuple) else [item]
        return replace(image, steps=tuple(steps + [END_STEP]))


def blocks_image(config: AccelConfig, prog: IntegerProgram, residual: np.ndarray,
                 stages: list[tuple[int, str]] | None = None) -> CoreImage:
    """The core's image that runs ``stages`` (``(block, "attention" or "mlp")``, default every block's both) from
    residual ``R`` (tokens, dim); the core leaves ``R`` as :func:`model.intvit.forward` has it after the last."""
    core = CoreCompiler(config, prog, residual)
    depth = prog.model.architecture.depth
    for block, half in stages if stages is not None else [(i, h) for i in range(depth) for h in ("attention", "mlp")]:
        if half not in ("attention", "mlp") or not 0 <= block < depth:
            raise ValueError(f"a stage is (block 0..{depth - 1}, 'attention' or 'mlp'); got {(block, half)!r}")
        getattr(core, half)(block)
    return core.image()


def _whole_model(config: AccelConfig, prog: IntegerProgram) -> CoreCompiler:
    core = CoreCompiler(config, prog)
    core.embed()
    for block in range(prog.model.architecture.depth):
        core.attention(block)
        core.mlp(block)
    core.heads()
    return core


def model_image(config: AccelConfig, prog: IntegerProgram) -> CoreImage:
    """The whole model: the patch embedding, every block, the heads and the argmax; the core takes an image's
    pixels and leaves its class and logits as :func:`model.intvit.forward` computes them."""
    return _whole_model(config, prog).image()


def core_config(base: AccelConfig, prog: IntegerProgram) -> AccelConfig:
    """``base`` with buffers sized (powers of two) for the whole model of ``prog`` on the core: every layer's
    weights resident in the y buffer, the largest x operand and result, the most passes; its longest row, and so
    its accumulator, as ``base``'s. Raises :class:`hw.program.DoesNotFit` if ``base``'s accumulator is too narrow."""
    rows = base.max_words
    probe = replace(base, x_depth=1 << 16, y_depth=1 << 16, result_depth=1 << 16, prog_depth=1 << 16, row_words=rows)
    core = _whole_model(probe, prog)
    sizes = {**core.need, "y_depth": len(core.y_rows)}
    sizes = {key: 1 << max(1, (value - 1).bit_length()) for key, value in sizes.items()}
    return replace(base, **sizes, row_words=min(rows, sizes["x_depth"], sizes["y_depth"]))
