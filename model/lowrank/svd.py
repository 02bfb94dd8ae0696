"""Factored linear layers, activation capture, and the two rank-r approximations.

Orientation is torch's: a linear layer is ``y = x W^T + b`` with ``W`` of
shape (out, in).  A rank-r factorisation stores ``A`` (r, in) and ``B``
(out, r): ``y = (x A^T) B^T + b``, ``r*(in+out)`` weights instead of
``in*out``.

* **Activation-aware** (:func:`activation_spectrum`): with the layer's
  inputs ``X`` (N, in) on calibration tokens and ``Y = X W^T`` (N, out),
  take the top-r right singular vectors ``V_r`` (out, r) of ``Y``; then
  ``W_hat = V_r V_r^T W`` minimises ``||X W^T - X W_hat^T||_F`` over rank-r
  ``W_hat`` (exactly, when ``X`` has full column rank).  The right singular
  vectors of ``Y`` are the eigenvectors of ``Y^T Y = W (X^T X) W^T`` (out x
  out, float64), and the squared output error at rank r is the sum of the
  eigenvalues past r.  The bias is kept as it is and not part of ``Y``.
* **Plain weight SVD** (:func:`weight_spectrum`): ``W = U S V^T``, keep the
  top r; the squared weight error at rank r is ``sum_{i>r} s_i^2``.

Both return a :class:`Spectrum`; :meth:`Spectrum.factors` gives ``A, B`` for
any rank, *balanced* per component (row ``i`` of ``A`` and column ``i`` of
``B`` get the same 2-norm, by a positive rescaling that leaves ``B A``
unchanged) so that one per-tensor quantizer fits both factors (for the
weight SVD this is the usual ``sqrt(S)`` split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

#: The linear layers of each block that are compressed (``blocks.{i}.<part>``).
PARTS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def linear_names(depth: int) -> list[str]:
    """The compressed linear layers of a depth-``depth`` ViT, in forward order."""
    return [f"blocks.{i}.{p}" for i in range(depth) for p in PARTS]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted name (``blocks.0.attn.qkv``)."""
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule at a dotted name."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


class LowRankLinear(nn.Module):
    """``y = (x A^T) B^T + bias + (x D^T) C^T``: a rank-r layer plus a rank-k residual.

    ``A`` (r, in) and ``B`` (out, r) are the fixed SVD part (buffers); ``D``
    (k, in) and ``C`` (out, k) the trainable residual (parameters, absent when
    k = 0).  :meth:`merged` gives the equivalent rank-(r+k) pair, which is
    what is exported.  ``act`` is an identity, so the module drops into the
    ViT where a ``QLinear`` of an FP model was.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None,
                 c: torch.Tensor | None = None, d: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("a", a.detach().clone().float())
        self.register_buffer("b", b.detach().clone().float())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float(), requires_grad=False)
        self.c = None if c is None else nn.Parameter(c.detach().clone().float())
        self.d = None if d is None else nn.Parameter(d.detach().clone().float())
        self.act = nn.Identity()

    @property
    def in_features(self) -> int:
        return self.a.shape[1]

    @property
    def out_features(self) -> int:
        return self.b.shape[0]

    @property
    def rank(self) -> int:
        """Total rank r + k of the merged factors."""
        return self.a.shape[0] + (0 if self.c is None else self.c.shape[1])

    @property
    def params(self) -> int:
        """Weights stored (biases not counted): ``rank * (in + out)``."""
        return self.rank * (self.in_features + self.out_features)

    def fixed(self, x: torch.Tensor) -> torch.Tensor:
        """The SVD part with the bias, without the residual."""
        return F.linear(F.linear(x, self.a), self.b, self.bias)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch alone (zeros when k = 0)."""
        if self.c is None:
            return torch.zeros(x.shape[:-1] + (self.out_features,), dtype=x.dtype)
        return F.linear(F.linear(x, self.d), self.c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fixed(x)
        return y if self.c is None else y + self.residual(x)

    @torch.no_grad()
    def merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A', B')`` of rank r + k with ``B' A' = B A + C D``, balanced per component."""
        a, b = self.a, self.b
        if self.c is not None:
            a, b = torch.cat([a, self.d.detach()], 0), torch.cat([b, self.c.detach()], 1)
        return balance(a, b)

    def weight(self) -> torch.Tensor:
        """The dense equivalent ``B A + C D`` (out, in)."""
        a, b = self.merged()
        return b @ a


def balance(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale component i by ``s_i = sqrt(|b_i| / |a_i|)``: ``a_i * s_i``, ``b_i / s_i`` (same product)."""
    na, nb = a.norm(dim=1), b.norm(dim=0)
    s = torch.where((na > 0) & (nb > 0), torch.sqrt(nb / na.clamp_min(1e-30)), torch.ones_like(na))
    return a * s[:, None], b / s[None, :]


@dataclass
class Spectrum:
    """A layer's ordered directions and the squared error of every rank.

    ``err[r]`` is the squared error (output error for the activation-aware
    kind, weight error for the weight kind) of keeping the top r components,
    r = 0 .. ``len(err) - 1``; ``err[0]`` is the total energy.
    """

    kind: str
    weight: np.ndarray            # (out, in) float64
    basis: np.ndarray             # activation: V (out, m); weight: (U, S, Vt) packed below
    err: np.ndarray
    s: np.ndarray | None = None
    vt: np.ndarray | None = None

    @property
    def max_rank(self) -> int:
        return len(self.err) - 1

    def factors(self, r: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Balanced ``(A, B)`` of rank r: A (r, in), B (out, r), float32."""
        if not 1 <= r <= self.max_rank:
            raise ValueError(f"rank must be in 1..{self.max_rank}, got {r}")
        if self.kind == "activation":
            v = self.basis[:, :r]
            a, b = v.T @ self.weight, v
        else:
            a, b = self.s[:r, None] * self.vt[:r], self.basis[:, :r]
        return balance(torch.from_numpy(a).float(), torch.from_numpy(b).float())

    def relative_err(self) -> np.ndarray:
        """``err / err[0]``."""
        return self.err / max(float(self.err[0]), 1e-30)


def _tail(energies: np.ndarray) -> np.ndarray:
    """``err[r] = sum_{i >= r} energies[i]`` for r = 0..m (err[m] = 0)."""
    e = np.clip(energies, 0.0, None)
    return np.concatenate([np.cumsum(e[::-1])[::-1], [0.0]])


def activation_spectrum(weight: torch.Tensor | np.ndarray, x: torch.Tensor | np.ndarray) -> Spectrum:
    """The activation-aware spectrum of ``W`` (out, in) on inputs ``X`` (N, in)."""
    w = np.asarray(weight.detach() if hasattr(weight, "detach") else weight, dtype=np.float64)
    x = np.asarray(x.detach() if hasattr(x, "detach") else x, dtype=np.float64).reshape(-1, w.shape[1])
    gram = w @ (x.T @ x) @ w.T                       # Y^T Y, (out, out)
    lam, vec = np.linalg.eigh((gram + gram.T) / 2)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    m = min(w.shape)
    return Spectrum("activation", w, vec[:, :m], _tail(lam[:m]))


def weight_spectrum(weight: torch.Tensor | np.ndarray) -> Spectrum:
    """The plain SVD spectrum of ``W`` (out, in)."""
    w = np.asarray(weight.detach() if hasattr(weight, "detach") else weight, dtype=np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return Spectrum("weight", w, u, _tail(s**2), s=s, vt=vt)


@torch.no_grad()
def capture_inputs(model: nn.Module, x: torch.Tensor, names: list[str], batch: int = 256) -> dict[str, torch.Tensor]:
    """Every named layer's input on images ``x``, flattened to (tokens, in), float32."""
    store: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    hooks = [get_module(model, n).register_forward_pre_hook(lambda m, args, n=n: store[n].append(args[0].reshape(-1, args[0].shape[-1])))
             for n in names]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch):
            model.predict(x[i:i + batch])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {n: torch.cat(v) for n, v in store.items()}
