"""Host-side activation quantizers: float32 tensors to integer codes per group.

These rules are part of the numeric contract: the host runtime, the torch
deployment forward and the exporters use the same rules with the same float32
arithmetic.  A :class:`Quantizer` turns one float tensor ``x`` into one or
more *groups* of integer codes, each with an encoding and a real scale, so
that ``x ~ sum_g scale_g * codes_g``.  First ``z = x + offset`` (float32; the
offset broadcasts against ``x``, e.g. GSB's learnable per-channel bias), then
per group:

========  ==========  =========================================================
rule      encoding    codes
========  ==========  =========================================================
sign      bipolar     ``+1 if z >= 0 else -1``
step      unipolar    ``1 if z >= threshold else 0``
ternary   ternary     ``+1 if z >= hi, -1 if z <= lo, else 0`` (``lo < hi``)
int       int<b>      ``clip(rint(z / step), -2^(b-1), 2^(b-1)-1)``
uint      uint<b>     ``clip(rint(z / step), 0, 2^b - 1)``
========  ==========  =========================================================

``rint`` rounds half to even, like ``torch.round``; ``z / step`` is a float32
division.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from model.golden import Encoding, Operand

RULE_ENCODINGS = {"sign": "bipolar", "step": "unipolar", "ternary": "ternary", "int": "int", "uint": "uint"}
RULE_PARAMS = {"sign": (), "step": ("threshold",), "ternary": ("lo", "hi"), "int": ("step",), "uint": ("step",)}


@dataclass(frozen=True)
class QuantGroup:
    """One group of a quantizer: a rule, its encoding, parameters and real scale."""

    rule: str
    encoding: Encoding
    scale: float
    params: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rule not in RULE_ENCODINGS:
            raise ValueError(f"rule must be one of {sorted(RULE_ENCODINGS)}, got {self.rule!r}")
        if self.encoding.name != RULE_ENCODINGS[self.rule]:
            raise ValueError(f"rule {self.rule!r} needs a {RULE_ENCODINGS[self.rule]} encoding, got {self.encoding}")
        if set(self.params) != set(RULE_PARAMS[self.rule]):
            raise ValueError(f"rule {self.rule!r} takes params {RULE_PARAMS[self.rule]}, got {tuple(self.params)}")
        values = [self.scale, *self.params.values()]
        if not all(isinstance(v, float) and np.isfinite(v) for v in values):
            raise ValueError(f"scale and params of rule {self.rule!r} must be finite floats")
        if self.rule == "ternary" and not self.params["lo"] < self.params["hi"]:
            raise ValueError(f"ternary needs lo < hi, got lo={self.params['lo']} hi={self.params['hi']}")
        if self.rule in ("int", "uint") and not self.params["step"] > 0:
            raise ValueError(f"{self.rule} needs step > 0, got {self.params['step']}")

    def codes(self, z: np.ndarray) -> np.ndarray:
        """Integer codes (int64) of the offset input ``z`` (float32)."""
        p = {k: np.float32(v) for k, v in self.params.items()}
        if self.rule == "sign":
            return np.where(z >= 0, 1, -1).astype(np.int64)
        if self.rule == "step":
            return (z >= p["threshold"]).astype(np.int64)
        if self.rule == "ternary":
            return np.where(z >= p["hi"], 1, np.where(z <= p["lo"], -1, 0)).astype(np.int64)
        lo, hi = self.encoding.value_range
        return np.clip(np.rint(z / p["step"]), lo, hi).astype(np.int64)


@dataclass(frozen=True)
class Quantizer:
    """Float32 tensor to superposed integer groups; see the module docstring."""

    groups: tuple[QuantGroup, ...]
    offset: np.ndarray | None = None

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("a Quantizer needs at least one group")
        if self.offset is not None and self.offset.dtype != np.float32:
            raise TypeError(f"offset must be float32, got {self.offset.dtype}")

    @property
    def scales(self) -> np.ndarray:
        """The groups' real scales (float64)."""
        return np.array([g.scale for g in self.groups], dtype=np.float64)

    def codes(self, x: np.ndarray) -> list[np.ndarray]:
        """Integer codes of every group for the float32 tensor ``x``."""
        if x.dtype != np.float32:
            raise TypeError(f"x must be float32, got {x.dtype}")
        z = x if self.offset is None else x + self.offset
        return [g.codes(z) for g in self.groups]

    def dequantize(self, x: np.ndarray) -> np.ndarray:
        """``sum_g scale_g * codes_g`` in float64: what the engine multiplies."""
        return sum(g.scale * c for g, c in zip(self.groups, self.codes(x)))

    def operands(self, x: np.ndarray, word_bits: int) -> list[Operand]:
        """Pack the codes of a 2-D ``x`` (rows, n) into one Operand per group."""
        return [Operand.from_values(c, g.encoding, word_bits) for g, c in zip(self.groups, self.codes(x))]
