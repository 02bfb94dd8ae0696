"""The integer-only ViT: a whole exported model as one integer program.

:func:`compile_program` folds an exported GSB-family model
(:class:`~model.modelfile.Model`: binary engine layers, 8-bit patch embedding
and heads, float LayerNorms, tokens and quantizer parameters) into integer
constants, once, at export time: this is the only place where floats appear.
:func:`forward` then runs raw integer pixels to integer logits with the
operations of :mod:`model.intops` and an :class:`Engine` for the matrix
products, with no float anywhere.  The graph, per image (``T`` tokens)::

    R = tokens;  R[patches] += rq(E(pixels x patch codes)) + b      residual, int16
    for each block:
        x = thr(LN(R))                     bipolar codes of the qkv input
        Y = E(x, qkv)                      q, k, v codes = thr(Y slices)
        s = rq(E(q_h, k_h))                scores with SCORE frac bits
        a = softmax_levels(s)              GSB attention levels (unipolar)
        o = thr(E(a_h, v_h))               bipolar codes of the proj input
        R = sat(R + rq(E(o, proj)) + b)
        x = thr(LN(R));  Y = E(x, fc1);  x = thr2(Y)      GELU folded, two-sided
        R = sat(R + rq(E(x, fc2)) + b)
    logits = sum over heads of rq(E(LN(R[token]), head codes)) + b;  class = argmax

``E`` is an engine product (:class:`Engine`), ``rq`` :func:`model.intops.requantize`,
``thr`` :func:`model.intops.multithreshold`, ``sat`` saturation to the
residual width.  A program is a flat set of named integer parameters and
int64 arrays (:class:`IntegerProgram`) whose names, shapes and value bounds
:func:`schema` lists, so the model file validates it field by field; the
bounds that keep every int64 intermediate below 2**62 are checked by
:func:`check_bounds` at export and at load.  ``docs/numeric-contract.md``
works an example of every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from scipy.special import erf

from model import intops
from model.deploy import check_images, patchify
from model.golden import Encoding
from model.layers import EngineLinear, EngineMatmul, FloatLinear
from model.modelfile import Architecture, IntegerSection, Model, Preprocessing
from model.quantizers import QuantGroup

RESIDUAL_BITS = 16    #: width of the residual stream (saturating)
NORM_BITS = 16        #: width of a LayerNorm output (the int16 head input)
MULTIPLIER_BITS = 16  #: width of a requantizer's multiplier
LOGIT_BITS = 32       #: width of the summed logits
SCORE_FRAC_BITS = 6   #: fraction bits of an attention score (the exp table's step is 2**-6)
EXP_FRAC_BITS = 15    #: fraction bits of an exp table entry (exp(0) = 2**15)
ATTN_FRAC_BITS = 16   #: fraction bits of an attention-level threshold
CALIBRATION_BITS = 20  #: residual width of the calibration pass that chooses the residual's fraction bits
CALIBRATION_FRAC = 8
GELU_ARGMIN = -0.7517915241  #: where GELU turns: decreasing below, increasing above
INT8 = Encoding("int", 8)  #: the encoding of the 8-bit weights of the patch embedding and the heads


class Engine(Protocol):
    """Computes the engine's integer products ``Y = sum_gh c_gh x_g @ y_h^T`` for a program."""

    def linear(self, name: str, xs: Sequence[np.ndarray]) -> np.ndarray:
        """Layer ``name`` on input code groups ``xs`` (rows, in) with its resident weights: (rows, out)."""

    def matmul(self, name: str, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> np.ndarray:
        """Activation product ``name`` of code groups ``xs`` (..., rows, n) and ``ys`` (..., cols, n)."""


class IntegerOps(Protocol):
    """The non-product steps of :func:`forward`, with the signatures and integers of :mod:`model.intops`."""

    def saturate(self, x: np.ndarray, bits: int) -> np.ndarray: ...

    def requantize(self, y: np.ndarray, multiplier: np.ndarray | int, shift: int) -> np.ndarray: ...

    def multithreshold(self, y: np.ndarray, base: int, hi: np.ndarray, lo: np.ndarray) -> np.ndarray: ...

    def layer_norm(self, x: np.ndarray, gain: np.ndarray, bias: np.ndarray, eps: int) -> np.ndarray: ...

    def attention_codes(self, scores: np.ndarray, table: np.ndarray, level_thresholds: np.ndarray, frac_bits: int,
                        counts: Sequence[int]) -> np.ndarray: ...


# --------------------------------------------------------------------------
# the program


@dataclass
class IntegerProgram:
    """An exported model's integer program: ``params`` (name -> int) and ``arrays`` (name -> int64).

    ``model`` supplies the engine layers (binary weight planes and the
    coefficients derived from their scales); everything else is here.
    """

    model: Model
    params: dict[str, int]
    arrays: dict[str, np.ndarray]

    def engine_layer(self, name: str) -> tuple[list[Encoding], list[np.ndarray] | list[Encoding], np.ndarray]:
        """``(x encodings, weight codes or y encodings, coefficients)`` of engine layer ``name``."""
        if name.startswith("patch_embed.c"):
            cols = channel_columns(self.model.architecture)[int(name[len("patch_embed.c"):])]
            return ([Encoding("uint", self.params["pixel_bits"])], [self.arrays["patch_embed.codes"][:, cols]],
                    np.ones((1, 1), np.int64))
        if name in ("head", "head_dist"):
            return [Encoding("int", NORM_BITS)], [self.arrays[f"{name}.codes"]], np.ones((1, 1), np.int64)
        layer = self.model.layers[name]
        if isinstance(layer, EngineLinear):
            return ([g.encoding for g in layer.input.groups], [w.operand.to_values() for w in layer.weights],
                    layer.coefficients[1])
        assert isinstance(layer, EngineMatmul)
        return [g.encoding for g in layer.x.groups], [g.encoding for g in layer.y.groups], layer.coefficients[1]

    @property
    def head_names(self) -> list[str]:
        """The classifier heads whose logits are summed."""
        return ["head", "head_dist"] if self.model.architecture.distillation_token else ["head"]


def program(model: Model) -> IntegerProgram:
    """The integer program a loaded model file carries (validated when it was loaded)."""
    if model.integer is None:
        raise ValueError("this model file has no integer program: export a GSB-family checkpoint with "
                         "python -m model.export (format version 2) to get one")
    return IntegerProgram(model, model.integer.params, model.integer.arrays)


def attach(model: Model, prog: IntegerProgram) -> Model:
    """``model`` carrying ``prog`` (what the model file stores)."""
    if prog.model is not model:
        raise ValueError("the program was compiled from a different model")
    model.integer = IntegerSection(dict(prog.params), dict(prog.arrays))
    return model


def _thresholds(ops: IntegerOps, prog: IntegerProgram, name: str, y: np.ndarray) -> np.ndarray:
    return ops.multithreshold(y, prog.params[f"{name}.base"], prog.arrays[f"{name}.hi"], prog.arrays[f"{name}.lo"])


def _layer_norm(ops: IntegerOps, prog: IntegerProgram, name: str, r: np.ndarray) -> np.ndarray:
    a = prog.arrays
    return ops.layer_norm(r, a[f"{name}.gain"], a[f"{name}.bias"], prog.params[f"{name}.eps"])


def _requantize(ops: IntegerOps, prog: IntegerProgram, name: str, y: np.ndarray) -> np.ndarray:
    return ops.requantize(y, prog.params[f"{name}.multiplier"], prog.params[f"{name}.shift"])


def level_counts(layer: EngineMatmul) -> list[int]:
    """Attention levels per x group of an ``A V`` product: 1 for a step (GSB), ``2**b - 1`` for a ``uint<b>`` (PTQ)."""
    return [g.encoding.value_range[1] for g in layer.x.groups]


def _attention_codes(ops: IntegerOps, prog: IntegerProgram, block: str, scores: np.ndarray) -> np.ndarray:
    """The attention map's codes per x group of ``A V`` (groups, B, heads, T, T): each the count of its levels passed."""
    return ops.attention_codes(scores, prog.arrays["exp_table"], prog.arrays[f"{block}.attn.levels"], prog.params["attn_frac"],
                               level_counts(prog.model.layers[f"{block}.attn.av"]))


def _to_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, T, d) to (B, heads, T, d/heads)."""
    b, t, d = x.shape
    return x.reshape(b, t, heads, d // heads).transpose(0, 2, 1, 3)


def check_pixels(prog: IntegerProgram, raw: np.ndarray) -> np.ndarray:
    """Raw pixels as int64 (B, C, H, W): :func:`model.deploy.check_images` (shape, finite, in range), and integers."""
    raw = check_images(prog.model, raw)
    if raw.dtype.kind == "f" and np.any(raw != np.rint(raw)):
        raise ValueError("raw pixels must be integers (the integer program takes the raw values, e.g. 0..255)")
    return raw.astype(np.int64)


@dataclass
class Trace:
    """What a forward computed: every step's integers (when ``keep``) and how many steps ran in float."""

    keep: bool = False
    steps: int = 0
    float_steps: int = 0
    values: dict[str, np.ndarray] | None = None

    def __call__(self, name: str, x: np.ndarray) -> np.ndarray:
        self.steps += 1
        if x.dtype.kind not in "iu":
            self.float_steps += 1
        if self.keep:
            self.values = self.values or {}
            self.values[name] = x
        return x


def forward(prog: IntegerProgram, raw: np.ndarray, engine: Engine, trace: Trace | None = None,
            ops: IntegerOps = intops) -> np.ndarray:
    """Integer logits (B, classes) of raw pixel images (B, C, H, W); see the module docstring.

    ``ops`` computes every step other than the products: :mod:`model.intops`
    itself, or an implementation that gives the same integers (the host's
    compiled one, :mod:`host.intkernels`).
    """
    tr = trace if trace is not None else Trace()
    p, a, arch = prog.params, prog.arrays, prog.model.architecture
    width, heads, d = p["residual_bits"], arch.heads, arch.dim
    raw = check_pixels(prog, raw)
    b = len(raw)
    patches = patchify(raw, arch.patch_size)
    flat = patches.reshape(-1, patches.shape[-1])
    embed = a["patch_embed.bias"]
    for ch, cols in enumerate(channel_columns(arch)):  # one product per channel: each has its own std
        y = tr(f"patch_embed.c{ch}", engine.linear(f"patch_embed.c{ch}", [flat[:, cols]]))
        embed = embed + _requantize(ops, prog, f"patch_embed.c{ch}", y)
    r = np.broadcast_to(a["tokens"], (b, arch.tokens, d)).copy()
    first = arch.tokens - arch.num_patches
    r[:, first:] += embed.reshape(b, arch.num_patches, d)
    r = tr("embed", ops.saturate(r, width))
    for i in range(arch.depth):
        pre = f"blocks.{i}"
        h = tr(f"{pre}.norm1", _layer_norm(ops, prog, f"{pre}.norm1", r))
        x = tr(f"{pre}.attn.qkv.in", _thresholds(ops, prog, f"{pre}.attn.qkv.in", h))
        y = tr(f"{pre}.attn.qkv", engine.linear(f"{pre}.attn.qkv", [x.reshape(b * arch.tokens, d)]).reshape(b, arch.tokens, 3 * d))
        q = tr(f"{pre}.attn.q", _thresholds(ops, prog, f"{pre}.attn.q", y[..., :d]))
        k = tr(f"{pre}.attn.k", _thresholds(ops, prog, f"{pre}.attn.k", y[..., d:2 * d]))
        vs = [tr(f"{pre}.attn.v{g}", _thresholds(ops, prog, f"{pre}.attn.v{g}", y[..., 2 * d:])) for g in range(p[f"{pre}.attn.v_groups"])]
        s = tr(f"{pre}.attn.qk", engine.matmul(f"{pre}.attn.qk", [_to_heads(q, heads)], [_to_heads(k, heads)]))
        s = tr(f"{pre}.attn.scores", _requantize(ops, prog, f"{pre}.attn.scores", s))
        attn = tr(f"{pre}.attn.codes", _attention_codes(ops, prog, pre, s))
        o = tr(f"{pre}.attn.av", engine.matmul(f"{pre}.attn.av", list(attn), [_to_heads(v, heads).swapaxes(-1, -2) for v in vs]))
        x = tr(f"{pre}.attn.proj.in", _thresholds(ops, prog, f"{pre}.attn.proj.in", o.transpose(0, 2, 1, 3).reshape(b, arch.tokens, d)))
        y = tr(f"{pre}.attn.proj", engine.linear(f"{pre}.attn.proj", [x.reshape(b * arch.tokens, d)]).reshape(b, arch.tokens, d))
        r = tr(f"{pre}.attn.residual", ops.saturate(r + _requantize(ops, prog, f"{pre}.attn.proj.out", y) + a[f"{pre}.attn.proj.out.bias"], width))
        h = tr(f"{pre}.norm2", _layer_norm(ops, prog, f"{pre}.norm2", r))
        x = tr(f"{pre}.mlp.fc1.in", _thresholds(ops, prog, f"{pre}.mlp.fc1.in", h))
        y = tr(f"{pre}.mlp.fc1", engine.linear(f"{pre}.mlp.fc1", [x.reshape(b * arch.tokens, d)]))
        x = tr(f"{pre}.mlp.fc2.in", _thresholds(ops, prog, f"{pre}.mlp.fc2.in", y))
        y = tr(f"{pre}.mlp.fc2", engine.linear(f"{pre}.mlp.fc2", [x]).reshape(b, arch.tokens, d))
        r = tr(f"{pre}.mlp.residual", ops.saturate(r + _requantize(ops, prog, f"{pre}.mlp.fc2.out", y) + a[f"{pre}.mlp.fc2.out.bias"], width))
    logits = np.zeros((b, arch.num_classes), np.int64)
    for token, name in enumerate(prog.head_names):
        h = tr(f"{name}.norm", _layer_norm(ops, prog, "norm", r[:, token]))
        y = tr(name, engine.linear(name, [h]))
        logits = logits + _requantize(ops, prog, name, y) + a[f"{name}.bias"]
    return tr("logits", logits)


def predict(prog: IntegerProgram, raw: np.ndarray, engine: Engine) -> np.ndarray:
    """Class indices (B,) of raw pixel images: the integer argmax of :func:`forward`."""
    return intops.argmax(forward(prog, raw, engine))


class ReferenceEngine:
    """The engine's products on unpacked integer codes, by int64 matrix products.

    Independent of the packed popcount path (:mod:`model.golden`, the
    emulator's kernels, the gateware), so comparing the two checks both.
    ``matmul_fn`` multiplies two int64 arrays batched like ``a @ b``
    (numpy's by default; the torch deploy forward passes torch's).
    """

    def __init__(self, prog: IntegerProgram, matmul_fn: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.prog = prog
        self._matmul = matmul_fn or np.matmul
        self._weights = {name: prog.engine_layer(name)[1:] for name in linear_names(prog.model.architecture, prog.head_names)}

    def _product(self, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray], coefs: np.ndarray) -> np.ndarray:
        total = None
        for g, x in enumerate(xs):
            for h, y in enumerate(ys):
                term = int(coefs[g, h]) * self._matmul(x.astype(np.int64), np.swapaxes(y, -1, -2).astype(np.int64))
                total = term if total is None else total + term
        return total

    def linear(self, name: str, xs: Sequence[np.ndarray]) -> np.ndarray:
        weights, coefs = self._weights[name]
        return self._product(xs, weights, coefs)

    def matmul(self, name: str, xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> np.ndarray:
        return self._product(xs, ys, self.prog.engine_layer(name)[2])


def channel_columns(arch: Architecture) -> list[slice]:
    """The patch embedding's input columns of each channel (a patch is flattened as (C, p, p))."""
    per = arch.patch_size**2
    return [slice(ch * per, (ch + 1) * per) for ch in range(arch.in_channels)]


def linear_names(arch: Architecture, head_names: Sequence[str]) -> list[str]:
    """Every engine linear layer of an integer program, in order."""
    names = [f"patch_embed.c{ch}" for ch in range(arch.in_channels)]
    for i in range(arch.depth):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj", f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return names + list(head_names)


# --------------------------------------------------------------------------
# compiling: the float model folded into integers (export time only)


def multiplier_shift(factor: float) -> tuple[int, int]:
    """``(m, s)`` with ``m / 2**s`` the closest to ``factor`` > 0 for an m below 2**MULTIPLIER_BITS.

    A power of two is exact (``m = 2**15``); ``s`` is at least 0, so a factor
    of 2**16 or more is refused.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"a requantizer factor must be finite and > 0, got {factor}")
    shift = MULTIPLIER_BITS - math.frexp(factor)[1]
    if shift < 0:
        raise ValueError(f"requantizer factor {factor:g} needs more than {MULTIPLIER_BITS} multiplier bits")
    m = int(math.floor(factor * 2.0**shift + 0.5))
    if m >= 1 << MULTIPLIER_BITS:  # rounded up to the next power of two
        m, shift = m >> 1, shift - 1
    return m, shift


def _search(code: Callable[[np.ndarray], np.ndarray], levels: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            rising: bool) -> np.ndarray:
    """Per level and channel, the boundary of ``code(y) >= level`` on the integer interval ``[lo, hi]``.

    ``levels`` (K, 1) against channels (K, C) arrays.  ``rising``: ``code`` is
    non-decreasing there; returns the smallest y where it holds, or
    ``hi + 1``.  Otherwise non-increasing: the largest y where it holds, or
    ``lo - 1``.  Bisection on int64 arrays of all levels and channels at once.
    """
    a, b = lo - 1, hi + 1   # rising: code(a) fails, code(b) holds; falling: code(a) holds, code(b) fails (by convention)
    while np.any(b - a > 1):
        mid = (a + b) // 2
        ok = code(mid) >= levels
        if rising:
            a, b = np.where(ok, a, mid), np.where(ok, mid, b)
        else:
            a, b = np.where(ok, mid, a), np.where(ok, b, mid)
    return b if rising else a


def fold_quantizer(group: QuantGroup, real: Callable[[np.ndarray], np.ndarray], y_range: tuple[int, int], channels: int,
                   turn: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """One quantizer group on an integer input ``y`` folded to ``(base, hi, lo)`` of :func:`intops.multithreshold`.

    ``real(y)`` maps int64 ``y`` (..., channels) to the quantizer's input
    (float64, offset included) and must be non-decreasing in ``y`` for every
    channel, except below ``turn`` (per channel), where it is non-increasing
    (GELU): there the codes count from below through ``lo``.  Every level
    between the encoding's smallest and largest value gets a threshold, so a
    code that jumps over a level (the sign rule's -1 to +1) has two equal ones.
    """
    y_min, y_max = y_range
    low, top = group.encoding.value_range
    levels = np.arange(low + 1, top + 1, dtype=np.int64)[:, None]
    shape = (len(levels), channels)
    code = lambda y: group.codes(real(y))  # noqa: E731 - the float rule, at compile time only
    full_lo, full_hi = np.full(shape, y_min, np.int64), np.full(shape, y_max, np.int64)
    start = full_lo if turn is None else np.broadcast_to(np.clip(turn, y_min, y_max + 1), shape)
    hi = _search(code, levels, start, full_hi, rising=True)
    lo = np.full(shape, y_min - 1, np.int64) if turn is None else _search(code, levels, full_lo, start - 1, rising=False)
    return low, hi.T.copy(), lo.T.copy()


def _set_thresholds(params: dict, arrays: dict, name: str, folded: tuple[int, np.ndarray, np.ndarray]) -> None:
    params[f"{name}.base"], arrays[f"{name}.hi"], arrays[f"{name}.lo"] = folded


def _accumulator_range(bits: int) -> tuple[int, int]:
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def _int8_codes(layer: FloatLinear) -> tuple[np.ndarray, float]:
    """8-bit codes and scale of a weight: ``codes = round(w / s)``, ``s = max|w| / 127`` (per tensor, symmetric).

    A GSB-family export's weight is already ``codes * s`` (fake-quantized in
    training), so this recovers its codes exactly; a full-precision weight
    (a PTQ model's patch embedding and heads) is rounded to 8 bits here.
    """
    w = layer.weight.astype(np.float64)
    scale = float(np.abs(w).max()) / 127.0
    if scale == 0.0:
        return np.zeros(w.shape, np.int64), 1.0
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int64), scale


def _norm(params: dict, arrays: dict, name: str, weight: np.ndarray, bias: np.ndarray, eps: float, d: int, residual_frac: int) -> int:
    """Fold a LayerNorm; returns its output's fraction bits (the most that keep it within NORM_BITS)."""
    gamma, beta = weight.astype(np.float64), bias.astype(np.float64)
    peak = float(np.max(np.abs(gamma) * math.sqrt(d) + np.abs(beta)))
    frac = NORM_BITS - 2 - max(0, math.frexp(peak)[1])
    while frac > 0 and np.max(np.abs(np.floor(gamma * math.sqrt(d) * 2.0**frac + 0.5)) + np.abs(np.floor(beta * 2.0**frac + 0.5))) + 1 > (1 << (NORM_BITS - 1)) - 1:
        frac -= 1
    arrays[f"{name}.gain"] = np.floor(gamma * math.sqrt(d) * 2.0**frac + 0.5).astype(np.int64)
    arrays[f"{name}.bias"] = np.floor(beta * 2.0**frac + 0.5).astype(np.int64)
    params[f"{name}.eps"] = max(1, int(math.floor(eps * d**3 * 4.0**residual_frac + 0.5)))
    params[f"{name}.frac"] = frac
    return frac


def _affine(scale: float, bias: np.ndarray | None, offset: np.ndarray | None, channels: int) -> Callable[[np.ndarray], np.ndarray]:
    """``y -> y*scale + bias + offset`` per channel, in float64."""
    shift = np.zeros(channels)
    for part in (bias, offset):
        if part is not None:
            shift = shift + np.broadcast_to(part.astype(np.float64), (channels,))
    return lambda y: y.astype(np.float64) * scale + shift


def _gelu(z: np.ndarray) -> np.ndarray:
    return 0.5 * z * (1.0 + erf(z / math.sqrt(2.0)))


def pixel_range(pre: Preprocessing) -> tuple[int, int]:
    """``(pixel_max, pixel_bits)``: the top raw pixel value (the preprocessing's divisor) and its unsigned width."""
    pixel_max = int(pre.input_divisor)
    _require(pre.input_divisor == pixel_max and 1 <= pixel_max < 1 << 16,
             f"preprocessing.input_divisor {pre.input_divisor} must be the integer top pixel value")
    return pixel_max, max(2, pixel_max.bit_length())


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def compile_program(model: Model, calibration: np.ndarray, residual_frac: int | None = None) -> IntegerProgram:
    """The integer program of an exported GSB-family model.

    ``calibration`` holds raw training images (never test images): the
    residual stream's fraction bits are the most that keep twice the largest
    residual value seen on them within :data:`RESIDUAL_BITS` (values beyond
    saturate).  ``residual_frac`` fixes them instead.
    """
    arch = model.architecture
    for name in linear_names(arch, []):
        if not name.startswith("patch_embed"):
            _require(isinstance(model.layers[name], EngineLinear),
                     f"{name} is a {type(model.layers[name]).__name__}: an integer program needs every block linear on the engine "
                     "(a GSB-family model at its last stage)")
    for i in range(arch.depth):
        for part in ("qk", "av"):
            _require(isinstance(model.layers[f"blocks.{i}.attn.{part}"], EngineMatmul), f"blocks.{i}.attn.{part} must be an engine matmul")
    if residual_frac is None:
        probe = _compile(model, CALIBRATION_FRAC, CALIBRATION_BITS)
        tr = Trace(keep=True)
        engine = ReferenceEngine(probe)
        peak = 1
        for chunk in np.array_split(calibration, max(1, len(calibration) // 256)):
            tr.values = None
            forward(probe, chunk, engine, tr)
            peak = max(peak, *(int(np.abs(v).max()) for k, v in tr.values.items() if k == "embed" or k.endswith("residual")))
        _require(peak < (1 << (CALIBRATION_BITS - 2)), f"the residual stream reaches {peak * 2.0**-CALIBRATION_FRAC:g}: too large to calibrate")
        real_peak = 2.0 * peak * 2.0**-CALIBRATION_FRAC
        residual_frac = RESIDUAL_BITS - 1 - max(0, math.ceil(math.log2(real_peak)))
    return _compile(model, residual_frac, RESIDUAL_BITS)


def _compile(model: Model, residual_frac: int, residual_bits: int) -> IntegerProgram:
    arch, pre, t = model.architecture, model.preprocessing, model.tensors
    d, heads = arch.dim, arch.heads
    unit = 2.0**residual_frac
    params: dict[str, int] = {"residual_bits": residual_bits, "residual_frac": residual_frac, "score_frac": SCORE_FRAC_BITS,
                              "exp_frac": EXP_FRAC_BITS, "attn_frac": ATTN_FRAC_BITS}
    arrays: dict[str, np.ndarray] = {}
    params["pixel_max"], params["pixel_bits"] = pixel_range(pre)

    # patch embedding, per channel c: W (raw/div - mean_c)/std_c + b =
    #   sum_c (s/(div std_c)) (codes_c . raw_c) + b - sum_c (s mean_c/std_c) rowsum(codes_c)
    embed = model.layers["patch_embed"]
    _require(isinstance(embed, FloatLinear), "patch_embed must be a float layer (8-bit in a GSB-family export)")
    codes, s = _int8_codes(embed)
    arrays["patch_embed.codes"] = codes
    mean, std = pre.channel_values(arch.in_channels, np.float64)
    bias = embed.bias.astype(np.float64) if embed.bias is not None else np.zeros(d)
    for ch, cols in enumerate(channel_columns(arch)):
        params[f"patch_embed.c{ch}.multiplier"], params[f"patch_embed.c{ch}.shift"] = multiplier_shift(
            s / (pre.input_divisor * std[ch]) * unit)
        bias = bias - s * mean[ch] / std[ch] * codes[:, cols].sum(axis=1)
    arrays["patch_embed.bias"] = np.floor(bias * unit + 0.5).astype(np.int64)
    front = [t["cls_token"]] + ([t["dist_token"]] if arch.distillation_token else [])
    tokens = np.concatenate(front + [np.zeros((arch.num_patches, d), np.float32)]).astype(np.float64) + t["pos_embed"]
    arrays["tokens"] = np.floor(tokens * unit + 0.5).astype(np.int64)

    arrays["exp_table"] = intops.exp_table(SCORE_FRAC_BITS, EXP_FRAC_BITS)
    for i in range(arch.depth):
        pre_ = f"blocks.{i}"
        qkv: EngineLinear = model.layers[f"{pre_}.attn.qkv"]
        proj: EngineLinear = model.layers[f"{pre_}.attn.proj"]
        fc1: EngineLinear = model.layers[f"{pre_}.mlp.fc1"]
        fc2: EngineLinear = model.layers[f"{pre_}.mlp.fc2"]
        qk: EngineMatmul = model.layers[f"{pre_}.attn.qk"]
        av: EngineMatmul = model.layers[f"{pre_}.attn.av"]
        for norm, layer in (("norm1", qkv), ("norm2", fc1)):
            frac = _norm(params, arrays, f"{pre_}.{norm}", t[f"{pre_}.{norm}.weight"], t[f"{pre_}.{norm}.bias"], arch.ln_eps, d, residual_frac)
            _require(len(layer.input.groups) == 1, f"{pre_}: the input of {layer} must be one group")
            name = f"{pre_}.attn.qkv.in" if norm == "norm1" else f"{pre_}.mlp.fc1.in"
            _set_thresholds(params, arrays, name, fold_quantizer(layer.input.groups[0], _affine(2.0**-frac, None, layer.input.offset, d),
                                                                 _accumulator_range(NORM_BITS), d))
        # q, k and v codes from the qkv accumulator (real = Y 2**-F + bias)
        fmt = qkv.coefficients[0]
        y_range = _accumulator_range(qkv.accumulator_bits)
        for part, quant, cols in (("q", qk.x, slice(0, d)), ("k", qk.y, slice(d, 2 * d))):
            _require(len(quant.groups) == 1, f"{pre_}.attn.{part} must be one group")
            real = _affine(2.0**-fmt.frac_bits, qkv.bias[cols] if qkv.bias is not None else None, quant.offset, d)
            _set_thresholds(params, arrays, f"{pre_}.attn.{part}", fold_quantizer(quant.groups[0], real, y_range, d))
        real = _affine(2.0**-fmt.frac_bits, qkv.bias[2 * d:] if qkv.bias is not None else None, av.y.offset, d)
        for g, group in enumerate(av.y.groups):
            _set_thresholds(params, arrays, f"{pre_}.attn.v{g}", fold_quantizer(group, real, y_range, d))
        params[f"{pre_}.attn.v_groups"] = len(av.y.groups)
        # scores: the Q K^T accumulator moved to SCORE_FRAC_BITS
        frac = qk.coefficients[0].frac_bits
        params[f"{pre_}.attn.scores.multiplier"] = 1 << max(0, SCORE_FRAC_BITS - frac)
        params[f"{pre_}.attn.scores.shift"] = max(0, frac - SCORE_FRAC_BITS)
        # attention levels: [softmax + B >= t] as [e 2**Fa >= A Z], A = ceil((t - B) 2**Fa), clamped to 0 .. 2**Fa + 1;
        # a step group is one level, a uint<b> group (z / step rounded) the 2**b - 1 levels t = (l - 1/2) step
        offset = np.zeros((heads, arch.tokens, arch.tokens)) if av.x.offset is None else av.x.offset.astype(np.float64)
        offset = np.broadcast_to(offset, (heads, arch.tokens, arch.tokens))
        levels = []
        for group in av.x.groups:
            if group.rule == "step":
                cuts = [group.params["threshold"]]
            else:
                _require(group.rule == "uint", f"{pre_}.attn.av: attention codes must be step or uint rules, got {group.rule}")
                cuts = [(level - 0.5) * group.params["step"] for level in range(1, group.encoding.value_range[1] + 1)]
            levels += [np.clip(np.ceil((t - offset) * 2.0**ATTN_FRAC_BITS), 0, (1 << ATTN_FRAC_BITS) + 1) for t in cuts]
        arrays[f"{pre_}.attn.levels"] = np.stack(levels).astype(np.int64)
        # proj input: sign of the A V accumulator (per channel h*hd + j)
        fmt = av.coefficients[0]
        _require(len(proj.input.groups) == 1, f"{pre_}.attn.proj: the input must be one group")
        _set_thresholds(params, arrays, f"{pre_}.attn.proj.in",
                        fold_quantizer(proj.input.groups[0], _affine(2.0**-fmt.frac_bits, None, proj.input.offset, d),
                                       _accumulator_range(av.accumulator_bits(arch.tokens)), d))
        # fc2 input: clip(GELU(Y 2**-F + b)) + offset, non-monotone below GELU_ARGMIN
        fmt = fc1.coefficients[0]
        hidden = arch.mlp_hidden
        b1 = fc1.bias.astype(np.float64) if fc1.bias is not None else np.zeros(hidden)
        off = np.zeros(hidden) if fc2.input.offset is None else np.broadcast_to(fc2.input.offset.astype(np.float64), (hidden,))
        clip = arch.mlp_clip if arch.mlp_clip is not None else math.inf
        real = lambda y, b1=b1, off=off, f=fmt.frac_bits: np.clip(_gelu(y * 2.0**-f + b1), -clip, clip) + off  # noqa: E731
        turn = np.ceil((GELU_ARGMIN - b1) * 2.0**fmt.frac_bits).astype(np.int64)
        _require(len(fc2.input.groups) == 1, f"{pre_}.mlp.fc2: the input must be one group")
        _set_thresholds(params, arrays, f"{pre_}.mlp.fc2.in",
                        fold_quantizer(fc2.input.groups[0], real, _accumulator_range(fc1.accumulator_bits), hidden, turn))
        # proj and fc2 outputs into the residual stream
        for name, layer in ((f"{pre_}.attn.proj.out", proj), (f"{pre_}.mlp.fc2.out", fc2)):
            params[f"{name}.multiplier"], params[f"{name}.shift"] = multiplier_shift(2.0**(residual_frac - layer.coefficients[0].frac_bits))
            b = layer.bias if layer.bias is not None else np.zeros(d, np.float32)
            arrays[f"{name}.bias"] = np.floor(b.astype(np.float64) * unit + 0.5).astype(np.int64)

    norm_frac = _norm(params, arrays, "norm", t["norm.weight"], t["norm.bias"], arch.ln_eps, d, residual_frac)
    head_names = ["head", "head_dist"] if arch.distillation_token else ["head"]
    heads_scaled = {}
    for name in head_names:
        layer = model.layers[name]
        _require(isinstance(layer, FloatLinear), f"{name} must be a float layer (8-bit in a GSB-family export)")
        heads_scaled[name] = _int8_codes(layer)
    # logits: one format for every head (their sum has the argmax of their mean), the most fraction bits that fit
    y_peak = {name: 127 * (1 << (NORM_BITS - 1)) * d for name in head_names}
    logit_frac = 24
    while True:
        total = 0.0
        for name, (codes, s) in heads_scaled.items():
            bias = model.layers[name].bias
            total += (y_peak[name] * s * 2.0**-norm_frac + (0.0 if bias is None else float(np.abs(bias).max()))) * 2.0**logit_frac + 2
        if total < 2.0 ** (LOGIT_BITS - 1) or logit_frac == 0:
            break
        logit_frac -= 1
    params["logit_frac"] = logit_frac
    for name, (codes, s) in heads_scaled.items():
        arrays[f"{name}.codes"] = codes
        params[f"{name}.multiplier"], params[f"{name}.shift"] = multiplier_shift(s * 2.0**(logit_frac - norm_frac))
        bias = model.layers[name].bias
        arrays[f"{name}.bias"] = np.floor((np.zeros(arch.num_classes) if bias is None else bias.astype(np.float64)) * 2.0**logit_frac + 0.5).astype(np.int64)
    prog = IntegerProgram(model, params, {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in arrays.items()})
    check_bounds(prog)
    return prog


# --------------------------------------------------------------------------
# the schema and the bounds (checked at export and at load)


def schema(model: Model, params: dict[str, int]) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[tuple[int, ...], int, int]]]:
    """Every parameter with its allowed range, and every array with its shape and value range.

    Shapes come from the architecture and the engine layers; the counts
    that shape other fields (``blocks.i.attn.v_groups``) are read from
    ``params`` after their own range check.
    """
    arch = model.architecture
    d, hidden, t, heads = arch.dim, arch.mlp_hidden, arch.tokens, arch.heads
    n_pix = arch.in_channels * arch.patch_size**2
    big = 1 << 40
    pixel_max, pixel_bits = pixel_range(model.preprocessing)  # the pixels check_pixels lets in
    p: dict[str, tuple[int, int]] = {
        "residual_bits": (RESIDUAL_BITS, RESIDUAL_BITS), "residual_frac": (0, RESIDUAL_BITS + 16),
        "score_frac": (0, 12), "exp_frac": (1, 24), "attn_frac": (1, 24), "pixel_max": (pixel_max, pixel_max),
        "pixel_bits": (pixel_bits, pixel_bits), "logit_frac": (0, 40),
    }
    norm_side = (1 << (NORM_BITS - 1)) - 1
    resid = 1 << (RESIDUAL_BITS + 8)
    a: dict[str, tuple[tuple[int, ...], int, int]] = {
        "patch_embed.codes": ((d, n_pix), -127, 127), "patch_embed.bias": ((d,), -resid, resid),
        "tokens": ((t, d), -(1 << (RESIDUAL_BITS - 1)), (1 << (RESIDUAL_BITS - 1)) - 1),
        "exp_table": ((_table_length(params),), 0, 1 << 24),
    }

    def requant(name: str) -> None:
        p[f"{name}.multiplier"], p[f"{name}.shift"] = (1, (1 << MULTIPLIER_BITS) - 1), (0, 62)

    def norm(name: str) -> None:
        a[f"{name}.gain"] = a[f"{name}.bias"] = ((d,), -norm_side, norm_side)
        p[f"{name}.eps"], p[f"{name}.frac"] = (1, big), (0, NORM_BITS)

    def thresholds(name: str, channels: int, levels: int, base: tuple[int, int]) -> None:
        p[f"{name}.base"] = base
        a[f"{name}.hi"] = a[f"{name}.lo"] = ((channels, levels), -big, big)

    for ch in range(arch.in_channels):
        requant(f"patch_embed.c{ch}")
    for i in range(arch.depth):
        pre = f"blocks.{i}"
        layers = {k: model.layers.get(f"{pre}.{k}") for k in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "attn.qk", "attn.av")}
        norm(f"{pre}.norm1")
        norm(f"{pre}.norm2")
        for key, name, channels in (("attn.qkv", "attn.qkv.in", d), ("attn.proj", "attn.proj.in", d),
                                    ("mlp.fc1", "mlp.fc1.in", d), ("mlp.fc2", "mlp.fc2.in", hidden)):
            enc = layers[key].input.groups[0].encoding if isinstance(layers[key], EngineLinear) else Encoding("bipolar")
            thresholds(f"{pre}.{name}", channels, enc.value_range[1] - enc.value_range[0], (enc.value_range[0],) * 2)
        qk, av = layers["attn.qk"], layers["attn.av"]
        for part, quant in (("q", getattr(qk, "x", None)), ("k", getattr(qk, "y", None))):
            enc = quant.groups[0].encoding if quant is not None else Encoding("bipolar")
            thresholds(f"{pre}.attn.{part}", d, enc.value_range[1] - enc.value_range[0], (enc.value_range[0],) * 2)
        v_groups = av.y.groups if isinstance(av, EngineMatmul) else ()
        p[f"{pre}.attn.v_groups"] = (len(v_groups), len(v_groups))  # one set of thresholds per Value group
        for g in range(_count(params, f"{pre}.attn.v_groups", p[f"{pre}.attn.v_groups"])):
            enc = v_groups[g].encoding
            thresholds(f"{pre}.attn.v{g}", d, enc.value_range[1] - enc.value_range[0], (enc.value_range[0],) * 2)
        requant(f"{pre}.attn.scores")
        n_levels = sum(level_counts(av)) if isinstance(av, EngineMatmul) else 1
        a[f"{pre}.attn.levels"] = ((n_levels, heads, t, t), 0, (1 << 24) + 1)
        for name in (f"{pre}.attn.proj.out", f"{pre}.mlp.fc2.out"):
            requant(name)
            a[f"{name}.bias"] = ((d,), -resid, resid)
    norm("norm")
    for name in (["head", "head_dist"] if arch.distillation_token else ["head"]):
        requant(name)
        a[f"{name}.codes"] = ((arch.num_classes, d), -127, 127)
        a[f"{name}.bias"] = ((arch.num_classes,), -(1 << (LOGIT_BITS - 2)), 1 << (LOGIT_BITS - 2))
    return p, a


def _count(params: dict, name: str, allowed: tuple[int, int]) -> int:
    """A count from ``params`` that shapes other fields, or 0 while it is missing or out of range."""
    value = params.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and allowed[0] <= value <= allowed[1] else 0


def _table_length(params: dict[str, int]) -> int:
    sf, ef = params.get("score_frac"), params.get("exp_frac")
    if not (isinstance(sf, int) and isinstance(ef, int) and 0 <= sf <= 12 and 1 <= ef <= 24):
        return 0
    return len(intops.exp_table(sf, ef, max_len=1 << 20))


def requantized_bound(prog: IntegerProgram, name: str, y_abs: int) -> int:
    """A bound on ``|requantize(y)|`` by requantizer ``name`` for ``|y| <= y_abs`` (round half up adds one)."""
    p = prog.params
    return (y_abs * p[f"{name}.multiplier"] >> p[f"{name}.shift"]) + 1


def norm_output_bound(prog: IntegerProgram, name: str) -> int:
    """A bound on LayerNorm ``name``'s outputs: ``|u| <= sigma`` bounds each by ``|gain| + |bias| + 1``."""
    a = prog.arrays
    return int(np.max(np.abs(a[f"{name}.gain"]) + np.abs(a[f"{name}.bias"]))) + 1


def check_bounds(prog: IntegerProgram) -> None:
    """Raise ValueError unless every int64 intermediate of :func:`forward` stays below 2**62 and the exp table is the contract's.

    The residual saturates, LayerNorm outputs are bounded by their gains
    (``|u| <= sigma``), thresholded codes by their encodings, so each step's
    worst case follows from the constants alone.
    """
    p, a, arch = prog.params, prog.arrays, prog.model.architecture
    limit = 1 << intops.INT64_SAFE_BITS
    d, width = arch.dim, p["residual_bits"]
    expected = intops.exp_table(p["score_frac"], p["exp_frac"])
    if a["exp_table"].shape != expected.shape or np.any(a["exp_table"] != expected):
        raise ValueError("exp_table is not round(2**exp_frac * exp(-k / 2**score_frac))")

    def fits(what: str, value: int) -> None:
        if value >= limit:
            raise ValueError(f"{what} can reach {value}, beyond the int64 contract's 2**62")

    def requant(name: str, y_abs: int) -> int:
        fits(f"{name} requantizer", y_abs * p[f"{name}.multiplier"] + (1 << p[f"{name}.shift"]))
        return requantized_bound(prog, name, y_abs)

    for ch in range(arch.in_channels):
        requant(f"patch_embed.c{ch}", 127 * p["pixel_max"] * arch.patch_size**2)
    u_abs = 2 * d * (1 << (width - 1))
    for name in [f"blocks.{i}.norm{j}" for i in range(arch.depth) for j in (1, 2)] + ["norm"]:
        fits(f"{name} variance", d * u_abs * u_abs + p[f"{name}.eps"])
        fits(f"{name} product", u_abs * int(np.abs(a[f"{name}.gain"]).max()))
        out = norm_output_bound(prog, name)
        if out > (1 << (NORM_BITS - 1)) - 1:
            raise ValueError(f"{name} output can reach {out}, beyond int{NORM_BITS}")
    table0 = int(a["exp_table"][0])
    for i in range(arch.depth):
        pre = f"blocks.{i}"
        _, _, coefs = prog.engine_layer(f"{pre}.attn.qk")
        qk = prog.model.layers[f"{pre}.attn.qk"]
        requant(f"{pre}.attn.scores", 1 << qk.accumulator_bits(arch.head_dim))
        fits(f"{pre} exp numerator", table0 << p["attn_frac"])
        fits(f"{pre} exp threshold product", int(a[f"{pre}.attn.levels"].max(initial=0)) * arch.tokens * table0)
        for name, layer in ((f"{pre}.attn.proj.out", f"{pre}.attn.proj"), (f"{pre}.mlp.fc2.out", f"{pre}.mlp.fc2")):
            requant(name, 1 << prog.model.layers[layer].accumulator_bits)
    total = 0
    for name in prog.head_names:
        total += requant(name, 127 * (1 << (NORM_BITS - 1)) * d) + int(np.abs(a[f"{name}.bias"]).max())
    if total >= 1 << (LOGIT_BITS - 1):
        raise ValueError(f"the summed logits can reach {total}, beyond int{LOGIT_BITS}")


def validate(model: Model, params: dict, arrays: dict[str, np.ndarray]) -> IntegerProgram:
    """An :class:`IntegerProgram` from a file's fields; raises ``ValueError`` naming the field at fault."""
    if not all(isinstance(k, str) for k in params):
        raise ValueError("params: names must be strings")
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"params.{name}: expected an int, got {type(value).__name__}")
    want_p, want_a = schema(model, params)
    for name, (lo, hi) in want_p.items():
        if name in params and not lo <= params[name] <= hi:
            raise ValueError(f"params.{name}: {params[name]} is outside {lo}..{hi}")
    if set(params) != set(want_p):
        raise ValueError(f"params: unknown {sorted(set(params) - set(want_p))}, missing {sorted(set(want_p) - set(params))}")
    if set(arrays) != set(want_a):
        raise ValueError(f"arrays: unknown {sorted(set(arrays) - set(want_a))}, missing {sorted(set(want_a) - set(arrays))}")
    for name, (shape, lo, hi) in want_a.items():
        x = arrays[name]
        if x.dtype != np.int64 or x.shape != shape:
            raise ValueError(f"arrays.{name}: expected int64 {shape}, got {x.dtype} {x.shape}")
        if x.size and (x.min() < lo or x.max() > hi):
            raise ValueError(f"arrays.{name}: values outside {lo}..{hi}")
    prog = IntegerProgram(model, dict(params), dict(arrays))
    check_bounds(prog)
    return prog
