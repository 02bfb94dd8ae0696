"""The per-layer scale search (similarity + ranking loss + bias correction) and the baselines.

Method (Liu et al. 2021, "Post-Training Quantization for Vision Transformer";
``docs/ptq.md``): per layer, the weight (or second
operand) step ``Δy`` and the input step ``Δx`` maximise the mean, over the
calibration images, of the Pearson correlation between the full-precision and
the quantized layer output, searched by alternation (fix ``Δx``, grid-search
``Δy``; fix ``Δy``, grid-search ``Δx``; up to ``rounds`` rounds, stopping when
neither changes).  Candidates: ``candidates`` points evenly spaced over
``[lo*Δ0, hi*Δ0]``, ``Δ0 = max|.| / qmax`` (the min-max step).  For ``Q K^T``
the objective subtracts ``gamma`` times the ranking loss
``mean relu(theta - (Â_j - Â_k) * sign(A_j - A_k))`` over the key pairs
``j < k`` of every query row of every head.  Bias correction: after each
round the linear layer's bias becomes ``b + E[Y - Ŷ]`` (per output channel,
over the calibration tokens), so the next round searches with it.

Baselines (same operands, same encodings): ``minmax`` (``Δ = max|.|/qmax``,
per tensor, over the calibration set) and ``percentile`` (activation steps
from the ``pct`` percentile of ``|x|``, weights min-max).

The search runs on float32 fake quantization (``codes * step``); the scales it
returns are float32 numbers used as they are by the exact engine layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from model.ptq.quant import (DEFAULT_ACC_BITS, LINEARS, ActQ, LinearSpec, MatmulSpec, QModel, QSpec, _linear, _split,
                             build_layers, engine_layer_names, f32, fake_quant)


@dataclass(frozen=True)
class SearchConfig:
    """Hyper-parameters of the search (the paper's values where it gives them)."""

    candidates: int = 50
    lo: float = 0.5
    hi: float = 1.2
    rounds: int = 20
    rank: bool = True            # ranking loss on Q K^T
    gamma: float = 0.1
    theta: float = 0.2
    bias_correction: bool = True
    softmax_uint: bool = True    # the softmax output as uint<b> (it is >= 0), else int<b>
    sequential: bool = True      # inputs from the partly quantized model (else from the FP model); chosen on validation


# ------------------------------------------------------------------ calibration


@torch.no_grad()
def capture(model, x: np.ndarray | torch.Tensor, layers: dict | None = None) -> dict:
    """Inputs of every engine layer (and branch outputs) on images ``x``: see :meth:`QModel.logits`."""
    cap: dict = {}
    QModel(model, layers).logits(torch.as_tensor(x), capture=cap)
    return cap


def calibration_indices(n_train: int, size: int, seed: int) -> np.ndarray:
    """The calibration images: ``size`` indices into the training split, drawn with ``seed``."""
    rng = np.random.default_rng(10_000 + seed)
    return np.sort(rng.choice(n_train, size=min(size, n_train), replace=False))


# ------------------------------------------------------------------ objectives


def pearson(y: torch.Tensor, yh: torch.Tensor) -> float:
    """Mean over the first axis (images) of the Pearson correlation of the flattened rest."""
    y = y.reshape(y.shape[0], -1).to(torch.float64)
    yh = yh.reshape(yh.shape[0], -1).to(torch.float64)
    y = y - y.mean(1, keepdim=True)
    yh = yh - yh.mean(1, keepdim=True)
    den = y.norm(dim=1) * yh.norm(dim=1)
    r = torch.where(den > 0, (y * yh).sum(1) / den.clamp_min(1e-300), torch.zeros_like(den))
    return float(r.mean())


class RankLoss:
    """``mean relu(theta - (Â_j - Â_k) sign(A_j - A_k))`` over key pairs j < k of each score row."""

    def __init__(self, scores: torch.Tensor, theta: float):
        t = scores.shape[-1]
        self.iu = torch.triu_indices(t, t, 1)
        self.theta = theta
        self.sign = torch.sign(self._diff(scores))

    def _diff(self, s: torch.Tensor) -> torch.Tensor:
        return s[..., self.iu[0]] - s[..., self.iu[1]]

    def __call__(self, scores_q: torch.Tensor) -> float:
        return float(torch.relu(self.theta - self._diff(scores_q) * self.sign).mean())


def _grid(step0: float, cfg: SearchConfig) -> list[float]:
    return sorted({f32(step0 * a) for a in np.linspace(cfg.lo, cfg.hi, cfg.candidates)})


def max_step(x: torch.Tensor, q: ActQ) -> float:
    """The min-max step: ``max|x| / qmax`` (``max x`` for unsigned)."""
    peak = float(x.abs().max()) if q.signed else float(x.clamp_min(0).max())
    return f32(max(peak, 1e-8) / q.qmax)


def pct_step(x: torch.Tensor, q: ActQ, pct: float) -> float:
    """The step from the ``pct`` percentile of ``|x|`` (of ``x`` for unsigned)."""
    v = x.abs() if q.signed else x.clamp_min(0)
    peak = float(np.percentile(v.reshape(-1).numpy(), pct))
    return f32(max(peak, 1e-8) / q.qmax)


@dataclass
class SearchResult:
    spec: LinearSpec | MatmulSpec
    objective: float
    pearson: float
    rounds: int


def _alternate(x, y, qx: ActQ, qy: ActQ, out_fn, score_fn, cfg: SearchConfig, after_round=None) -> tuple[ActQ, ActQ, int]:
    """Alternating grid search: y's step with x fixed, then x's with y fixed; ``after_round(xq, yq)`` e.g. corrects a bias."""
    gx, gy = _grid(qx.step, cfg), _grid(qy.step, cfg)
    xq = fake_quant(x, qx)
    yq = fake_quant(y, qy)
    rounds = 0
    for rounds in range(1, cfg.rounds + 1):
        prev = (qx.step, qy.step)
        scores = [score_fn(out_fn(xq, fake_quant(y, replace(qy, step=c)))) for c in gy]
        qy = replace(qy, step=gy[int(np.argmax(scores))])
        yq = fake_quant(y, qy)
        scores = [score_fn(out_fn(fake_quant(x, replace(qx, step=c)), yq)) for c in gx]
        qx = replace(qx, step=gx[int(np.argmax(scores))])
        xq = fake_quant(x, qx)
        if after_round is not None:
            after_round(xq, yq)
        if (qx.step, qy.step) == prev:
            break
    return qx, qy, rounds


def search_linear(x: torch.Tensor, lin: torch.nn.Linear, bits: int, cfg: SearchConfig,
                  target: torch.Tensor | None = None) -> SearchResult:
    """Steps (and corrected bias) of one linear layer; ``x`` (images, tokens, in).

    ``target`` is the FP output to match (default: the FP layer on ``x``).
    """
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else torch.zeros(w.shape[0])
    y = target if target is not None else x @ w.T + b
    qx = ActQ(bits, 1.0)
    qx, qw = replace(qx, step=max_step(x, qx)), replace(qx, step=max_step(w, qx))
    state = {"bias": b.clone()}

    def out_fn(xq, wq):
        return xq @ wq.T + state["bias"]

    def correct(xq, wq):
        state["bias"] = b + (y - (xq @ wq.T + b)).reshape(-1, w.shape[0]).mean(0)

    qx, qw, rounds = _alternate(x, w, qx, qw, out_fn, lambda o: pearson(y, o), cfg, correct if cfg.bias_correction else None)
    out = out_fn(fake_quant(x, qx), fake_quant(w, qw))
    r = pearson(y, out)
    bias = state["bias"].numpy().astype(np.float32) if lin.bias is not None or cfg.bias_correction else None
    return SearchResult(LinearSpec(qx, qw, bias), r, r, rounds)


def search_qk(q: torch.Tensor, k: torch.Tensor, bits: int, cfg: SearchConfig,
              target: torch.Tensor | None = None) -> SearchResult:
    """Steps of Q and K; ``q``, ``k`` (images, heads, tokens, head_dim); scores include 1/sqrt(d)."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    s = target if target is not None else (q @ k.transpose(-2, -1)) * scale
    rank = RankLoss(s, cfg.theta) if cfg.rank else None

    def out_fn(qq, kq):
        return (qq @ kq.transpose(-2, -1)) * scale

    def score(o):
        return pearson(s, o) - (cfg.gamma * rank(o) if rank is not None else 0.0)

    a = ActQ(bits, 1.0)
    qx, qy = replace(a, step=max_step(q, a)), replace(a, step=max_step(k, a))
    qx, qy, rounds = _alternate(q, k, qx, qy, out_fn, score, cfg)
    o = out_fn(fake_quant(q, qx), fake_quant(k, qy))
    return SearchResult(MatmulSpec(qx, qy), score(o), pearson(s, o), rounds)


def search_av(a: torch.Tensor, v: torch.Tensor, bits: int, cfg: SearchConfig,
              target: torch.Tensor | None = None) -> SearchResult:
    """Steps of the softmax output ``a`` (images, heads, T, T) and ``v`` (images, heads, T, hd)."""
    o_fp = target if target is not None else a @ v
    qa = ActQ(bits, 1.0, signed=not cfg.softmax_uint)
    qv = ActQ(bits, 1.0)
    qa, qv = replace(qa, step=max_step(a, qa)), replace(qv, step=max_step(v, qv))
    qa, qv, rounds = _alternate(a, v, qa, qv, lambda x, y: x @ y, lambda o: pearson(o_fp, o), cfg)
    r = pearson(o_fp, fake_quant(a, qa) @ fake_quant(v, qv))
    return SearchResult(MatmulSpec(qa, qv), r, r, rounds)


# ------------------------------------------------------------------ whole models


def _fp_targets(model, cap: dict, name: str):
    """The FP output of engine layer ``name`` on the FP capture."""
    i, part = _split(name)
    if part in LINEARS:
        lin = _linear(model, i, part)
        return cap[name] @ lin.weight.detach().T + lin.bias.detach()
    x, y = cap[name]
    if part == "attn.qk":
        return (x @ y.transpose(-2, -1)) * (1.0 / math.sqrt(x.shape[-1]))
    return x @ y


def search_layer(model, name: str, inputs, bits: int, cfg: SearchConfig, target=None) -> SearchResult:
    """Search one engine layer on its captured ``inputs``."""
    i, part = _split(name)
    if part in LINEARS:
        return search_linear(inputs, _linear(model, i, part), bits, cfg, target)
    if part == "attn.qk":
        return search_qk(*inputs, bits, cfg, target)
    return search_av(*inputs, bits, cfg, target)


def _cache_key(name: str, bits: int, cfg: SearchConfig) -> tuple:
    """What an independent search of layer ``name`` depends on (so ablation variants share layers)."""
    _, part = _split(name)
    common = (name, bits, cfg.candidates, cfg.lo, cfg.hi, cfg.rounds)
    if part in LINEARS:
        return common + (cfg.bias_correction,)
    if part == "attn.qk":
        return common + ((cfg.rank, cfg.gamma, cfg.theta) if cfg.rank else (False,))
    return common + (cfg.softmax_uint,)


def search_model(model, calib_x: np.ndarray, bits: dict[str, int] | int, cfg: SearchConfig,
                 fp_cap: dict | None = None, progress=None, cache: dict | None = None,
                 acc_bits: int | None = DEFAULT_ACC_BITS) -> tuple[QSpec, dict]:
    """The searched spec of every engine layer; ``bits`` per layer name or one for all.

    ``cfg.sequential`` (default, chosen on validation): in forward order, each
    layer searches on the inputs the already-quantized layers before it
    produce, against the FP model's outputs.  Otherwise (independent) every
    layer searches on the FP model's inputs.
    ``cache`` (a dict kept by the caller for one model and calibration set)
    reuses independent layer searches across calls.  ``acc_bits``: the
    coefficient formats of the quantized layers that feed the next search.
    """
    names = engine_layer_names(len(model.blocks))
    bits_of = (lambda n: bits[n]) if isinstance(bits, dict) else (lambda n: bits)
    fp_cap = fp_cap if fp_cap is not None else capture(model, calib_x)
    spec: QSpec = {}
    stats: dict = {}
    for name in names:
        if cfg.sequential and spec:
            cap = capture(model, calib_x, build_layers(model, spec, acc_bits=acc_bits))
            res = search_layer(model, name, cap[name], bits_of(name), cfg, _fp_targets(model, fp_cap, name))
        else:
            key = _cache_key(name, bits_of(name), cfg)
            res = cache.get(key) if cache is not None else None
            if res is None:
                res = search_layer(model, name, fp_cap[name], bits_of(name), cfg)
                if cache is not None:
                    cache[key] = res
        spec[name] = res.spec
        stats[name] = {"objective": res.objective, "pearson": res.pearson, "rounds": res.rounds}
        if progress:
            progress(name, res)
    return spec, stats


def baseline_spec(model, fp_cap: dict, bits: dict[str, int] | int, kind: str, pct: float = 99.9,
                  softmax_uint: bool = True) -> QSpec:
    """``minmax`` or ``percentile`` steps for every engine layer, from the FP calibration capture."""
    if kind not in ("minmax", "percentile"):
        raise ValueError(f"kind must be 'minmax' or 'percentile', got {kind!r}")
    bits_of = (lambda n: bits[n]) if isinstance(bits, dict) else (lambda n: bits)

    def act(x: torch.Tensor, b: int, signed: bool = True) -> ActQ:
        q = ActQ(b, 1.0, signed)
        return replace(q, step=max_step(x, q) if kind == "minmax" else pct_step(x, q, pct))

    spec: QSpec = {}
    for name in engine_layer_names(len(model.blocks)):
        i, part = _split(name)
        b = bits_of(name)
        if part in LINEARS:
            lin = _linear(model, i, part)
            w = lin.weight.detach()
            qw = ActQ(b, 1.0)
            spec[name] = LinearSpec(act(fp_cap[name], b), replace(qw, step=max_step(w, qw)),
                                    None if lin.bias is None else lin.bias.detach().numpy().astype(np.float32))
        elif part == "attn.qk":
            q, k = fp_cap[name]
            spec[name] = MatmulSpec(act(q, b), act(k, b))
        else:
            a, v = fp_cap[name]
            spec[name] = MatmulSpec(act(a, b, signed=not softmax_uint), act(v, b))
    return spec
