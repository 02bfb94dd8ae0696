"""Run an exported ViT layer by layer on any Backend.

The host computes patch extraction, LayerNorm, softmax, GELU, the residual
adds and every float layer in float32; every engine layer (see
:mod:`model.layers`) is quantized here by its :class:`~model.quantizers.Quantizer`,
packed, and sent to the Backend, which returns the integer ``Y`` that the
host turns into float32 by the layer's fixed-point format.  Weights are loaded
into the Backend once, when the Runtime is made; only activations travel.

A batch of images runs at once (:meth:`Runtime.logits`): the float steps
act on ``(B, T, dim)`` arrays (numpy's batched matmul gives each image the
same BLAS call as alone), an engine linear layer is one backend layer over
the rows of every image, and an attention product one
:meth:`~host.backend.Backend.layers` call over every image and head.  The
integers are those of one image at a time (tested).

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

from host.backend import Backend, OperandStack
from model.deploy import Product, check_images, linear_output, patchify
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


class Runtime:
    """Executes a :class:`~model.modelfile.Model` on a :class:`~host.backend.Backend`.

    ``trace``, when a dict, collects each engine layer's integer results
    (name -> list of arrays, one per image and head, in the order a run of
    one image at a time would make its backend calls) for comparisons.
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

    def _record(self, name: str, items: Sequence[np.ndarray]) -> None:
        if self.trace is not None:
            self.trace.setdefault(name, []).extend(items)

    def _product(self, name: str, images: int) -> Product:
        """Engine products of linear layer ``name`` (resident weights) on the rows of ``images`` images."""
        def product(xs: Sequence[Operand], ws: Sequence[Operand], coefs: np.ndarray) -> np.ndarray:
            self.backend.load(f"{name}.x", xs)
            y = self.backend.layer(f"{name}.x", f"{name}.w", coefs)
            self._record(name, np.split(y, images))
            return y
        return product

    def linear(self, name: str, x: np.ndarray) -> np.ndarray:
        """Apply linear layer ``name`` to rows ``x`` (rows, in), or (B, rows, in) for a batch.

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
            if x.ndim == 2:
                return linear_output(layer, x, self.model.word_bits, self._product(name, 1))
            offset = layer.input.offset
            if offset is not None and offset.ndim > 1:  # a per-row offset: the rows of each image apart
                return np.stack([self._linear(name, layer, xi) for xi in x])
            rows = x.reshape(-1, x.shape[-1])
            y = linear_output(layer, rows, self.model.word_bits, self._product(name, len(x)))
            return y.reshape(*x.shape[:-1], y.shape[-1])
        assert isinstance(layer, FloatLinear)
        out = x @ layer.weight.T
        return out if layer.bias is None else out + layer.bias

    def matmul(self, name: str, x: np.ndarray, y: np.ndarray, x_heads: bool) -> np.ndarray:
        """Per-head ``x_h @ y_h.T`` (see :func:`model.deploy.head_operands`): (heads, T, cols).

        ``x`` is (T, dim), or with ``x_heads`` (heads, T, T); ``y`` is (T,
        dim).  With a leading batch axis on both, the result is (B, heads, T, cols).
        """
        if y.ndim == 2:
            return self.matmul(name, x[None], y[None], x_heads)[0]
        layer: Layer = self.model.layers[name]
        heads = self.model.architecture.heads
        hd = y.shape[-1] // heads

        def to_heads(c: np.ndarray) -> np.ndarray:
            """(B, T, dim) to (B, heads, T, hd)."""
            return c.reshape(*c.shape[:-1], heads, hd).swapaxes(-2, -3)

        if isinstance(layer, EngineMatmul):
            fmt, coefs = layer.coefficients
            wb = self.model.word_bits
            xs = [OperandStack.from_values(c if x_heads else to_heads(c), g.encoding, wb)
                  for c, g in zip(layer.x.codes(x), layer.x.groups)]
            ys = [OperandStack.from_values(to_heads(c).swapaxes(-1, -2) if x_heads else to_heads(c), g.encoding, wb)
                  for c, g in zip(layer.y.codes(y), layer.y.groups)]
            out = self.backend.layers(f"{name}.x", xs, f"{name}.y", ys, coefs)
            self._record(name, [out[idx] for idx in np.ndindex(out.shape[:2])])
            return fmt.to_real(out)
        y_heads = to_heads(y)
        x_heads_ = x if x_heads else to_heads(x)
        if x_heads:
            return np.float32(layer.out_scale) * (x_heads_ @ y_heads)
        return np.float32(layer.out_scale) * (x_heads_ @ y_heads.swapaxes(-1, -2))

    # ------------------------------------------------------------------ model

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Logits (float32, (B, num_classes)) of raw images (B, C, H, W), the batch at once."""
        m, arch = self.model, self.model.architecture
        t = m.tensors
        x = m.preprocessing.apply(check_images(m, images))
        b = len(x)
        seq = [t["cls_token"]] + ([t["dist_token"]] if arch.distillation_token else [])
        seq = [np.broadcast_to(s, (b, *s.shape)) for s in seq]
        seq = np.concatenate(seq + [self.linear("patch_embed", patchify(x, arch.patch_size))], axis=1) + t["pos_embed"]
        d, tokens = arch.dim, seq.shape[1]
        for i in range(arch.depth):
            p = f"blocks.{i}"
            h = layer_norm(seq, t[f"{p}.norm1.weight"], t[f"{p}.norm1.bias"], arch.ln_eps)
            qkv = self.linear(f"{p}.attn.qkv", h)
            q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
            attn = softmax(self.matmul(f"{p}.attn.qk", q, k, x_heads=False))
            o = self.matmul(f"{p}.attn.av", attn, v, x_heads=True)          # (B, heads, T, hd)
            seq = seq + self.linear(f"{p}.attn.proj", o.transpose(0, 2, 1, 3).reshape(b, tokens, d))
            h = gelu(self.linear(f"{p}.mlp.fc1", layer_norm(seq, t[f"{p}.norm2.weight"], t[f"{p}.norm2.bias"], arch.ln_eps)))
            if arch.mlp_clip is not None:
                h = np.clip(h, -np.float32(arch.mlp_clip), np.float32(arch.mlp_clip))
            seq = seq + self.linear(f"{p}.mlp.fc2", h)
        seq = layer_norm(seq, t["norm.weight"], t["norm.bias"], arch.ln_eps)
        logits = self.linear("head", seq[:, :1])[:, 0]
        if arch.distillation_token:
            logits = (logits + self.linear("head_dist", seq[:, 1:2])[:, 0]) / np.float32(2.0)
        return logits

    def forward(self, image: np.ndarray) -> np.ndarray:
        """Logits (float32, num_classes) of one raw image (C, H, W)."""
        return self.logits(check_images(self.model, image, batch=False)[None])[0]

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class predictions for a batch of raw images (B, C, H, W), the batch at once."""
        return np.argmax(self.logits(images), axis=-1)
