"""Compress an FP ViT: ranks by budget, factors by SVD, then layer-wise error compensation.

:func:`compress` replaces every block linear (``blocks.{i}.attn.qkv|proj``,
``blocks.{i}.mlp.fc1|fc2``) of a copy of the model by a
:class:`~model.lowrank.svd.LowRankLinear` (or leaves it dense when its
allocated rank would not save weights).  Patch embedding and the heads are
not compressed (they are 2.5 % of the linear weights on digits, and they run
on the host).

Steps, for ``method="activation"``:

1. Capture every layer's input ``X`` on the calibration images (the
   training split) through the FP model; spectra of ``Y = X W^T``.
2. :func:`model.lowrank.ranks.allocate`: total ranks ``R`` per layer to meet
   ``(1 - removed) * dense`` weights.
3. Error compensation, layer by layer in forward order: the layer becomes
   the rank ``R - k`` activation-aware factors (fixed) plus a rank-k residual
   ``C D`` initialised with the next k components (so it starts at the
   rank-R activation-aware solution) and then fitted by Adam on
   ``|| X W^T + b - (layer(X_hat)) ||^2`` where ``X_hat`` is the layer's input
   in the *already compressed* model (earlier layers replaced): the residual
   absorbs this layer's truncation error and the error the earlier layers
   pass on.  ``k = min(residual_rank, R // 2)``; the residual's weights are
   inside the budget (they are counted in ``R``).  Full-batch Adam,
   ``steps`` steps, the step with the lowest loss is kept (never worse than
   the initial rank-R solution on the calibration tokens).

For ``method="weight"`` (the baseline): weight spectra, the same greedy
allocation on the relative weight error, plain rank-R SVD factors, no
compensation.  ``compensate=False`` gives the activation-aware ablation
without step 3.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.lowrank.ranks import allocate, allocate_uniform, dense_params, rank_params
from model.lowrank.svd import LowRankLinear, Spectrum, activation_spectrum, capture_inputs, get_module, linear_names, set_module, weight_spectrum

METHODS = ("activation", "weight")


@dataclass
class LowRankConfig:
    """One compression setting."""

    method: str = "activation"
    removed: float = 0.5          # fraction of the compressed layers' weights removed
    compensate: bool = True       # layer-wise error compensation (activation only)
    residual_rank: int = 4        # k, the residual's rank (capped at R // 2)
    allocation: str = "greedy"    # "greedy" (the method's) or "uniform" (same kept fraction per layer)
    steps: int = 200              # Adam steps per layer
    lr: float = 3e-3
    fit_tokens: int = 4096        # calibration tokens the residual is fitted on (a seeded subset)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if not 0.0 <= self.removed < 1.0:
            raise ValueError(f"removed must be in [0, 1), got {self.removed}")
        if self.allocation not in ("greedy", "uniform"):
            raise ValueError(f"allocation must be 'greedy' or 'uniform', got {self.allocation!r}")


@dataclass
class Calibration:
    """What the compression needs from the FP model, computed once per model and reused across settings."""

    names: list[str]
    shapes: dict[str, tuple[int, int]]
    inputs: dict[str, torch.Tensor]
    spectra: dict[str, dict[str, Spectrum]] = field(default_factory=dict)

    def spectrum(self, model: nn.Module, name: str, kind: str) -> Spectrum:
        cache = self.spectra.setdefault(kind, {})
        if name not in cache:
            w = get_module(model, name).weight
            cache[name] = activation_spectrum(w, self.inputs[name]) if kind == "activation" else weight_spectrum(w)
        return cache[name]


def calibrate(model: nn.Module, calib_x: torch.Tensor | np.ndarray) -> Calibration:
    """Capture the compressed layers' FP inputs on the calibration images."""
    names = linear_names(len(model.blocks))
    shapes = {n: tuple(get_module(model, n).weight.shape) for n in names}
    return Calibration(names, shapes, capture_inputs(model, torch.as_tensor(calib_x), names))


def fit_residual(layer: LowRankLinear, x_hat: torch.Tensor, target: torch.Tensor, steps: int, lr: float) -> dict:
    """Fit the residual ``C, D`` of ``layer`` to ``target`` on inputs ``x_hat`` (full batch, Adam)."""
    with torch.no_grad():
        base = layer.fixed(x_hat)
    params = [layer.c, layer.d]
    opt = torch.optim.Adam(params, lr=lr)
    scale = float(target.pow(2).mean())

    def loss_now() -> torch.Tensor:
        return F.mse_loss(base + layer.residual(x_hat), target) / scale

    first, best, best_state = math.inf, math.inf, None
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        loss = loss_now()
        now = float(loss.detach())
        first = now if step == 0 else first
        if now < best:  # the loss of the parameters before this step
            best, best_state = now, [p.detach().clone() for p in params]
        if step == steps:
            break
        loss.backward()
        opt.step()
    with torch.no_grad():
        for p, s in zip(params, best_state):
            p.copy_(s)
    return {"loss_before": first, "loss_after": best}


def compress(model: nn.Module, calib: Calibration, cfg: LowRankConfig, calib_x: torch.Tensor | np.ndarray | None = None) -> tuple[nn.Module, dict]:
    """A compressed copy of ``model`` and a record (ranks, weights, compensation losses).

    ``calib_x`` (the calibration images) is needed for the compensation.
    """
    kind = cfg.method
    dense = sum(dense_params(s) for s in calib.shapes.values())
    budget = int(math.floor((1.0 - cfg.removed) * dense))
    errors = {n: calib.spectrum(model, n, kind).relative_err() for n in calib.names}
    ranks = allocate(errors, calib.shapes, budget) if cfg.allocation == "greedy" else allocate_uniform(calib.shapes, budget)
    out = copy.deepcopy(model).eval()
    compensate = cfg.compensate and kind == "activation"
    if compensate and calib_x is None:
        raise ValueError("compensation needs the calibration images calib_x")
    losses = {}
    for n in calib.names:
        r = ranks[n]
        if r is None:
            continue
        orig = get_module(model, n)
        spec = calib.spectrum(model, n, kind)
        k = min(cfg.residual_rank, r // 2) if compensate else 0
        a, b = spec.factors(r)
        layer = LowRankLinear(a[:r - k], b[:, :r - k], orig.bias, b[:, r - k:] if k else None, a[r - k:] if k else None)
        set_module(out, n, layer)
        if k:
            x_hat = capture_inputs(out, torch.as_tensor(calib_x), [n])[n]
            pick = torch.from_numpy(np.random.default_rng(0).permutation(len(x_hat))[:cfg.fit_tokens])
            with torch.no_grad():
                target = F.linear(calib.inputs[n][pick], orig.weight, orig.bias)
            losses[n] = fit_residual(layer, x_hat[pick], target, cfg.steps, cfg.lr)
    params = sum(rank_params(calib.shapes[n], ranks[n]) for n in calib.names)
    info = {"method": kind, "compensate": compensate, "removed_target": cfg.removed, "budget": budget,
            "dense_params": dense, "params": params, "removed": 1.0 - params / dense,
            "allocation": cfg.allocation, "ranks": {n: ranks[n] for n in calib.names}, "residual_rank": cfg.residual_rank if compensate else 0,
            "compensation": losses}
    return out, info
