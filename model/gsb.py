"""GSB quantizers (Group Superposition Binarization) as autograd Functions and modules.

What each quantizer computes (forward) follows the authors' released code;
``docs/gsb.md`` (section 2) has the notes.  Conventions shared with the numeric contract
(``model/golden.py``):

* ``sign(0) = +1``: a bipolar bit is ``x + bias >= 0``.
* A unipolar level is ``alpha * clamp(round(x/alpha), 0, 1)`` with round half
  *up*, i.e. the bit is ``x >= alpha/2``.
* Masks and levels compare non-strictly (``>=`` / ``<=``) against thresholds
  that are multiples (0.7, 0.9) of a max/min, matching the host rules of
  ``model/quantizers.py`` (``ternary``: +1 if z >= hi, -1 if z <= lo;
  ``step``: z >= threshold).  The authors' code uses strict comparisons; the
  two differ only on exact ties.
* Every quantizer's :meth:`deploy_params` returns ``{"offset": (C,) tensor,
  "groups": [{"rule", "encoding", "scale", "params"}, ...]}``, one entry per
  superposed group, in the vocabulary of ``model.quantizers.QuantGroup``.

Batch dependence.  The authors take max/min of the whole batch tensor.  Here
that happens in training only; every such statistic also updates a running
(EMA, momentum :data:`EMA_MOMENTUM`) buffer, and in ``eval()`` mode the
thresholds are the frozen buffers: the eval forward is the deploy forward,
and a sample's output never depends on the rest of its batch.

Gradient modes (``grad=``):

* ``"code"``: the authors' released code (LSQ-like).  Input:
  ``g * [|x| <= alpha]`` summed over the groups; scale:
  ``sum g*(q - [|x|<=alpha] x/alpha) / sqrt(N_k)``.  Two quirks are kept on
  purpose: for V the clip indicators of groups 2 and 3 are evaluated on the
  *masked* input ``v*M_k``, so they are 1 for every entry outside the mask
  (small entries get up to 3x the gradient); for the attention map the
  indicator groups pass ``g * M_k * alpha_k`` (scaled by their own scale).
* ``"ramp"``: our derivation (the paper's text was not available to us): the
  superposition is a staircase, and each jump of height ``h`` at ``t`` is
  replaced by a unit-slope ramp of width ``h`` centred on ``t``.  For a sign
  base this is ``[|x| <= alpha]`` (the same as the code); for a ternary group
  of scale ``a_k`` the jumps sit at the mask thresholds, so the input gets
  ``g * ([|v - t_hi| <= a_k/2] + [|v - t_lo| <= a_k/2])``; for a unipolar
  level the ramp is ``[|A - t_k| <= a_k/2]``.  Scale gradients as in "code".
* ``"ste"``: plain straight-through: input ``g * [|x| <= 1]`` (``[0<=x<=1]``
  for unipolar), scale gradient the exact ``sum g * q_k`` (no normalisation).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

EMA_MOMENTUM = 0.1
EPS = 1e-5
GRAD_MODES = ("code", "ramp", "ste")
V_RATIOS = (0.7, 0.9)
A_RATIOS = (0.7, 0.9)


def _check_grad(grad: str) -> str:
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    return grad


def bipolar(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0`` else ``-1`` (sign with sign(0) = +1)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


# --------------------------------------------------------------------------
# weights


def binarize_weight(w: torch.Tensor) -> torch.Tensor:
    """``sign(W - mean W) * mean|W|`` (one scale per tensor), identity STE."""
    q = bipolar(w - w.mean()) * w.abs().mean()
    return w + (q - w).detach()


def weight_planes(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Deploy form of :func:`binarize_weight`: ``(signs in {-1,+1} int8, scale)``."""
    w = w.detach()
    return bipolar(w - w.mean()).to(torch.int8), w.abs().mean()


def fake_quant_int8(w: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor 8-bit weights (patch embedding, heads), identity STE."""
    s = w.abs().max().clamp_min(EPS) / 127.0
    q = torch.round(w / s).clamp(-127, 127) * s
    return w + (q - w).detach()


# --------------------------------------------------------------------------
# autograd functions


class SignFn(torch.autograd.Function):
    """``alpha * sign(x)``: one bipolar base with a learnable scalar scale."""

    @staticmethod
    def forward(ctx, x, alpha, grad):
        q = bipolar(x)
        ctx.save_for_backward(x, alpha)
        ctx.grad = grad
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, alpha = ctx.saved_tensors
        q = bipolar(x)
        if ctx.grad == "ste":
            return g * (x.abs() <= 1).to(g.dtype), (g * q).sum().reshape(alpha.shape), None
        r = x / alpha
        mid = (r.abs() <= 1).to(g.dtype)
        ga = (g * (q - mid * r)).sum() / math.sqrt(x.numel())
        return g * mid, ga.reshape(alpha.shape), None


class UnsignedFn(torch.autograd.Function):
    """``alpha * clamp(round(x/alpha), 0, 1)`` (round half up): one unipolar base."""

    @staticmethod
    def forward(ctx, x, alpha, grad):
        q = (x >= 0.5 * alpha).to(x.dtype)
        ctx.save_for_backward(x, alpha)
        ctx.grad = grad
        return q * alpha

    @staticmethod
    def backward(ctx, g):
        x, alpha = ctx.saved_tensors
        q = (x >= 0.5 * alpha).to(g.dtype)
        if ctx.grad == "ste":
            return g * ((x >= 0) & (x <= 1)).to(g.dtype), (g * q).sum().reshape(alpha.shape), None
        r = x / alpha
        mid = ((r >= 0) & (r <= 1)).to(g.dtype)
        big = (r > 1).to(g.dtype)
        ga = (g * (big + mid * (q - r))).sum() / math.sqrt(x.numel())
        return g * mid, ga.reshape(alpha.shape), None


def v_masks(v: torch.Tensor, vmax: torch.Tensor, vmin: torch.Tensor) -> list[torch.Tensor]:
    """GSB Value masks ``[v >= r*vmax] | [v <= r*vmin]`` for r in :data:`V_RATIOS`."""
    return [((v >= r * vmax) | (v <= r * vmin)).to(v.dtype) for r in V_RATIOS]


class VGroupFn(torch.autograd.Function):
    """``a1*sign(v) + a2*sign(v)*M1 + a3*sign(v)*M2`` (bipolar + two ternary groups)."""

    @staticmethod
    def forward(ctx, v, alpha, vmax, vmin, grad):
        m1, m2 = v_masks(v, vmax, vmin)
        q = bipolar(v)
        ctx.save_for_backward(v, alpha, vmax, vmin)
        ctx.grad = grad
        return q * (alpha[0] + alpha[1] * m1 + alpha[2] * m2)

    @staticmethod
    def backward(ctx, g):
        v, alpha, vmax, vmin = ctx.saved_tensors
        masks = [torch.ones_like(v)] + v_masks(v, vmax, vmin)
        q = bipolar(v)
        if ctx.grad == "ste":
            gx = g * (v.abs() <= 1).to(g.dtype)
            ga = torch.stack([(g * q * m).sum() for m in masks])
            return gx, ga, None, None, None
        gx = torch.zeros_like(v)
        ga = []
        for k, m in enumerate(masks):
            a = alpha[k]
            r = v * m / a
            mid = (r.abs() <= 1).to(g.dtype)  # 1 outside the mask for k > 0 (the code's quirk)
            ga.append((g * (q * m - mid * r)).sum() / math.sqrt(max(float(m.sum()), 1.0)))
            if ctx.grad == "code" or k == 0:
                gx = gx + g * mid
            else:  # ramp: unit-slope ramps of width a_k at the two mask thresholds
                ratio = V_RATIOS[k - 1]
                near = ((v - ratio * vmax).abs() <= 0.5 * a) | ((v - ratio * vmin).abs() <= 0.5 * a)
                gx = gx + g * near.to(g.dtype)
        return gx, torch.stack(ga), None, None, None


class AttnLevelFn(torch.autograd.Function):
    """``a1*[A >= a1/2] + a2*[A >= 0.7 amax] + a3*[A >= 0.9 amax]`` (unipolar levels)."""

    @staticmethod
    def forward(ctx, a, alpha, amax, grad):
        q1 = (a >= 0.5 * alpha[0]).to(a.dtype)
        m1, m2 = [(a >= r * amax).to(a.dtype) for r in A_RATIOS]
        ctx.save_for_backward(a, alpha, amax)
        ctx.grad = grad
        return alpha[0] * q1 + alpha[1] * m1 + alpha[2] * m2

    @staticmethod
    def backward(ctx, g):
        a, alpha, amax = ctx.saved_tensors
        q1 = (a >= 0.5 * alpha[0]).to(g.dtype)
        ms = [(a >= r * amax).to(g.dtype) for r in A_RATIOS]
        if ctx.grad == "ste":
            gx = g * ((a >= 0) & (a <= 1)).to(g.dtype)
            ga = torch.stack([(g * q1).sum()] + [(g * m).sum() for m in ms])
            return gx, ga, None, None
        r = a / alpha[0]
        mid = ((r >= 0) & (r <= 1)).to(g.dtype)
        big = (r > 1).to(g.dtype)
        ga = [(g * (big + mid * (q1 - r))).sum() / math.sqrt(a.numel())]
        gx = g * mid
        for k, (ratio, m) in enumerate(zip(A_RATIOS, ms), start=1):
            ga.append((g * m).sum() / math.sqrt(max(float(m.sum()), 1.0)))
            if ctx.grad == "code":
                gx = gx + g * m * alpha[k]
            else:
                gx = gx + g * ((a - ratio * amax).abs() <= 0.5 * alpha[k]).to(g.dtype)
        return gx, torch.stack(ga), None, None


# --------------------------------------------------------------------------
# modules


def _group(rule: str, encoding: str, scale: torch.Tensor, **params: torch.Tensor) -> dict:
    """A deploy group as plain floats (float32 values, as torch computes them)."""
    return {"rule": rule, "encoding": encoding, "scale": float(scale.detach().reshape(())),
            "params": {k: float(torch.as_tensor(v, dtype=torch.float32).detach().reshape(())) for k, v in params.items()}}


class FakeQuant(nn.Module):
    """Base of the training-time activation quantizers: an on/off switch (``enabled``
    buffer, saved in checkpoints) and EMA helpers.

    Not the deployed quantizer: the model file holds a :class:`model.quantizers.Quantizer`,
    built from each subclass's ``deploy_params``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("enabled", torch.tensor(False))
        self.register_buffer("initialized", torch.tensor(False))

    def _ema(self, buf: torch.Tensor, value: torch.Tensor) -> None:
        with torch.no_grad():
            if bool(self.initialized):
                buf.mul_(1 - EMA_MOMENTUM).add_(EMA_MOMENTUM * value.detach())
            else:
                buf.copy_(value.detach())


class _ScaledQuant(FakeQuant):
    """A single-group activation binarizer with a per-channel ``bias`` and a scalar ``alpha``.

    ``scale="learned"``: ``alpha`` is learnable, initialised to
    ``init_factor * mean|x|`` on the first enabled forward.  ``scale="mean"``:
    no learnable parts, ``alpha = mean_factor * mean|x|`` of the batch in
    training and its EMA (``running_scale``) in eval.
    """

    mean_factor: float
    init_factor: float
    #: the binarizer with its gradient: ``fn.apply(x + bias, alpha, grad)``
    fn: type[torch.autograd.Function]

    def __init__(self, channels: int, grad: str = "code", scale: str = "learned") -> None:
        super().__init__()
        self.grad = _check_grad(grad)
        if scale not in ("learned", "mean"):
            raise ValueError(f"scale must be 'learned' or 'mean', got {scale!r}")
        self.scale = scale
        self.bias = nn.Parameter(torch.zeros(channels), requires_grad=(scale == "learned"))
        self.alpha = nn.Parameter(torch.ones(1), requires_grad=(scale == "learned"))
        self.register_buffer("running_scale", torch.ones(1))

    def current_alpha(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == "mean":
            if self.training:
                s = self.mean_factor * x.detach().abs().mean().reshape(1)
                self._ema(self.running_scale, s)
                self.initialized.fill_(True)
                return s.clamp_min(EPS)
            return self.running_scale.clamp_min(EPS)
        if self.training and not bool(self.initialized):
            with torch.no_grad():
                self.alpha.fill_(float(self.init_factor * x.abs().mean().clamp_min(EPS)))
                self.initialized.fill_(True)
        return self.alpha.clamp_min(EPS)

    def deploy_alpha(self) -> torch.Tensor:
        """The frozen scale used at inference."""
        return (self.running_scale if self.scale == "mean" else self.alpha).clamp_min(EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return x
        x = x + self.bias
        return self.fn.apply(x, self.current_alpha(x), self.grad)


class SignQuant(_ScaledQuant):
    """Bipolar activation binarizer ``alpha * sign(x + bias)``.

    ``scale="learned"`` (GSB): per-channel learnable ``bias`` (last axis),
    learnable scalar ``alpha`` initialised to ``2*mean|x|`` on the first
    enabled forward.  ``scale="mean"`` (XNOR-Net style, the 1-base baseline):
    no bias, ``alpha = mean|x|`` of the batch in training, its EMA
    (``running_scale``) in eval.

    Deploy: ``bit = (x + bias >= 0)``, value ``alpha * (2*bit - 1)``; see
    :meth:`deploy_params`.
    """

    mean_factor, init_factor, fn = 1.0, 2.0, SignFn

    def deploy_params(self) -> dict:
        """One ``sign`` group: ``code = +1 if x + offset >= 0 else -1``, value ``scale*code``."""
        return {"offset": self.bias.detach().clone(), "groups": [_group("sign", "bipolar", self.deploy_alpha())]}


class UnsignedQuant(_ScaledQuant):
    """Unipolar activation binarizer ``alpha * clamp(round((x + bias)/alpha), 0, 1)``.

    Used for the input of fc2 (after GELU, clipped to +-10).  ``alpha`` is
    learnable (init ``4*mean|x|``, the code's unsigned default) or, for
    ``scale="mean"``, ``2*mean|x|`` frozen as an EMA.  Deploy:
    ``bit = (x + bias >= alpha/2)``.
    """

    mean_factor, init_factor, fn = 2.0, 4.0, UnsignedFn

    def deploy_params(self) -> dict:
        """One ``step`` group: ``code = [x + offset >= scale/2]``, value ``scale*code``."""
        alpha = self.deploy_alpha()
        return {"offset": self.bias.detach().clone(),
                "groups": [_group("step", "unipolar", alpha, threshold=0.5 * alpha)]}


class VGroupQuant(FakeQuant):
    """GSB Value superposition: bipolar base + two ternary groups on large entries.

    ``v <- v + bias`` (per channel), then ``M_k = [v > r_k vmax] | [v < r_k vmin]``
    (r = 0.7, 0.9) and ``V_hat = a1 sign(v) + a2 sign(v) M1 + a3 sign(v) M2``.
    ``vmax``/``vmin`` are the batch tensor's max/min in training (the authors'
    choice) and the frozen EMAs ``running_max``/``running_min`` in eval.
    Scales ``alpha`` (3,) are initialised so that the superposition matches
    the mean magnitude of each nested group.
    """

    def __init__(self, channels: int, grad: str = "code") -> None:
        super().__init__()
        self.grad = _check_grad(grad)
        self.bias = nn.Parameter(torch.zeros(channels))
        self.alpha = nn.Parameter(torch.ones(3))
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("running_min", torch.zeros(()))

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return v
        v = v + self.bias
        if self.training:
            vmax, vmin = v.detach().max(), v.detach().min()
            if not bool(self.initialized):
                with torch.no_grad():
                    m1, m2 = v_masks(v, vmax, vmin)
                    a1 = 2 * v.abs().mean()
                    g1 = (v.abs() * m1).sum() / m1.sum().clamp_min(1)
                    g2 = (v.abs() * m2).sum() / m2.sum().clamp_min(1)
                    a2 = (g1 - a1).clamp_min(0.05 * a1)
                    a3 = (g2 - a1 - a2).clamp_min(0.05 * a1)
                    self.alpha.copy_(torch.stack([a1, a2, a3]).clamp_min(EPS))
            self._ema(self.running_max, vmax)
            self._ema(self.running_min, vmin)
            self.initialized.fill_(True)
        else:
            vmax, vmin = self.running_max, self.running_min
        return VGroupFn.apply(v, self.alpha.clamp_min(EPS), vmax, vmin, self.grad)

    def deploy_params(self) -> dict:
        """``sign`` group (scale a1) + two ``ternary`` groups (scales a2, a3).

        With ``v = x + offset``: group 0 ``code = +1 if v >= 0 else -1``;
        group k=1,2 ``code = +1 if v >= hi_k, -1 if v <= lo_k, else 0`` with
        ``hi_k = r_k * running_max``, ``lo_k = r_k * running_min`` (float32).
        """
        al = self.alpha.detach().clamp_min(EPS)
        groups = [_group("sign", "bipolar", al[0])]
        for k, r in enumerate(V_RATIOS, start=1):
            groups.append(_group("ternary", "ternary", al[k], lo=r * self.running_min, hi=r * self.running_max))
        return {"offset": self.bias.detach().clone(), "groups": groups}


class AttnQuant(FakeQuant):
    """GSB attention map: ``A' = softmax + B``, three unipolar levels.

    ``B`` (heads, N, N) is a learnable bias; ``A_hat = a1 [A' >= a1/2] +
    a2 [A' > 0.7 amax] + a3 [A' > 0.9 amax]``, ``amax`` the batch max in
    training and the frozen EMA ``running_max`` in eval.  With
    ``levels=1, scale="mean"`` it is the 1-base baseline ``a [A >= a/2]``,
    ``a = 2*mean(A)`` (EMA), no bias.
    """

    def __init__(self, heads: int, tokens: int, grad: str = "code", levels: int = 3, scale: str = "learned") -> None:
        super().__init__()
        self.grad = _check_grad(grad)
        if levels not in (1, 3):
            raise ValueError(f"levels must be 1 or 3, got {levels}")
        self.levels = levels
        self.scale = scale
        learned = scale == "learned"
        self.bias = nn.Parameter(torch.zeros(heads, tokens, tokens), requires_grad=learned)
        self.alpha = nn.Parameter(torch.ones(3), requires_grad=learned)
        self.register_buffer("running_max", torch.zeros(()))
        self.register_buffer("running_scale", torch.ones(1))

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if not bool(self.enabled):
            return p
        a = p + self.bias
        if self.levels == 1:
            if self.training:
                s = 2 * a.detach().mean().abs().reshape(1)
                self._ema(self.running_scale, s)
                self.initialized.fill_(True)
            else:
                s = self.running_scale
            return UnsignedFn.apply(a, s.clamp_min(EPS), self.grad)
        if self.training:
            amax = a.detach().max()
            if not bool(self.initialized):
                with torch.no_grad():
                    m1, m2 = [(a >= r * amax).to(a.dtype) for r in A_RATIOS]
                    a1 = 4 * a.abs().mean()
                    g1 = (a * m1).sum() / m1.sum().clamp_min(1)
                    g2 = (a * m2).sum() / m2.sum().clamp_min(1)
                    a2 = (g1 - a1).clamp_min(0.05 * a1)
                    a3 = (g2 - a1 - a2).clamp_min(0.05 * a1)
                    self.alpha.copy_(torch.stack([a1, a2, a3]).clamp_min(EPS))
            self._ema(self.running_max, amax)
            self.initialized.fill_(True)
        else:
            amax = self.running_max
        return AttnLevelFn.apply(a, self.alpha.clamp_min(EPS), amax, self.grad)

    def deploy_params(self) -> dict:
        """``step`` groups on ``A' = softmax + offset`` (offset shape (heads, N, N)).

        Level 0: ``[A' >= a1/2]`` scale a1; levels 1, 2: ``[A' >= r_k *
        running_max]`` scales a2, a3.  The 1-level baseline has level 0 only.
        """
        if self.levels == 1:
            s = self.running_scale.clamp_min(EPS)
            return {"offset": self.bias.detach().clone(), "groups": [_group("step", "unipolar", s, threshold=0.5 * s)]}
        al = self.alpha.detach().clamp_min(EPS)
        groups = [_group("step", "unipolar", al[0], threshold=0.5 * al[0])]
        for k, r in enumerate(A_RATIOS, start=1):
            groups.append(_group("step", "unipolar", al[k], threshold=r * self.running_max))
        return {"offset": self.bias.detach().clone(), "groups": groups}
