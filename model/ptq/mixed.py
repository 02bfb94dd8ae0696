"""Mixed precision: one bit-width per attention block and per MLP block, by nuclear-norm sensitivity.

Sensitivity of block k at b bits (Liu et al. 2021; ``docs/ptq.md``):
``Omega_k(b) = N_k * E_k(b)`` where

* ``N_k`` is the nuclear norm of the block's FP *attention map* (attention
  block: mean over calibration images and heads of ``||softmax(QK^T/sqrt d)||_*``)
  or of its FP *output feature* (MLP block: mean over images of ``||fc2 out||_*``,
  tokens x dim): more diverse features, more sensitive;
* ``E_k(b)`` is the quantization error of the block's output (the residual
  branch: ``proj`` output, or ``fc2`` output), mean over images of
  ``||out_q - out||_F^2``, with only this block quantized at ``b`` bits (weights
  and inputs of all its engine layers, with the steps searched for ``b`` bits)
  and FP input.

Among the assignments whose weight storage meets the budget (mean bits per
engine weight ``<= budget``), the one with the least ``sum_k Omega_k(b_k)``
(exhaustive: 3^8 assignments for depth 4).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from model.ptq.quant import QSpec, _linear, _split, build_layers
from model.ptq.search import capture

BLOCK_LAYERS = {"attn": ("attn.qkv", "attn.qk", "attn.av", "attn.proj"), "mlp": ("mlp.fc1", "mlp.fc2")}


def blocks(depth: int) -> list[str]:
    """Block names in order: ``blocks.i.attn``, ``blocks.i.mlp``."""
    return [f"blocks.{i}.{kind}" for i in range(depth) for kind in ("attn", "mlp")]


def block_layers(block: str) -> list[str]:
    prefix, kind = block.rsplit(".", 1)
    return [f"{prefix}.{part}" for part in BLOCK_LAYERS[kind]]


def block_weights(model, block: str) -> int:
    """Number of engine weights of a block."""
    total = 0
    for name in block_layers(block):
        i, part = _split(name)
        if part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            total += _linear(model, i, part).weight.numel()
    return total


@torch.no_grad()
def nuclear_norms(model, fp_cap: dict) -> dict[str, float]:
    """``N_k`` of every block from the FP calibration capture."""
    out = {}
    for block in blocks(len(model.blocks)):
        key = f"{block}.map" if block.endswith("attn") else f"{block}.out"
        t = fp_cap[key].to(torch.float64)
        out[block] = float(torch.linalg.matrix_norm(t, ord="nuc").mean())
    return out


@torch.no_grad()
def sensitivities(model, calib_x: np.ndarray, specs: dict[int, QSpec], fp_cap: dict | None = None) -> dict:
    """``{"nuclear": {block: N}, "error": {block: {bits: E}}, "omega": {block: {bits: N*E}}}``.

    ``specs[b]`` is a spec searched at ``b`` bits for every layer.
    """
    fp_cap = fp_cap if fp_cap is not None else capture(model, calib_x)
    nuc = nuclear_norms(model, fp_cap)
    err: dict = {}
    for block in blocks(len(model.blocks)):
        err[block] = {}
        for b, spec in specs.items():
            cap = capture(model, calib_x, build_layers(model, {n: spec[n] for n in block_layers(block)}, acc_bits=None))
            d = (cap[f"{block}.out"] - fp_cap[f"{block}.out"]).to(torch.float64)
            err[block][b] = float((d ** 2).sum(dim=(1, 2)).mean())
    omega = {k: {b: nuc[k] * e for b, e in v.items()} for k, v in err.items()}
    return {"nuclear": nuc, "error": err, "omega": omega}


def assign_bits(model, omega: dict[str, dict[int, float]], budget: float) -> dict[str, int]:
    """The least-``sum Omega`` assignment ``block -> bits`` with mean weight bits ``<= budget``."""
    names = list(omega)
    sizes = np.array([block_weights(model, k) for k in names], dtype=np.float64)
    choices = sorted({b for v in omega.values() for b in v})
    best, best_cost = None, np.inf
    for combo in itertools.product(choices, repeat=len(names)):
        if float(np.dot(sizes, combo)) > budget * sizes.sum() + 1e-9:
            continue
        cost = sum(omega[k][b] for k, b in zip(names, combo))
        if cost < best_cost:
            best, best_cost = combo, cost
    if best is None:
        raise ValueError(f"no assignment of {choices} bits meets a budget of {budget} bits per weight")
    return dict(zip(names, best))


def layer_bits(assignment: dict[str, int]) -> dict[str, int]:
    """Per engine layer bits from a per block assignment."""
    return {name: b for block, b in assignment.items() for name in block_layers(block)}


def mean_weight_bits(model, bits: dict[str, int]) -> float:
    """Mean bits per engine weight of a per layer assignment."""
    num = den = 0
    for name, b in bits.items():
        i, part = _split(name)
        if part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            n = _linear(model, i, part).weight.numel()
            num, den = num + b * n, den + n
    return num / den


def compose(specs: dict[int, QSpec], bits: dict[str, int]) -> QSpec:
    """The spec taking each layer from the search at its assigned bits."""
    return {name: specs[b][name] for name, b in bits.items()}
