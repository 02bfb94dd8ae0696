"""Engine layers from deploy parameters, and the integer products both sides share.

The torch model's eval forward (``model.vit``) and the host runtime
(``host.runtime``) compute every engine product with the functions here, so
the two agree on the integers by construction: quantize by the contract's
rules (:mod:`model.quantizers`), pack, take ``Y = sum c_gh D_gh``
(:mod:`model.golden`), convert with the layer's fixed-point format.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from model import golden
from model.golden import DEFAULT_WORD_BITS, Encoding, Operand
from model.layers import EngineLinear, EngineMatmul, WeightGroup
from model.quantizers import QuantGroup, Quantizer

if TYPE_CHECKING:
    from model.modelfile import Model

#: ``product(groups_x, groups_y, coefs) -> Y``: the golden model, or a Backend call.
Product = Callable[[Sequence[Operand], Sequence[Operand], np.ndarray], np.ndarray]


def _array(t: object) -> np.ndarray:
    """A float32 numpy copy of a tensor or array."""
    if hasattr(t, "detach"):
        t = t.detach().cpu().numpy()
    return np.asarray(t, dtype=np.float32).copy()


def quantizer(params: dict) -> Quantizer:
    """A deploy-parameter dict (a torch quantizer's ``deploy_params()``) as a Quantizer."""
    groups = tuple(
        QuantGroup(g["rule"], Encoding.parse(g["encoding"]), float(g["scale"]), {k: float(v) for k, v in g["params"].items()})
        for g in params["groups"]
    )
    offset = params.get("offset")
    return Quantizer(groups, None if offset is None else _array(offset))


def engine_linear(spec: dict, word_bits: int = DEFAULT_WORD_BITS) -> EngineLinear:
    """A binary linear layer from its deploy spec (``weight_signs``, ``weight_scale``, ``bias``, ``input``)."""
    signs = np.asarray(_array(spec["weight_signs"]), dtype=np.int64)
    weights = (WeightGroup(Operand.from_values(signs, "bipolar", word_bits), float(spec["weight_scale"])),)
    return EngineLinear(quantizer(spec["input"]), weights, _array(spec["bias"]))


def linear_output(layer: EngineLinear, x: np.ndarray, word_bits: int, product: Product = golden.layer_output) -> np.ndarray:
    """``layer`` applied to rows ``x`` (rows, in): float32 (rows, out)."""
    fmt, coefs = layer.coefficients
    y = fmt.to_real(product(layer.input.operands(x, word_bits), [w.operand for w in layer.weights], coefs))
    return y if layer.bias is None else y + layer.bias


def head_operands(
    layer: EngineMatmul, x: np.ndarray, y: np.ndarray, heads: int, x_heads: bool, word_bits: int
) -> list[tuple[list[Operand], list[Operand]]]:
    """Per head, the packed x and y groups of an attention product.

    ``x`` is (T, dim), or with ``x_heads`` (heads, T, T); ``y`` is (T, dim).
    The quantizers see the whole tensors (their offsets are per channel or per
    head and position); head h owns channels ``h*dim/heads .. (h+1)*dim/heads``.
    For ``Q K^T`` the y rows are K's tokens; for ``A V`` (``x_heads``) they are
    V's channels, so the product is ``A_h @ V_h``.
    """
    hd = y.shape[-1] // heads
    x_codes, y_codes = layer.x.codes(x), layer.y.codes(y)
    out = []
    for h in range(heads):
        cols = slice(h * hd, (h + 1) * hd)
        xs = [Operand.from_values(c[h] if x_heads else c[:, cols], g.encoding, word_bits) for c, g in zip(x_codes, layer.x.groups)]
        ys = [Operand.from_values(np.ascontiguousarray(c[:, cols].T if x_heads else c[:, cols]), g.encoding, word_bits)
              for c, g in zip(y_codes, layer.y.groups)]
        out.append((xs, ys))
    return out


def matmul_output(
    layer: EngineMatmul, x: np.ndarray, y: np.ndarray, heads: int, x_heads: bool, word_bits: int,
    product: Product = golden.layer_output,
) -> np.ndarray:
    """An attention product on the engine, per head: float32 (heads, T, cols)."""
    fmt, coefs = layer.coefficients
    return np.stack([fmt.to_real(product(xs, ys, coefs)) for xs, ys in head_operands(layer, x, y, heads, x_heads, word_bits)])


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
    """(C, H, W) to (patches, C*patch*patch), patches row-major, each flattened as (C, p, p).

    Leading axes, e.g. (B, C, H, W), are kept: (B, patches, C*patch*patch).
    """
    *lead, c, h, w = x.shape
    grid = x.reshape(*lead, c, h // patch, patch, w // patch, patch)
    k = len(lead)
    order = tuple(range(k)) + tuple(k + a for a in (1, 3, 0, 2, 4))
    return grid.transpose(order).reshape(*lead, (h // patch) * (w // patch), c * patch * patch)


def integer_product(x_codes: Sequence[np.ndarray], y_codes: Sequence[np.ndarray], coefs: np.ndarray) -> np.ndarray:
    """``Y = sum_gh coefs[g, h] * x_g @ y_h^T`` on unpacked integer codes.

    ``x_g`` is (..., rows, n), ``y_h`` (..., cols, n), batched alike. The
    contract's integers by plain integer matrix products: an implementation
    independent of the packed popcount path, used by the torch deploy forward.
    The float64 matmul is exact because every partial sum is an integer below
    2^53, which is checked.
    """
    total = np.zeros((), dtype=np.int64)
    for g, xc in enumerate(x_codes):
        for h, yc in enumerate(y_codes):
            bound = int(np.abs(xc).max(initial=0)) * int(np.abs(yc).max(initial=0)) * xc.shape[-1]
            if bound >= 1 << 53:
                raise ValueError(f"products up to {bound} are not exact in float64")
            d = (xc.astype(np.float64) @ np.swapaxes(yc, -1, -2).astype(np.float64)).astype(np.int64)
            total = total + int(coefs[g, h]) * d
    return total
