"""Run an exported ViT layer by layer on any Backend.

The host computes patch extraction, LayerNorm, softmax, GELU, the residual
adds and every float layer in float32; every engine layer (see
:mod:`model.layers`) is quantized here by its :class:`~model.quantizers.Quantizer`,
packed, and sent to the Backend, which returns the integer ``Y`` that the
host turns into float32 by the layer's fixed-point format.  Weights are loaded
into the Backend once, when the Runtime is made; only activations travel.

The graph, per image (``T`` tokens, ``dim`` channels)::

    seq = [cls, dist, patch_embed(patches)] + pos_embed
    for each block:
        q, k, v = split(qkv(norm1(seq)))           # heads are channel slices
        s_h = qk(q_h, k_h)                          # out_scale folds 1/sqrt(d)
        o_h = av(softmax(s_h), v_h)                 # av's x quantizer sees all heads
        seq += proj(o);  seq += fc2(clip(gelu(fc1(norm2(seq)))))
    logits = mean(head(norm(seq)[0]), head_dist(norm(seq)[1]))
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf

from typing import Sequence

from host.backend import Backend
from model.deploy import Product, linear_output, matmul_output
from model.golden import Operand
from model.layers import EngineLinear, EngineMatmul, FactoredLinear, FloatLinear, Layer
from model.modelfile import Model


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis in float32."""
    mean = x.mean(axis=-1, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True, dtype=np.float32)
    return centered / np.sqrt(var + np.float32(eps)) * weight + bias


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in float32."""
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def gelu(x: np.ndarray) -> np.ndarray:
    """The exact (erf) GELU in float32."""
    return (np.float32(0.5) * x * (np.float32(1.0) + erf(x / np.float32(np.sqrt(2.0))).astype(np.float32))).astype(np.float32)


def check_images(model: Model, images: np.ndarray, batch: bool = True) -> np.ndarray:
    """``images`` (B, C, H, W), or one image (C, H, W) when not ``batch``, as an array, or a ValueError.

    Raw pixels must be real numbers between 0 and the model's ``input_divisor``
    (the range its preprocessing expects): NaN, infinities and out-of-range
    values would otherwise give confident predictions, and a wrong shape a
    numpy reshape error that does not say what was expected.
    """
    arch, divisor = model.architecture, model.preprocessing.input_divisor
    expected = (arch.in_channels, arch.image_size, arch.image_size)
    a = np.asarray(images)
    if a.shape[int(batch):] != expected or a.ndim != len(expected) + int(batch):
        want = f"(B, C, H, W) = (B, {', '.join(map(str, expected))})" if batch else f"(C, H, W) = {expected}"
        raise ValueError(f"{'images' if batch else 'an image'} must have shape {want}, got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise ValueError(f"images must hold real numbers, got dtype {a.dtype}")
    lo, hi = min(0.0, divisor), max(0.0, divisor)
    inside = (a >= lo) & (a <= hi)  # NaN is never inside
    if not np.all(inside):
        bad = a[~inside].flat[0]
        raise ValueError(f"raw pixel values must be finite and in [{lo:g}, {hi:g}] (the model's input_divisor), got {bad}")
    return a


def patchify(x: np.ndarray, patch: int) -> np.ndarray:
    """(C, H, W) to (patches, C*patch*patch), patches row-major, each flattened as (C, p, p)."""
    c, h, w = x.shape
    grid = x.reshape(c, h // patch, patch, w // patch, patch)
    return grid.transpose(1, 3, 0, 2, 4).reshape((h // patch) * (w // patch), c * patch * patch)


class Runtime:
    """Executes a :class:`~model.modelfile.Model` on a :class:`~host.backend.Backend`.

    ``trace``, when a dict, collects each engine layer's integer results
    (name -> list of arrays, one per backend call) for comparisons.
    """

    def __init__(self, model: Model, backend: Backend):
        self.model, self.backend = model, backend
        self.trace: dict[str, list[np.ndarray]] | None = None
        for name, layer in model.layers.items():
            stages = {f"{name}.stage{j}": s for j, s in enumerate(layer.stages)} if isinstance(layer, FactoredLinear) else {name: layer}
            for slot, stage in stages.items():
                if isinstance(stage, EngineLinear):
                    backend.load(f"{slot}.w", [w.operand for w in stage.weights])

    # ------------------------------------------------------------------ layers

    def _product(self, name: str, resident: bool) -> Product:
        """Engine products of layer ``name`` on the backend (weights resident when ``resident``)."""
        def product(xs: Sequence[Operand], ys: Sequence[Operand], coefs: np.ndarray) -> np.ndarray:
            self.backend.load(f"{name}.x", xs)
            if not resident:
                self.backend.load(f"{name}.y", ys)
            y = self.backend.layer(f"{name}.x", f"{name}.w" if resident else f"{name}.y", coefs)
            if self.trace is not None:
                self.trace.setdefault(name, []).append(y)
            return y
        return product

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """Apply linear layer ``name`` to rows ``x`` (rows, in).

        A :class:`~model.layers.FactoredLinear` runs its stages in order as
        the linear layers ``<name>.stage<j>`` (engine stages re-quantize their
        float32 input here, on the host).
        """
        layer = self.model.layers[name]
        if isinstance(layer, FactoredLinear):
            for j, stage in enumerate(layer.stages):
                x = self._linear(f"{name}.stage{j}", stage, x)
            return x
        return self._linear(name, layer, x)

    def _linear(self, name: str, layer: Layer, x: np.ndarray) -> np.ndarray:
        if isinstance(layer, EngineLinear):
            return linear_output(layer, x, self.model.word_bits, self._product(name, resident=True))
        assert isinstance(layer, FloatLinear)
        out = x @ layer.weight.T
        return out if layer.bias is None else out + layer.bias

    def matmul(self, name: str, x: np.ndarray, y: np.ndarray, x_heads: bool) -> np.ndarray:
        """Per-head ``x_h @ y_h.T`` (see :func:`model.deploy.head_operands`): (heads, T, cols)."""
        layer: Layer = self.model.layers[name]
        heads = self.model.architecture.heads
        if isinstance(layer, EngineMatmul):
            return matmul_output(layer, x, y, heads, x_heads, self.model.word_bits, self._product(name, resident=False))
        hd = y.shape[-1] // heads
        y_heads = y.reshape(len(y), heads, hd).transpose(1, 0, 2)                 # (heads, T, hd)
        x_heads_ = x if x_heads else x.reshape(len(x), heads, hd).transpose(1, 0, 2)
        if x_heads:
            return np.float32(layer.out_scale) * (x_heads_ @ y_heads)
        return np.float32(layer.out_scale) * (x_heads_ @ y_heads.transpose(0, 2, 1))

    # ------------------------------------------------------------------ model

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Logits (float32, num_classes) of one raw image (C, H, W)."""
        m, arch = self.model, self.model.architecture
        t = m.tensors
        x = m.preprocessing.apply(check_images(m, image, batch=False))
        seq = [t["cls_token"]] + ([t["dist_token"]] if arch.distillation_token else [])
        seq = np.concatenate(seq + [self.linear("patch_embed", patchify(x, arch.patch_size))]) + t["pos_embed"]
        d = arch.dim
        for i in range(arch.depth):
            p = f"blocks.{i}"
            h = layer_norm(seq, t[f"{p}.norm1.weight"], t[f"{p}.norm1.bias"], arch.ln_eps)
            qkv = self.linear(f"{p}.attn.qkv", h)
            q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
            attn = softmax(self.matmul(f"{p}.attn.qk", q, k, x_heads=False))
            o = self.matmul(f"{p}.attn.av", attn, v, x_heads=True)          # (heads, T, hd)
            seq = seq + self.linear(f"{p}.attn.proj", o.transpose(1, 0, 2).reshape(len(seq), d))
            h = gelu(self.linear(f"{p}.mlp.fc1", layer_norm(seq, t[f"{p}.norm2.weight"], t[f"{p}.norm2.bias"], arch.ln_eps)))
            if arch.mlp_clip is not None:
                h = np.clip(h, -np.float32(arch.mlp_clip), np.float32(arch.mlp_clip))
            seq = seq + self.linear(f"{p}.mlp.fc2", h)
        seq = layer_norm(seq, t["norm.weight"], t["norm.bias"], arch.ln_eps)
        logits = self.linear("head", seq[:1])[0]
        if arch.distillation_token:
            logits = (logits + self.linear("head_dist", seq[1:2])[0]) / np.float32(2.0)
        return logits

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class predictions for a batch of raw images (B, C, H, W)."""
        return np.array([int(np.argmax(self.forward(img))) for img in check_images(self.model, images)])
