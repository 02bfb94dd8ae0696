"""8-bit engine layers for a low-rank model, and a torch forward that computes them as the contract does.

:func:`quantize` turns each compressed layer of a model from
:func:`model.lowrank.compensate.compress` into model-file layers
(:mod:`model.layers`):

* a :class:`~model.lowrank.svd.LowRankLinear` (merged factors ``A`` (R, in),
  ``B`` (out, R)) becomes a :class:`~model.layers.FactoredLinear` of two
  :class:`~model.layers.EngineLinear` stages: ``x -> A`` (no bias), then the
  float32 intermediate is re-quantized on the host, ``-> B`` plus the bias.
  The residual ``C D`` is merged into the factors (``[B C] [A; D]``, rank
  R), so no third branch is needed;
* a layer left dense becomes one :class:`~model.layers.EngineLinear`.

**Quantizer** (ours: ``model/ptq`` was being written at the same time): one
symmetric per-tensor ``int8`` group for every operand, ``codes =
clip(rint(v / step), -128, 127)`` (:mod:`model.quantizers`' ``int`` rule),
scale = step.  Weights: ``step = max|W| / 127`` (min-max).  Inputs:
``step = q(|x|) / 127`` on the calibration tokens (the training split,
through the *float* low-rank model), with ``q`` the maximum (``clip="max"``)
or a percentile (``clip=99.99``).  Steps are float32 numbers, so the
quantizer's float32 step and the coefficient's float64 scale are the same.
The coefficient format is the widest (<= 18 bits) whose layer fits the
accelerator's ``acc_bits`` accumulator (30 on every preset; ``None``: 18 bits,
for the emulator only), with the accelerator's bound ``|c| * n * (sum |w_k|)^2``.

:class:`EngineForward` is the torch module that replaces the layer in the
ViT: its forward quantizes by the layer's own :class:`~model.quantizers.Quantizer`,
takes the integer product ``Y = c * (x_codes @ w_codes^T)`` exactly
(:func:`model.deploy.integer_product`), and returns ``float32(Y * 2^-F) +
bias``: the host runtime's numbers for the same float32 input, by construction.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn

from model.deploy import integer_product
from model.golden import DEFAULT_WORD_BITS, Encoding, Operand
from model.layers import EngineLinear, FactoredLinear, FloatLinear, Layer, WeightGroup, coefficient_format
from model.lowrank.svd import LowRankLinear, capture_inputs, get_module, linear_names, set_module
from model.quantizers import QuantGroup, Quantizer

INT8 = Encoding("int", 8)
MAX_COEF_BITS = 18
DEFAULT_ACC_BITS = 30
#: iCE40 UP5K on-chip RAM, as the issue states it ("about 1.1 Mbit"): 4 SPRAM x 256 kbit + 30 EBR x 4 kbit = 1144 kbit.
UP5K_BITS = 1_100_000


def f32(v: float) -> float:
    """``v`` rounded to a float32 value (as a Python float)."""
    return float(np.float32(v))


def int8_quantizer(step: float) -> Quantizer:
    """The symmetric per-tensor int8 quantizer of ``step``."""
    step = f32(step)
    return Quantizer((QuantGroup("int", INT8, step, {"step": step}),))


def act_step(x: np.ndarray | torch.Tensor, clip: str | float = "max") -> float:
    """``q(|x|) / 127``: ``q`` the maximum or the ``clip`` percentile."""
    a = np.abs(np.asarray(x.detach() if hasattr(x, "detach") else x, dtype=np.float64)).ravel()
    peak = float(a.max()) if clip == "max" else float(np.percentile(a, float(clip)))
    return max(peak, 1e-12) / 127.0


def coef_bits_for(x_step: float, w_step: float, n: int, acc_bits: int | None) -> int:
    """Widest coefficient format (<= 18 bits) whose int8 x int8 layer fits an ``acc_bits`` accumulator."""
    if acc_bits is None:
        return MAX_COEF_BITS
    s = sum(abs(w) for w in INT8.plane_weights)
    for cb in range(MAX_COEF_BITS, 1, -1):
        _, coefs = coefficient_format(np.array([x_step]), np.array([w_step]), 1.0, cb)
        if abs(int(coefs[0, 0])) * n * s * s <= (1 << (acc_bits - 1)) - 1:
            return cb
    raise ValueError(f"no coefficient format fits a {acc_bits}-bit accumulator for n={n}")


def engine_stage(weight: np.ndarray, bias: np.ndarray | None, x_step: float, word_bits: int = DEFAULT_WORD_BITS,
                 acc_bits: int | None = DEFAULT_ACC_BITS) -> EngineLinear:
    """One int8 x int8 engine layer of a float weight (out, in) with min-max weight step."""
    w = np.ascontiguousarray(weight, dtype=np.float32)
    w_step = f32(max(float(np.abs(w).max()), 1e-12) / 127.0)
    codes = int8_quantizer(w_step).codes(w)[0]
    x_q = int8_quantizer(x_step)
    cb = coef_bits_for(x_q.groups[0].scale, w_step, w.shape[1], acc_bits)
    b = None if bias is None else np.asarray(bias, dtype=np.float32).copy()
    return EngineLinear(x_q, (WeightGroup(Operand.from_values(codes, INT8, word_bits), w_step),), b, cb)


class EngineForward(nn.Module):
    """A model-file linear layer (engine, float or factored) as a torch module, integer-exact on engine stages."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer
        self.act = nn.Identity()
        stages = layer.stages if isinstance(layer, FactoredLinear) else (layer,)
        self._codes = [[w.operand.to_values() for w in s.weights] if isinstance(s, EngineLinear) else None for s in stages]
        self._stages = stages

    @staticmethod
    def stage_output(stage: Layer, x: np.ndarray, w_codes: list[np.ndarray] | None) -> np.ndarray:
        """The contract's output of one stage on float32 rows ``x`` (rows, in)."""
        if isinstance(stage, FloatLinear):
            out = x @ stage.weight.T
            return out if stage.bias is None else out + stage.bias
        fmt, coefs = stage.coefficients
        y = fmt.to_real(integer_product(stage.input.codes(x), w_codes, coefs))
        return y if stage.bias is None else y + stage.bias

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = np.ascontiguousarray(x.detach().numpy().reshape(-1, shape[-1]), dtype=np.float32)
        for stage, codes in zip(self._stages, self._codes):
            h = self.stage_output(stage, h, codes)
        return torch.from_numpy(np.ascontiguousarray(h)).reshape(*shape[:-1], -1)


def quantize(model: nn.Module, calib_x: np.ndarray | torch.Tensor, clip: str | float = "max",
             word_bits: int = DEFAULT_WORD_BITS, acc_bits: int | None = DEFAULT_ACC_BITS) -> tuple[nn.Module, dict[str, Layer]]:
    """The int8 engine layers of a (low-rank) model's compressed layers, and the torch model that runs them.

    Returns ``(qmodel, layers)``: ``layers`` maps each ``blocks.{i}.*`` linear
    to its model-file layer (the ``overrides`` of
    :func:`model.export.export_checkpoint`); ``qmodel`` is a copy of ``model``
    with those layers as :class:`EngineForward` modules (patch embedding,
    heads, attention products and the rest stay float, as the export keeps them).
    """
    names = linear_names(len(model.blocks))
    inputs = capture_inputs(model, torch.as_tensor(calib_x), names)
    layers: dict[str, Layer] = {}
    for n in names:
        mod = get_module(model, n)
        x = inputs[n]
        bias = None if mod.bias is None else mod.bias.detach().numpy()
        if isinstance(mod, LowRankLinear):
            a, b = mod.merged()
            s0 = engine_stage(a.numpy(), None, act_step(x, clip), word_bits, acc_bits)
            z = EngineForward.stage_output(s0, np.ascontiguousarray(x.numpy(), dtype=np.float32), [s0.weights[0].operand.to_values()])
            s1 = engine_stage(b.numpy(), bias, act_step(z, clip), word_bits, acc_bits)
            layers[n] = FactoredLinear((s0, s1))
        else:
            layers[n] = engine_stage(mod.weight.detach().numpy(), bias, act_step(x, clip), word_bits, acc_bits)
    qmodel = copy.deepcopy(model).eval()
    for n, layer in layers.items():
        set_module(qmodel, n, EngineForward(layer))
    return qmodel, layers


def stage_list(layer: Layer) -> tuple[Layer, ...]:
    """The linear stages of a layer (one, or a factored layer's stages)."""
    return layer.stages if isinstance(layer, FactoredLinear) else (layer,)


def onchip_bits(layers: dict[str, Layer], scale_bits: int = 32) -> dict:
    """Weight bits the engine keeps resident: planes (bits per weight x weights) plus scales.

    Per engine stage: every weight group's planes (``len(planes) * out * in``
    bits, unpadded) plus ``scale_bits`` per weight scale and per input-group
    scale.  ``padded_plane_bits[w]`` counts packed words of ``w`` bits instead
    (each row of n elements takes ``ceil(n / w)`` words: the second factor of
    a rank-R layer has rows of R elements).  Float stages are host-side and
    counted in ``host_weights``.
    """
    planes = scales = host = 0
    padded = {w: 0 for w in (8, 16, 32, 64)}
    for layer in layers.values():
        for s in stage_list(layer):
            if isinstance(s, EngineLinear):
                for w in s.weights:
                    op = w.operand
                    planes += len(op.planes) * op.rows * op.n
                    for wb in padded:
                        padded[wb] += len(op.planes) * op.rows * -(-op.n // wb) * wb
                scales += scale_bits * (len(s.weights) + len(s.input.groups))
            else:
                host += s.weight.size
    return {"plane_bits": planes, "scale_bits": scales, "total_bits": planes + scales,
            "padded_plane_bits": padded, "host_weights": host}
