"""The layer kinds of an exported model, and how each derives its engine numbers.

An *engine* layer is one that a Backend computes: its operands are packed
planes in groups with real scales, and its integer coefficients, fixed-point
format and accumulator width all derive from those scales by the numeric
contract (:mod:`model.golden`), so the file stores the scales only.  A
*float* layer runs on the host in float32.

Orientation: a layer computes ``out[r, c] = sum_i x[r, i] * y[c, i]``: for a
linear layer ``x`` is the input (tokens, in) and ``y`` the weight (out, in);
for ``Q K^T`` they are Q and K; for ``A V`` they are A and ``V^T``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Union

import numpy as np

from model import golden
from model.golden import FixedPoint, Operand
from model.quantizers import Quantizer

DEFAULT_COEF_BITS = 18


def coefficient_format(x_scales: np.ndarray, y_scales: np.ndarray, out_scale: float, coef_bits: int) -> tuple[FixedPoint, np.ndarray]:
    """The fixed-point format and integer coefficients ``c_gh`` of a layer."""
    real = out_scale * np.outer(x_scales, y_scales)
    fmt = FixedPoint.for_scales(real, coef_bits)
    return fmt, fmt.to_fixed(real)


@dataclass(frozen=True)
class WeightGroup:
    """A resident weight operand (out, in) and its real scale."""

    operand: Operand
    scale: float


@dataclass(frozen=True)
class EngineLinear:
    """``y = to_real(sum c_gh D_gh) + bias`` with quantized input and weight planes."""

    input: Quantizer
    weights: tuple[WeightGroup, ...]
    bias: np.ndarray | None = None
    coef_bits: int = DEFAULT_COEF_BITS

    @property
    def in_features(self) -> int:
        """Length of each input row."""
        return self.weights[0].operand.n

    @property
    def out_features(self) -> int:
        """Number of weight rows."""
        return self.weights[0].operand.rows

    @cached_property
    def coefficients(self) -> tuple[FixedPoint, np.ndarray]:
        """``(format, coefs)`` for input groups x weight groups."""
        return coefficient_format(self.input.scales, np.array([w.scale for w in self.weights]), 1.0, self.coef_bits)

    @cached_property
    def accumulator_bits(self) -> int:
        """Width of the layer accumulator, from the contract; ValueError past what is computed exactly."""
        ex, ey = [g.encoding for g in self.input.groups], [w.operand.encoding for w in self.weights]
        golden.check_accumulator(self.in_features, ex, ey, self.coefficients[1])
        return golden.layer_accumulator_bits(self.in_features, ex, ey, self.coefficients[1])


@dataclass(frozen=True)
class FloatLinear:
    """``y = x @ weight.T + bias`` in float32 on the host."""

    weight: np.ndarray
    bias: np.ndarray | None = None

    @property
    def in_features(self) -> int:
        """Length of each input row."""
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        """Number of outputs."""
        return self.weight.shape[0]


@dataclass(frozen=True)
class EngineMatmul:
    """``out_scale * x @ y.T`` of two quantized activations, on the engine."""

    x: Quantizer
    y: Quantizer
    out_scale: float = 1.0
    coef_bits: int = DEFAULT_COEF_BITS

    @cached_property
    def coefficients(self) -> tuple[FixedPoint, np.ndarray]:
        """``(format, coefs)`` for x groups x y groups."""
        return coefficient_format(self.x.scales, self.y.scales, self.out_scale, self.coef_bits)

    def accumulator_bits(self, n: int) -> int:
        """Width of the accumulator for rows of length ``n``; ValueError past what is computed exactly."""
        ex, ey = [g.encoding for g in self.x.groups], [g.encoding for g in self.y.groups]
        golden.check_accumulator(n, ex, ey, self.coefficients[1])
        return golden.layer_accumulator_bits(n, ex, ey, self.coefficients[1])


@dataclass(frozen=True)
class FloatMatmul:
    """``out_scale * x @ y.T`` in float32 on the host."""

    out_scale: float = 1.0


@dataclass(frozen=True)
class FactoredLinear:
    """A linear layer as a chain of at least two linear stages, ``x -> stages[0] -> stages[1] -> ...``.

    Each stage is an :class:`EngineLinear` or a :class:`FloatLinear` of its own
    shape; stage j+1 takes stage j's float32 output (an engine stage
    re-quantizes it on the host by its input quantizer).  A low-rank layer is
    two stages, (in -> r) then (r -> out) with the bias.
    """

    stages: tuple[Union[EngineLinear, FloatLinear], ...]

    def __post_init__(self) -> None:
        if not isinstance(self.stages, tuple) or len(self.stages) < 2:
            raise ValueError("a factored linear needs a tuple of at least two stages")
        for j, s in enumerate(self.stages):
            if not isinstance(s, (EngineLinear, FloatLinear)):
                raise TypeError(f"stage {j} must be an EngineLinear or FloatLinear, got {type(s).__name__}")
        for j in range(1, len(self.stages)):
            if self.stages[j].in_features != self.stages[j - 1].out_features:
                raise ValueError(f"stage {j} takes {self.stages[j].in_features} inputs, stage {j - 1} gives "
                                 f"{self.stages[j - 1].out_features}")

    @property
    def in_features(self) -> int:
        """Length of each input row."""
        return self.stages[0].in_features

    @property
    def out_features(self) -> int:
        """Number of outputs."""
        return self.stages[-1].out_features


Layer = Union[EngineLinear, FloatLinear, EngineMatmul, FloatMatmul, FactoredLinear]
