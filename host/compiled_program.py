"""A model's integer program compiled for the CPU: the emulator as an inference engine.

:class:`host.integer_runtime.IntegerRuntime` runs :func:`model.intvit.forward`
step by step on a Backend: every product is packed into the contract's
planes, checked and sent, the way a device needs it.  On a CPU that costs
more than the arithmetic.  :class:`CompiledProgram` runs the same program,
with the same integers, the way the whole-model gateware would: weights
packed once, every activation's codes made by a threshold kernel and packed
in the same pass into the layout of the product that reads them (tokens by
channels for a linear layer, per head for ``Q K^T``, transposed per head for
``A V``), products, softmax levels and residual adds in the numba kernels of
:mod:`host.fused`, a whole batch of images per kernel call.  No float
anywhere: every step is an integer kernel, :attr:`CompiledProgram.float_steps`
stays 0.

Products whose operands are all single-plane encodings (every binary layer
of a GSB model) are XNOR/AND popcounts of packed words; products with a
multi-bit encoding (the 8-bit patch embedding and heads, PTQ programs) are
integer dot products of their codes.  A monotone threshold set on a
planes operand becomes two compares an element (no codes), on a LayerNorm
output compares of ``u g`` with ``(A - bias) sigma`` (no normalized values,
no division); everything else takes the general kernels.  The blocks of the
first batch of a size are recorded as a list of kernel calls on reused work
arrays and replayed for the next batches of that size, with no Python
between the kernels.  ``tests/host/test_compiled_program.py``
checks the logits against :func:`model.intvit.forward` on the reference
engine, step names and counts included, and a batch against one image at a
time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from host import fused, intkernels
from host.integer_runtime import INT8
from hw.config import DEFAULT
from hw.cycles import product_cycles
from model import intops, intvit
from model.golden import Encoding, pack_bits
from model.layers import EngineLinear

_KINDS = {"bipolar": fused.BIPOLAR, "unipolar": fused.UNIPOLAR, "ternary": fused.TERNARY}

#: the batch sizes whose blocks stay recorded (:class:`_Tape`), the oldest dropped first
_TAPES = 4
#: a threshold kernel bound to its constants: ``run(y, operand)``, or ``run(r, operand, added)`` after a residual add
_Run = Callable[..., object]


def _mode(x: Encoding, y: Encoding) -> int:
    """The :mod:`host.fused` product mode of a pair of single-plane encodings."""
    if x.name == y.name == "bipolar":
        return fused.BIPOLAR_PAIR
    if x.name == y.name == "unipolar":
        return fused.UNIPOLAR_PAIR
    return fused.SIGNED_PAIR


@dataclass(frozen=True)
class _Product:
    """An engine product of the program: the encodings of its two sides, its coefficients and length ``n``.

    ``planes`` when every encoding on both sides is a single plane: the
    product is then popcounts of packed words (with ``modes`` per group
    pair), else integer dot products of the codes (:mod:`host.fused`).
    Its outputs are ``dtype``: int32 when every one fits (half the bytes
    for the next step to read), else int64.  Its plane words are ``word``:
    uint32 when ``n <= 32`` (the attention products of small models: twice
    the words a vector, :func:`host.fused.matmul_planes`), else uint64.
    """

    x: tuple[Encoding, ...]
    y: tuple[Encoding, ...]
    coefs: np.ndarray
    n: int
    planes: bool
    modes: np.ndarray
    bound: int  #: the largest |Y| it can give
    dtype: type[np.signedinteger]
    word: type[np.unsignedinteger]

    @classmethod
    def of(cls, x: list[Encoding], y: list[Encoding], coefs: np.ndarray, n: int) -> _Product:
        planes = all(e.name in _KINDS for e in (*x, *y))
        modes = np.array([[_mode(a, b) if planes else 0 for b in y] for a in x], np.int64)
        bound = sum(abs(int(coefs[g, h])) * n * ex.max_abs * ey.max_abs for g, ex in enumerate(x) for h, ey in enumerate(y))
        return cls(tuple(x), tuple(y), np.ascontiguousarray(coefs, np.int64), n, planes, modes, bound,
                   np.int32 if bound < 2**31 else np.int64, np.uint32 if n <= 32 else np.uint64)

    def operand(self, side: str, lead: tuple[int, ...], trail: tuple[int, ...] = ()) -> tuple[tuple[int, ...], type]:
        """``(shape, dtype)`` of an operand for ``side`` ("x" or "y").

        ``(*lead, groups, 2, words, *trail)`` planes of :attr:`word` or ``(*lead, groups, n, *trail)`` int64 codes.
        """
        groups = len(self.x if side == "x" else self.y)
        if self.planes:
            return (*lead, groups, 2, -(-self.n // 64), *trail), self.word
        return (*lead, groups, self.n, *trail), np.int64


@dataclass
class _Tape:
    """The blocks of one forward for a batch size, recorded: every kernel call with its arrays, in order.

    Every array a block touches is a work array of the program or the
    residual stream ``r`` (a buffer of the tape's own), so a later batch of
    the same size runs the same calls again on its new data, with no Python
    between them; ``steps`` and ``cycles`` are what they count.
    """

    r: np.ndarray
    calls: list[tuple[Callable, tuple]]
    steps: list[str]
    cycles: int


@dataclass(frozen=True)
class _Residual:
    """A residual add not yet run: add ``name``'s requantized ``y`` to the stream (step ``step``)."""

    name: str
    y: np.ndarray
    step: str


def _input_view(operand: np.ndarray) -> np.ndarray:
    """A linear layer's input ``(images, tokens, groups, ...)`` as a threshold kernel writes it: ``(tokens, groups, ..., 1, images)``."""
    order = (1, 3, *range(4, operand.ndim + 1), 2, 0)
    return operand[:, :, None].transpose(order)


def _pack_weights(codes: np.ndarray, product: _Product) -> np.ndarray:
    """Weight codes (out, groups, n) of ``product`` as planes of its words transposed, (groups, 2, words, out)."""
    planes = []
    for g, enc in enumerate(product.y):
        values = codes[:, g]
        sign = np.ones_like(values, bool) if enc.name == "unipolar" else values > 0
        mask = np.ones_like(values, bool) if enc.name == "bipolar" else values != 0
        planes.append(np.stack([pack_bits(sign, 64), pack_bits(mask, 64)]))
    return np.ascontiguousarray(np.stack(planes).transpose(0, 1, 3, 2), product.word)


class CompiledProgram:
    """Runs an :class:`~model.intvit.IntegerProgram` on the CPU: :func:`model.intvit.forward`'s integers, batched.

    ``steps`` counts the program's steps run (as :class:`model.intvit.Trace`
    counts them; ``step_names`` lists the last forward's), ``float_steps``
    those with a float result (none: every step is an integer kernel), and
    :meth:`cycles` the accelerator's ideal cycles for the products run, on
    ``lanes`` lanes (what an EmulatorBackend counts, :func:`hw.cycles.ideal_cycles`).
    """

    def __init__(self, prog: intvit.IntegerProgram, lanes: int = DEFAULT.lanes):
        self.prog = prog
        self.lanes = lanes
        self._cycles = 0
        self.steps = 0
        self.float_steps = 0
        self.step_names: list[str] = []
        arch = self.arch = prog.model.architecture
        self._products: dict[str, _Product] = {}
        self._weights: dict[str, np.ndarray] = {}
        for name in intvit.linear_names(arch, prog.head_names):
            x_enc, weights, coefs = prog.engine_layer(name)
            layer = prog.model.layers.get(name)
            y_enc = [w.operand.encoding for w in layer.weights] if isinstance(layer, EngineLinear) else [INT8]
            codes = np.stack([np.asarray(w, np.int64) for w in weights], axis=1)  # (out, groups, in)
            product = self._products[name] = _Product.of(x_enc, y_enc, coefs, codes.shape[2])
            self._weights[name] = (_pack_weights(codes, product) if product.planes
                                   else np.ascontiguousarray(codes.transpose(1, 2, 0)))
        for i in range(arch.depth):
            for part, n in (("qk", arch.head_dim), ("av", arch.tokens)):
                self._products[f"blocks.{i}.attn.{part}"] = _Product.of(*prog.engine_layer(f"blocks.{i}.attn.{part}"), n)
        p, a = prog.params, prog.arrays
        embed = [f"patch_embed.c{ch}" for ch in range(arch.in_channels)]
        #: the patch embedding's constants as :func:`host.fused.embed_tokens` takes them
        self._embed = (np.stack([self._weights[n] for n in embed]), np.stack([self._products[n].coefs[0] for n in embed]),
                       np.array([p[f"{n}.multiplier"] for n in embed], np.int64),
                       np.array([p[f"{n}.shift"] for n in embed], np.int64), a["patch_embed.bias"],
                       np.ascontiguousarray(a["tokens"].reshape(arch.tokens, arch.dim), np.int64),
                       *intops.signed_range(p["residual_bits"]))
        heads = prog.head_names
        #: the heads' constants as :func:`host.fused.head_logits` takes them
        self._heads = (np.arange(len(heads), dtype=np.int64), a["norm.gain"], a["norm.bias"], p["norm.eps"],
                       np.stack([self._weights[n] for n in heads]), np.stack([self._products[n].coefs[0] for n in heads]),
                       np.array([p[f"{n}.multiplier"] for n in heads], np.int64),
                       np.array([p[f"{n}.shift"] for n in heads], np.int64), np.stack([a[f"{n}.bias"] for n in heads]))
        #: the largest |out| of each LayerNorm: |u| <= sigma, so |gain| + |bias| + 1
        norms = [key[:-len(".eps")] for key in prog.params if key.endswith(".eps")]
        self._norm_bounds = {n: int(np.abs(a[f"{n}.gain"]).max(initial=0) + np.abs(a[f"{n}.bias"]).max(initial=0)) + 1
                             for n in norms}
        self._plans: dict[tuple, list[_Run]] = {}
        self._cycle_counts: dict[tuple, int] = {}
        self._buffers: dict[tuple, np.ndarray] = {}
        self._tapes: dict[int, _Tape] = {}
        self._recording: list | None = None

    # ------------------------------------------------------------------ steps

    def _call(self, kernel: Callable, *args) -> None:
        """Run ``kernel(*args)``, and write it on the tape being recorded (:meth:`_blocks`)."""
        if self._recording is not None:
            self._recording.append((kernel, args))
        kernel(*args)

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A work array for ``name`` (a step's name; every block shares one), reused while its shape holds.

        Each is read before the same step of the next block writes it
        again, so reuse is safe; it keeps the batch's arrays in the caches
        and spares the allocator fresh pages for every call.
        """
        key = (name.split(".", 2)[2] if name.startswith("blocks.") else name, dtype)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.shape != shape:
            buffer = self._buffers[key] = np.empty(shape, dtype)
        return buffer

    def cycles(self) -> int:
        """The accelerator's ideal cycles of every product run so far."""
        return self._cycles

    def _step(self, name: str) -> None:
        self.steps += 1
        self.step_names.append(name)

    def _count(self, product: _Product, rows_x: int, rows_y: int, items: int = 1) -> None:
        """Add the ideal cycles of ``items`` products of ``rows_x`` by ``rows_y`` (worked out once a shape)."""
        key = (id(product), rows_x, rows_y)
        if key not in self._cycle_counts:
            self._cycle_counts[key] = product_cycles(product.x, product.y, rows_x, rows_y, product.n,
                                                     self.prog.model.word_bits, self.lanes)
        self._cycles += items * self._cycle_counts[key]

    def _threshold(self, names: list[str], product: _Product, side: str, y: np.ndarray, y_bound: int,
                   out: np.ndarray, transposed: bool = False, col0: int = 0, norm: str | None = None,
                   residual: _Residual | None = None) -> None:
        """Codes of threshold sets ``names`` (one a group) into operand ``out`` of ``product``'s ``side``.

        ``y`` holds rows (B*T, C), the sets' channels from ``col0``, or is an
        ``A V`` output (T, head_dim, H, B); ``|y| <= y_bound``.  With
        ``norm``, ``y`` is the residual stream and the input is its
        LayerNorm ``norm`` (a step of its own), after ``residual`` is added
        to it.  The kernels and their constants are chosen once per call
        site (:meth:`_threshold_plan`).
        """
        key = (tuple(names), transposed, y.ndim, norm)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._threshold_plan(names, product, side, y_bound, transposed, col0, y.ndim, norm,
                                                           None if residual is None else residual.name)
        extra = () if residual is None else (residual.y,)
        for run in plan:
            self._call(run, y, out, *extra)
        for name in names:
            self._step(name)

    def _threshold_plan(self, names: list[str], product: _Product, side: str, y_bound: int, transposed: bool, col0: int,
                        ndim: int, norm: str | None = None, residual: str | None = None) -> list[_Run]:
        """The kernels of one threshold call site.

        A planes operand of monotone sets is packed from compares
        (:func:`host.fused.compare_bounds`; transposed groups all in one
        pass; a LayerNorm's input normalized row by row on the way,
        :func:`host.fused.norm_compare`), everything else from the codes by
        the general kernels, which refuse codes outside their encoding.
        """
        if norm is not None:
            return self._norm_plan(norm, names, product, side, y_bound, transposed, col0, ndim, residual)
        encodings = product.x if side == "x" else product.y
        kinds = [_KINDS.get(e.name, 0) for e in encodings]
        a, tokens = self.prog.arrays, self.arch.tokens
        sets = [(self.prog.params[f"{n}.base"], a[f"{n}.hi"], a[f"{n}.lo"]) for n in names]
        channels = sets[0][1].shape[0]
        bounds = [fused.compare_bounds(base, hi, lo, y_bound, kind) if product.planes else None
                  for (base, hi, lo), kind in zip(sets, kinds)]
        rows = (col0, channels, tokens)
        if transposed and all(b is not None for b in bounds):
            above, below, kind_array = np.stack([b[0] for b in bounds]), np.stack([b[1] for b in bounds]), np.array(kinds)
            return [lambda y, out: fused.compare_columns(y, *rows, above, below, kind_array, out)]
        plan: list[_Run] = []
        for group, (name, (base, hi, lo), kind, bound) in enumerate(zip(names, sets, kinds, bounds)):
            if bound is not None and not transposed:
                if ndim == 4:
                    plan.append(lambda y, out, b=bound, k=kind, g=group: fused.compare_tokens(y, *b, k, g, out))
                else:
                    plan.append(lambda y, out, b=bound, k=kind, g=group: fused.compare_rows(y, *rows, *b, k, g, out))
                continue
            hi_t, lo_t = np.ascontiguousarray(hi.T), np.ascontiguousarray(lo.T)

            def general(y: np.ndarray, out: np.ndarray, name=name, base=base, hi_t=hi_t, lo_t=lo_t, kind=kind, group=group):
                view = (y[:, col0:col0 + channels].reshape(-1, tokens, 1, channels) if y.ndim == 2
                        else y.transpose(3, 0, 2, 1))
                if not product.planes:
                    return fused.threshold_codes(view, base, hi_t, lo_t, group, transposed, out)
                bad = fused.threshold_planes(view, base, hi_t, lo_t, kind, group, transposed, out)
                if bad:
                    raise ValueError(f"{name}: {bad} codes lie outside encoding {encodings[group]}")

            plan.append(general)
        return plan

    def _norm_plan(self, norm: str, names: list[str], product: _Product, side: str, y_bound: int, transposed: bool,
                   col0: int, ndim: int, residual: str | None) -> list[_Run]:
        """:meth:`_threshold_plan` of the LayerNorm ``norm`` of ``y``: folded into the compares where it can be
        (:func:`host.fused.norm_compare`), else normalized first (:func:`host.intkernels.layer_norm`).

        With ``residual`` (a residual add's name), its runs take the added
        output too and add it to ``y`` first, in the same pass where folded
        (:func:`host.fused.residual_norm_compare`).
        """
        added = () if residual is None else self._residual_constants(residual)
        a = self.prog.arrays
        gain, bias, eps = np.ascontiguousarray(a[f"{norm}.gain"]), a[f"{norm}.bias"], self.prog.params[f"{norm}.eps"]
        kind = _KINDS.get((product.x if side == "x" else product.y)[0].name, 0)
        base, hi, lo = self.prog.params[f"{names[0]}.base"], a[f"{names[0]}.hi"], a[f"{names[0]}.lo"]
        bound = fused.compare_bounds(base, hi, lo, y_bound, kind) if product.planes else None
        folded = None if bound is None or len(names) != 1 or transposed else fused.norm_bounds(*bound, gain, bias)
        tokens = self.arch.tokens
        if folded is not None and residual is not None:
            return [lambda r, out, y: fused.residual_norm_compare(r, y, *added, gain, eps, tokens, *folded, kind, 0, out)]
        if folded is not None:
            return [lambda y, out: fused.norm_compare(y, gain, eps, tokens, *folded, kind, 0, out)]
        inner = self._threshold_plan(names, product, side, y_bound, transposed, col0, ndim)

        def normalized(y: np.ndarray, out: np.ndarray, *output: np.ndarray) -> None:
            if output:
                fused.residual_add(y, *output, *added)
            h = intkernels.layer_norm(y, gain, bias, eps)
            for run in inner:
                run(h, out)

        return [normalized]

    def _linear(self, name: str, threshold: str, y: np.ndarray, y_bound: int, norm: str | None = None,
                residual: _Residual | None = None) -> np.ndarray:
        """Layer ``name`` on the codes of ``threshold`` applied to ``y`` (see :meth:`_threshold`): its output (B*T, out).

        With ``norm``, ``y`` is the residual stream, normalized first (step
        ``norm``), after ``residual`` is added to it (its step first).
        """
        product, weights = self._products[name], self._weights[name]
        n = product.n
        rows = y.shape[0] if y.ndim == 2 else y.shape[0] * y.shape[3]
        x = self._scratch(f"{name}.x", *product.operand("x", (rows // self.arch.tokens, self.arch.tokens)))
        if residual is not None:
            self._step(residual.step)
        if norm is not None:
            self._step(norm)
        self._threshold([threshold], product, "x", y, y_bound, _input_view(x), norm=norm, residual=residual)
        x = x.reshape(rows, *x.shape[2:])
        out = self._scratch(name, (rows, weights.shape[-1]), product.dtype)
        if product.planes:
            self._call(fused.linear_planes, x, weights, product.coefs, product.modes, n, out)
        else:
            self._call(fused.linear_codes, x, weights, product.coefs, out)
        self._count(product, rows, weights.shape[-1])
        self._step(name)
        return out

    def _matmul(self, name: str, x: np.ndarray, y: np.ndarray, out: np.ndarray) -> None:
        """Product ``name`` of operands (rows, ..., H, B) into ``out`` (rows_x, rows_y, H, B), batch innermost."""
        product = self._products[name]
        self._count(product, x.shape[0], y.shape[0], items=x.shape[-2] * x.shape[-1])
        x, y, out = (a.reshape(*a.shape[:-2], -1) for a in (x, y, out))  # heads and images: one axis
        if product.planes:
            self._call(fused.matmul_planes, x, y, product.coefs, product.modes, product.n, out)
        else:
            self._call(fused.matmul_codes, x, y, product.coefs, out)
        self._step(name)

    def _residual_constants(self, name: str) -> tuple:
        """``(multiplier, shift, bias, low, high)`` of residual add ``name`` (:func:`host.fused.residual_add`)."""
        p = self.prog.params
        return (p[f"{name}.multiplier"], p[f"{name}.shift"], self.prog.arrays[f"{name}.bias"],
                *intops.signed_range(p["residual_bits"]))

    def _residual(self, r: np.ndarray, residual: _Residual) -> None:
        self._call(fused.residual_add, r, residual.y, *self._residual_constants(residual.name))
        self._step(residual.step)

    def _attention(self, pre: str, qkv: np.ndarray) -> np.ndarray:
        """Block ``pre``'s attention from its qkv output (B*T, 3d): ``A V`` as (T, head_dim, H, B)."""
        p, a = self.prog.params, self.prog.arrays
        t, heads, hd, d = self.arch.tokens, self.arch.heads, self.arch.head_dim, self.arch.dim
        images = len(qkv) // t
        qk, av = self._products[f"{pre}.attn.qk"], self._products[f"{pre}.attn.av"]
        trail = (heads, images)
        bound = self._products[f"{pre}.attn.qkv"].bound
        q = self._scratch(f"{pre}.attn.q", *qk.operand("x", (t,), trail))
        k = self._scratch(f"{pre}.attn.k", *qk.operand("y", (t,), trail))
        v = self._scratch(f"{pre}.attn.v", *av.operand("y", (hd,), trail))
        self._threshold([f"{pre}.attn.q"], qk, "x", qkv, bound, q)
        self._threshold([f"{pre}.attn.k"], qk, "y", qkv, bound, k, col0=d)
        self._threshold([f"{pre}.attn.v{g}" for g in range(p[f"{pre}.attn.v_groups"])], av, "y", qkv, bound, v,
                        transposed=True, col0=2 * d)
        scores = self._scratch(f"{pre}.attn.qk", (t, t, heads, images), qk.dtype)
        self._matmul(f"{pre}.attn.qk", q, k, scores)
        self._step(f"{pre}.attn.scores")  # requantized inside the softmax kernel
        attn = self._scratch(f"{pre}.attn.codes", *av.operand("x", (t,), trail))
        args = (scores, p[f"{pre}.attn.scores.multiplier"], p[f"{pre}.attn.scores.shift"], a["exp_table"],
                a[f"{pre}.attn.levels"], p["attn_frac"])
        if av.planes:
            self._call(fused.attention_planes, *args, attn)
        else:
            counts = intvit.level_counts(self.prog.model.layers[f"{pre}.attn.av"])
            self._call(fused.attention_codes, *args, np.repeat(np.arange(len(counts)), counts), attn)
        self._step(f"{pre}.attn.codes")
        o = self._scratch(f"{pre}.attn.av", (t, hd, heads, images), av.dtype)
        self._matmul(f"{pre}.attn.av", attn, v, o)
        return o

    # ---------------------------------------------------------------- forward

    def _blocks(self, r: np.ndarray) -> np.ndarray:
        """The transformer blocks on the residual stream ``r`` (B*T, d), in place: a :class:`_Tape`, recorded on the first batch of a size."""
        tape = self._tapes.get(len(r))
        if tape is not None:
            np.copyto(tape.r, r)
            for kernel, args in tape.calls:
                kernel(*args)
            self.steps += len(tape.steps)
            self.step_names += tape.steps
            self._cycles += tape.cycles
            return tape.r
        if len(self._tapes) >= _TAPES:
            self._tapes.pop(next(iter(self._tapes)))
        first_step, cycles, self._recording = len(self.step_names), self._cycles, []
        try:
            self._run_blocks(r)
            self._tapes[len(r)] = _Tape(r, self._recording, self.step_names[first_step:], self._cycles - cycles)
        finally:
            self._recording = None
        return r

    def _run_blocks(self, r: np.ndarray) -> None:
        """The blocks; a residual add followed by a LayerNorm runs in the norm's kernel (:meth:`_norm_plan`)."""
        carried = None  # the previous block's MLP output, added at the next block's first LayerNorm
        for i in range(self.arch.depth):
            pre = f"blocks.{i}"
            qkv = self._linear(f"{pre}.attn.qkv", f"{pre}.attn.qkv.in", r, self._norm_bounds[f"{pre}.norm1"], f"{pre}.norm1",
                               carried)
            o = self._attention(pre, qkv)
            y = self._linear(f"{pre}.attn.proj", f"{pre}.attn.proj.in", o, self._products[f"{pre}.attn.av"].bound)
            y = self._linear(f"{pre}.mlp.fc1", f"{pre}.mlp.fc1.in", r, self._norm_bounds[f"{pre}.norm2"], f"{pre}.norm2",
                             _Residual(f"{pre}.attn.proj.out", y, f"{pre}.attn.residual"))
            y = self._linear(f"{pre}.mlp.fc2", f"{pre}.mlp.fc2.in", y, self._products[f"{pre}.mlp.fc1"].bound)
            carried = _Residual(f"{pre}.mlp.fc2.out", y, f"{pre}.mlp.residual")
        if carried is not None:
            self._residual(r, carried)

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """Integer logits (B, classes) of raw pixel images (B, C, H, W): :func:`model.intvit.forward`'s."""
        prog, arch = self.prog, self.arch
        self.step_names = []
        raw = intvit.check_pixels(prog, raw)
        images, rows = len(raw), len(raw) * arch.tokens
        r = np.empty((rows, arch.dim), np.int64)
        fused.embed_tokens(raw, arch.patch_size, *self._embed, r)
        for ch in range(arch.in_channels):
            self._product_step(f"patch_embed.c{ch}", images * arch.num_patches)
        self._step("embed")
        r = self._blocks(r)
        logits = np.empty((images, arch.num_classes), np.int64)
        fused.head_logits(r, arch.tokens, *self._heads, logits)
        for name in prog.head_names:
            self._step(f"{name}.norm")
            self._product_step(name, images)
        self._step("logits")
        return logits

    def _product_step(self, name: str, rows: int) -> None:
        """The cycles and the step of linear layer ``name`` on ``rows`` rows, run inside an embedding or head kernel."""
        self._count(self._products[name], rows, self._weights[name].shape[-1])
        self._step(name)

    def predict(self, raw: np.ndarray) -> np.ndarray:
        """Class indices (B,) of raw pixel images: the lowest index of the largest integer logit."""
        return intops.argmax(self.logits(raw))
