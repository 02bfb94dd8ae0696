"""PTQ specs, their engine layers, and the torch forward that computes them as the contract does.

A quantized model is the FP torch ViT plus a :data:`QSpec`: per engine layer
(``blocks.{i}.attn.qkv|proj|qk|av``, ``blocks.{i}.mlp.fc1|fc2``) the
per-tensor scales the search found.  Every operand is one ``int<b>`` group
(``uint<b>`` for the softmax output, see ``docs/ptq.md``) with the quantizer
rule ``clip(rint(z / step))`` of :mod:`model.quantizers`; a weight is
quantized by the same rule.

:func:`build_layers` turns a spec into the exported layer objects
(:class:`~model.layers.EngineLinear`, :class:`~model.layers.EngineMatmul`),
and :class:`QModel` runs the torch forward *from those objects*: the integer
codes by the quantizer's rule, the plane products as exact integer matrix
products, ``Y = c * D`` with the layer's own coefficient and fixed-point format
(:func:`model.layers.coefficient_format`), ``real = float32(Y * 2^-F) + bias``.
So its engine products equal the host runtime's by construction; only the
float parts (LayerNorm, softmax, GELU, float layers) are torch's float32.

Patch embedding and the two heads stay float layers (host side, float32).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from model.golden import DEFAULT_WORD_BITS, Encoding, Operand
from model.layers import EngineLinear, EngineMatmul, Layer, WeightGroup, coefficient_format
from model.quantizers import QuantGroup, Quantizer

LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
MATMULS = ("attn.qk", "attn.av")
#: The accumulator width of the default accelerator (``hw.config.DEFAULT.acc_bits``).
DEFAULT_ACC_BITS = 30
MAX_COEF_BITS = 18


def f32(v: float) -> float:
    """``v`` rounded to float32 (scales are float32 values so that the quantizer's
    float32 ``step`` and the float64 ``scale`` of the coefficients are the same number)."""
    return float(np.float32(v))


def engine_layer_names(depth: int) -> list[str]:
    """Every engine layer of a depth-``depth`` model, in forward order."""
    out = []
    for i in range(depth):
        out += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.qk", f"blocks.{i}.attn.av", f"blocks.{i}.attn.proj",
                f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return out


@dataclass(frozen=True)
class ActQ:
    """A per-tensor activation quantizer: ``int<bits>`` (signed) or ``uint<bits>``."""

    bits: int
    step: float
    signed: bool = True

    def __post_init__(self) -> None:
        if not (self.step > 0 and math.isfinite(self.step)):
            raise ValueError(f"step must be a finite positive float, got {self.step}")
        object.__setattr__(self, "step", f32(self.step))

    @property
    def encoding(self) -> Encoding:
        return Encoding("int" if self.signed else "uint", self.bits)

    @property
    def range(self) -> tuple[int, int]:
        return self.encoding.value_range

    @property
    def qmax(self) -> int:
        """Largest code (the step that maps ``max`` onto it is ``max / qmax``)."""
        return self.range[1]

    def quantizer(self) -> Quantizer:
        rule = "int" if self.signed else "uint"
        return Quantizer((QuantGroup(rule, self.encoding, self.step, {"step": self.step}),))


@dataclass(frozen=True)
class LinearSpec:
    """A quantized linear layer: input quantizer, weight bits/step, (corrected) float32 bias."""

    x: ActQ
    w: ActQ
    bias: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class MatmulSpec:
    """A quantized attention product ``x @ y.T`` (Q K^T or A V)."""

    x: ActQ
    y: ActQ


QSpec = dict  # name -> LinearSpec | MatmulSpec


def codes_t(x: torch.Tensor, q: ActQ) -> torch.Tensor:
    """The quantizer rule in torch: ``clip(round(x / step))`` with a float32 division, half to even."""
    lo, hi = q.range
    return torch.clamp(torch.round(x.to(torch.float32) / torch.tensor(q.step, dtype=torch.float32)), lo, hi)


def fake_quant(x: torch.Tensor, q: ActQ) -> torch.Tensor:
    """``codes * step`` in float32 (what the search uses)."""
    return codes_t(x, q) * q.step


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` of integer-valued float tensors, as int64.

    float32 is exact when every partial sum stays below 2^24 (checked from the
    operands' maxima), float64 below 2^53; otherwise it raises.
    """
    bound = float(a.abs().max()) * float(b.abs().max()) * a.shape[-1] if a.numel() and b.numel() else 0.0
    if bound < 2 ** 24:
        return (a.to(torch.float32) @ b.to(torch.float32)).to(torch.int64)
    if bound < 2 ** 53:
        return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int64)
    raise ValueError(f"integer products up to {bound:g} are not exact in float64")


def to_real_t(y: torch.Tensor, frac_bits: int) -> torch.Tensor:
    """:meth:`model.golden.FixedPoint.to_real` in torch: float64 product, rounded once to float32."""
    return (y.to(torch.float64) * 2.0 ** -frac_bits).to(torch.float32)


def fit_coef_bits(x: ActQ, y: ActQ, n: int, out_scale: float, acc_bits: int | None) -> int:
    """The widest coefficient format (<= 18 bits) whose layer fits an ``acc_bits`` accumulator.

    The bound is the accelerator host's (``hw.program.compile_layer``, two
    popcount trees): ``sum over plane pairs |c * w_k * w_j| * n``.  ``None``
    keeps the contract's default 18 bits (fine on the EmulatorBackend).
    """
    if acc_bits is None:
        return MAX_COEF_BITS
    sx = sum(abs(w) for w in x.encoding.plane_weights)
    sy = sum(abs(w) for w in y.encoding.plane_weights)
    for cb in range(MAX_COEF_BITS, 1, -1):
        _, coefs = coefficient_format(np.array([x.step]), np.array([y.step]), out_scale, cb)
        if abs(int(coefs[0, 0])) * n * sx * sy <= (1 << (acc_bits - 1)) - 1:
            return cb
    raise ValueError(f"no coefficient format fits a {acc_bits}-bit accumulator for n={n}, {x.encoding} x {y.encoding}")


def weight_codes(w: np.ndarray, q: ActQ) -> np.ndarray:
    """Integer codes of a float32 weight matrix by the quantizer rule (int64)."""
    return q.quantizer().codes(np.ascontiguousarray(w, dtype=np.float32))[0]


def build_layers(
    model, spec: QSpec, word_bits: int = DEFAULT_WORD_BITS, acc_bits: int | None = DEFAULT_ACC_BITS
) -> dict[str, Layer]:
    """The engine layers of a spec, as :func:`model.export.export_checkpoint` overrides."""
    cfg = model.cfg
    hd = cfg.dim // cfg.heads
    layers: dict[str, Layer] = {}
    for name, s in spec.items():
        i, part = _split(name)
        if isinstance(s, LinearSpec):
            lin = _linear(model, i, part)
            codes = weight_codes(lin.weight.detach().numpy(), s.w)
            cb = fit_coef_bits(s.x, s.w, codes.shape[1], 1.0, acc_bits)
            bias = None if s.bias is None else np.asarray(s.bias, dtype=np.float32).copy()
            layers[name] = EngineLinear(s.x.quantizer(), (WeightGroup(Operand.from_values(codes, s.w.encoding, word_bits), s.w.step),),
                                        bias, cb)
        elif isinstance(s, MatmulSpec):
            out_scale = 1.0 / math.sqrt(hd) if part == "attn.qk" else 1.0
            n = hd if part == "attn.qk" else cfg.tokens
            cb = fit_coef_bits(s.x, s.y, n, out_scale, acc_bits)
            layers[name] = EngineMatmul(s.x.quantizer(), s.y.quantizer(), out_scale, cb)
        else:
            raise TypeError(f"{name}: not a LinearSpec or MatmulSpec: {type(s).__name__}")
    return layers


def _split(name: str) -> tuple[int, str]:
    parts = name.split(".")
    if len(parts) != 4 or parts[0] != "blocks" or ".".join(parts[2:]) not in LINEARS + MATMULS:
        raise ValueError(f"not an engine layer name: {name!r}")
    return int(parts[1]), ".".join(parts[2:])


def _linear(model, i: int, part: str) -> torch.nn.Linear:
    blk = model.blocks[i]
    return {"attn.qkv": blk.attn.qkv, "attn.proj": blk.attn.proj, "mlp.fc1": blk.mlp.fc1, "mlp.fc2": blk.mlp.fc2}[part]


def _quant_params(q: Quantizer) -> tuple[float, int, int]:
    (g,) = q.groups
    if q.offset is not None or g.rule not in ("int", "uint"):
        raise ValueError("QModel runs one int/uint group without offset per operand")
    lo, hi = g.encoding.value_range
    return g.params["step"], lo, hi


def _codes_layer(x: torch.Tensor, q: Quantizer) -> torch.Tensor:
    step, lo, hi = _quant_params(q)
    return torch.clamp(torch.round(x.to(torch.float32) / torch.tensor(np.float32(step))), lo, hi)


class QModel:
    """The torch forward of an FP ViT with some layers replaced by engine layers.

    ``layers`` maps names to :class:`EngineLinear`/:class:`EngineMatmul`; the
    others stay float.  ``fake=True`` replaces the exact integer path by
    float32 fake quantization (codes times step), for quick experiments.
    """

    def __init__(self, model, layers: dict[str, Layer] | None = None, fake: bool = False):
        self.model, self.layers, self.fake = model.eval(), dict(layers or {}), fake
        self._w: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            if isinstance(layer, EngineLinear):
                (wg,) = layer.weights
                self._w[name] = torch.from_numpy(wg.operand.to_values().astype(np.float32))

    # ----------------------------------------------------------- products

    def linear(self, name: str, lin: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        layer = self.layers.get(name)
        if layer is None:
            return F.linear(x, lin.weight, lin.bias)
        (wg,) = layer.weights
        cx, cw = _codes_layer(x, layer.input), self._w[name]
        if self.fake:
            y = (cx * np.float32(layer.input.groups[0].scale)) @ (cw * np.float32(wg.scale)).T
        else:
            fmt, coefs = layer.coefficients
            y = to_real_t(int(coefs[0, 0]) * int_matmul(cx, cw.T), fmt.frac_bits)
        return y if layer.bias is None else y + torch.from_numpy(layer.bias)

    def matmul(self, name: str, x: torch.Tensor, y: torch.Tensor, out_scale: float) -> torch.Tensor:
        """``x @ y^T``-style product of batched per-head tensors: x (..., r, n), y (..., n, c)."""
        layer = self.layers.get(name)
        if layer is None:
            return (x @ y) * out_scale if out_scale != 1.0 else x @ y
        cx, cy = _codes_layer(x, layer.x), _codes_layer(y, layer.y)
        if self.fake:
            return (cx * np.float32(layer.x.groups[0].scale)) @ (cy * np.float32(layer.y.groups[0].scale)) * np.float32(layer.out_scale)
        fmt, coefs = layer.coefficients
        return to_real_t(int(coefs[0, 0]) * int_matmul(cx, cy), fmt.frac_bits)

    # ----------------------------------------------------------- forward

    @torch.no_grad()
    def logits(self, x: torch.Tensor, capture: dict | None = None) -> torch.Tensor:
        """Logits (mean of both heads) of normalised images (B, C, H, W).

        ``capture``, when a dict, receives the FP-or-quantized *inputs* of every
        engine layer: ``name -> x`` for linears, ``name -> (x, y)`` for the
        attention products (Q, K as (B, H, T, hd); A (B, H, T, T), V (B, H, T, hd)),
        and ``blocks.i.attn.out`` / ``blocks.i.mlp.out`` (the branch outputs)
        and ``blocks.i.attn.map`` (the softmax).
        """
        capture = {} if capture is None else capture  # a throwaway dict when no one asked
        m = self.model
        cfg = m.cfg
        b = x.shape[0]
        h_, hd = cfg.heads, cfg.dim // cfg.heads
        seq = F.linear(m.patchify(x), m.patch_embed.weight, m.patch_embed.bias)
        toks = [m.cls_token.expand(b, -1, -1)] + ([m.dist_token.expand(b, -1, -1)] if m.dist_token is not None else [])
        seq = torch.cat(toks + [seq], dim=1) + m.pos_embed
        t = seq.shape[1]

        def heads(z: torch.Tensor) -> torch.Tensor:
            return z.reshape(b, t, h_, hd).transpose(1, 2)

        for i, blk in enumerate(m.blocks):
            p = f"blocks.{i}"
            hin = layer_norm(seq, blk.norm1)
            capture[f"{p}.attn.qkv"] = hin
            qkv = self.linear(f"{p}.attn.qkv", blk.attn.qkv, hin)
            q, k, v = (heads(z) for z in qkv.chunk(3, dim=-1))
            capture[f"{p}.attn.qk"] = (q, k)
            s = self.matmul(f"{p}.attn.qk", q, k.transpose(-2, -1), 1.0 / math.sqrt(hd))
            a = softmax(s)
            capture[f"{p}.attn.av"] = (a, v)
            capture[f"{p}.attn.map"] = a
            o = self.matmul(f"{p}.attn.av", a, v, 1.0).transpose(1, 2).reshape(b, t, cfg.dim)
            capture[f"{p}.attn.proj"] = o
            o = self.linear(f"{p}.attn.proj", blk.attn.proj, o)
            capture[f"{p}.attn.out"] = o
            seq = seq + o
            hin = layer_norm(seq, blk.norm2)
            capture[f"{p}.mlp.fc1"] = hin
            hmid = F.gelu(self.linear(f"{p}.mlp.fc1", blk.mlp.fc1, hin))
            capture[f"{p}.mlp.fc2"] = hmid
            o = self.linear(f"{p}.mlp.fc2", blk.mlp.fc2, hmid)
            capture[f"{p}.mlp.out"] = o
            seq = seq + o
        seq = layer_norm(seq, m.norm)
        z = F.linear(seq[:, 0], m.head.weight, m.head.bias)
        if m.head_dist is not None:
            z = (z + F.linear(seq[:, 1], m.head_dist.weight, m.head_dist.bias)) / 2.0
        return z

    @torch.no_grad()
    def predict(self, x: np.ndarray | torch.Tensor, batch: int = 1000) -> np.ndarray:
        x = torch.as_tensor(x)
        return np.concatenate([self.logits(x[i:i + batch]).argmax(-1).numpy() for i in range(0, len(x), batch)])

    def accuracy(self, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
        return 100.0 * float(np.mean(self.predict(x, batch) == y))


def layer_norm(x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm written as the host runtime writes it (float32)."""
    mean = x.mean(dim=-1, keepdim=True)
    c = x - mean
    var = (c * c).mean(dim=-1, keepdim=True)
    return c / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax written as the host runtime writes it (float32)."""
    e = torch.exp(x - x.amax(dim=-1, keepdim=True))
    return e / e.sum(dim=-1, keepdim=True)


def weight_storage_bits(model, spec: QSpec) -> int:
    """Bits of the engine layers' weights (b bits per weight, 32 per scale)."""
    total = 0
    for name, s in spec.items():
        if isinstance(s, LinearSpec):
            i, part = _split(name)
            total += s.w.bits * _linear(model, i, part).weight.numel() + 32
    return total

