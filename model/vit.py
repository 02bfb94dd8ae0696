"""The small ViT/DeiT family, full precision or binarized through pluggable quantizers.

One :class:`ViT` class serves every method; the method only chooses which
quantizer modules sit in the slots (see :func:`build_model`):

=========  ===========================================================
``fp``     no quantizers (identity)
``gsb``    GSB: BWN weights, learned-bias/scale sign activations,
           Q/K one base, V three groups, attention map three levels
``bin1``   one base everywhere, XNOR-Net/BWN scales (mean |x|), STE
=========  ===========================================================

Per block the slots are (``blocks.i.`` prefix)::

    attn.qkv.act   SignQuant      input of qkv (bipolar)
    attn.qkv       QLinear        binary weight, BWN scale
    attn.q_quant   SignQuant      Q (bipolar, one base)
    attn.k_quant   SignQuant      K (bipolar, one base)
    attn.v_quant   VGroupQuant    V (bipolar + 2 ternary) | SignQuant (bin1)
    attn.a_quant   AttnQuant      softmax + B -> unipolar levels
    attn.proj.act  SignQuant      input of proj
    mlp.fc1.act    SignQuant      input of fc1
    mlp.fc2.act    UnsignedQuant  input of fc2 (after GELU, clip 10)

Host-side (float32) parts: patch embedding (8-bit weights when quantized),
cls/dist tokens, position embedding, LayerNorms, softmax, GELU, residuals,
heads (8-bit weights).  In ``eval()`` mode every threshold is a frozen
buffer, so ``model.eval()(x)`` is the deploy forward; :func:`deploy_spec`
lists the frozen quantities per layer for the exporter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.deploy import engine_linear, integer_product, quantizer
from model.layers import EngineMatmul

from .config import ModelConfig
from .gsb import (AttnQuant, FakeQuant, SignQuant, UnsignedQuant, VGroupQuant, binarize_weight,
                  fake_quant_int8, weight_planes)

if TYPE_CHECKING:
    from model.intvit import IntegerProgram, Trace
    from model.modelfile import Preprocessing

METHODS = ("fp", "gsb", "gsb_nokd", "gsb_ste", "gsb_ramp", "bin1")
KD_METHODS = ("gsb", "gsb_ste", "gsb_ramp", "bin1")
#: what stage 1 of the quantized recipe quantizes (:meth:`ViT.set_stage`)
STAGE1_SCOPES = ("mlp_weights", "weights", "weights_inputs")
GELU_CLIP = 10.0


def method_kind(method: str) -> tuple[str, str]:
    """``(quantizer family, gradient mode)`` of a method name."""
    table = {
        "fp": ("fp", "code"), "gsb": ("gsb", "code"), "gsb_nokd": ("gsb", "code"),
        "gsb_ste": ("gsb", "ste"), "gsb_ramp": ("gsb", "ramp"), "bin1": ("bin1", "ste"),
    }
    if method not in table:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    return table[method]


class QLinear(nn.Linear):
    """Linear layer with an input quantizer ``act`` and optional binary weights.

    ``y = act(x) @ binarize(W).T + b``; in deploy terms
    ``y = act_scale * w_scale * (bits_x . signs_W) + b`` (plus, for a bipolar
    input, nothing else: the integer dot product is the plane product).
    """

    def __init__(self, cin: int, cout: int, act: nn.Module | None = None) -> None:
        super().__init__(cin, cout)
        self.act = act if act is not None else nn.Identity()
        self.register_buffer("binary", torch.tensor(False))
        self.integer = False  # set by ViT.deploy: integer-exact engine products

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer and bool(self.binary) and isinstance(self.act, FakeQuant) and bool(self.act.enabled):
            return self._integer_forward(x)
        x = self.act(x)
        w = binarize_weight(self.weight) if bool(self.binary) else self.weight
        return F.linear(x, w, self.bias)

    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The contract's integers: input codes times weight signs, fixed-point scale, plus bias."""
        signs, scale = weight_planes(self.weight)
        layer = engine_linear({"weight_signs": signs, "weight_scale": scale, "bias": self.bias, "input": self.act.deploy_params()})
        fmt, coefs = layer.coefficients
        y = integer_product(layer.input.codes(x.detach().numpy()), [signs.numpy().astype(np.int64)], coefs)
        return torch.from_numpy(fmt.to_real(y) + layer.bias)


class Int8Linear(nn.Linear):
    """Linear layer whose weights are fake-quantized to 8 bits when ``int8`` is set."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(cin, cout)
        self.register_buffer("int8", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = fake_quant_int8(self.weight) if bool(self.int8) else self.weight
        return F.linear(x, w, self.bias)


class DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = (torch.rand(x.shape[0], 1, 1, dtype=x.dtype, device=x.device) >= self.p).to(x.dtype)
        return x * keep / (1 - self.p)


def _act(kind: str, channels: int, grad: str) -> nn.Module:
    if kind == "fp":
        return nn.Identity()
    return SignQuant(channels, grad, scale="learned" if kind == "gsb" else "mean")


@dataclass
class Taps:
    """Inner tensors a forward hands out for distillation, each list only when given:
    every block's output (``states``) and every block's attention probabilities,
    softmax before the attention quantizer, batch x heads x tokens x tokens (``maps``)."""

    states: list[torch.Tensor] | None = None
    maps: list[torch.Tensor] | None = None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, grad: str) -> None:
        super().__init__()
        c, self.heads = cfg.dim, cfg.heads
        self.head_dim = c // cfg.heads
        self.integer = False  # set by ViT.deploy: integer-exact Q K^T and A V
        self.qkv = QLinear(c, 3 * c, _act(kind, c, grad))
        self.proj = QLinear(c, c, _act(kind, c, grad))
        self.q_quant = _act(kind, c, grad)
        self.k_quant = _act(kind, c, grad)
        if kind == "gsb":
            self.v_quant = VGroupQuant(c, grad)
            self.a_quant = AttnQuant(cfg.heads, cfg.tokens, grad)
        elif kind == "bin1":
            self.v_quant = SignQuant(c, grad, scale="mean")
            self.a_quant = AttnQuant(cfg.heads, cfg.tokens, grad, levels=1, scale="mean")
        else:
            self.v_quant = nn.Identity()
            self.a_quant = nn.Identity()

    def forward(self, x: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        if self.integer and isinstance(self.q_quant, FakeQuant) and bool(self.q_quant.enabled):
            return self._integer_forward(x)
        b, n, c = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = self.q_quant(q), self.k_quant(k), self.v_quant(v)

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(q), heads(k), heads(v)
        attn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        attn = attn.softmax(dim=-1)
        if taps is not None and taps.maps is not None:
            taps.maps.append(attn)
        attn = self.a_quant(attn)
        out = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj(out)

    def _integer_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Q K^T and A V as the contract's integers, from the quantizers' frozen deploy parameters."""
        b, n, c = x.shape
        q, k, v = (t.detach().numpy() for t in self.qkv(x).chunk(3, dim=-1))
        qk = EngineMatmul(quantizer(self.q_quant.deploy_params()), quantizer(self.k_quant.deploy_params()),
                          1.0 / math.sqrt(self.head_dim))
        av = EngineMatmul(quantizer(self.a_quant.deploy_params()), quantizer(self.v_quant.deploy_params()))

        def heads(codes: list[np.ndarray]) -> list[np.ndarray]:
            return [co.reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3) for co in codes]

        fmt, coefs = qk.coefficients
        scores = fmt.to_real(integer_product(heads(qk.x.codes(q)), heads(qk.y.codes(k)), coefs))
        attn = torch.from_numpy(scores).softmax(dim=-1).numpy()
        fmt, coefs = av.coefficients
        v_t = [h.transpose(0, 1, 3, 2) for h in heads(av.y.codes(v))]
        out = fmt.to_real(integer_product(av.x.codes(attn), v_t, coefs))
        return self.proj(torch.from_numpy(out).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, grad: str) -> None:
        super().__init__()
        h = cfg.mlp_hidden
        self.fc1 = QLinear(cfg.dim, h, _act(kind, cfg.dim, grad))
        fc2_act = nn.Identity() if kind == "fp" else UnsignedQuant(h, grad, "learned" if kind == "gsb" else "mean")
        self.fc2 = QLinear(h, cfg.dim, fc2_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.fc1(x))
        if isinstance(self.fc2.act, FakeQuant) and bool(self.fc2.act.enabled):
            x = x.clamp(-GELU_CLIP, GELU_CLIP)
        return self.fc2(x)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, kind: str, grad: str, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg, kind, grad)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = Mlp(cfg, kind, grad)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), taps))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """DeiT-style ViT with cls and (optional) distillation tokens.

    ``forward`` returns ``(z_cls, z_dist)`` (``z_dist`` is None without a
    distillation token); :meth:`predict` averages the two heads' logits.
    """

    def __init__(self, cfg: ModelConfig, method: str = "fp") -> None:
        super().__init__()
        self.cfg, self.method = cfg, method
        kind, grad = method_kind(method)
        self.kind = kind
        p = cfg.patch_size
        self.patch_embed = Int8Linear(cfg.in_channels * p * p, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.distillation_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.tokens, cfg.dim))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList([Block(cfg, kind, grad, r) for r in rates])
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = Int8Linear(cfg.dim, cfg.num_classes)
        self.head_dist = Int8Linear(cfg.dim, cfg.num_classes) if cfg.distillation_token else None
        for t in (self.cls_token, self.pos_embed) + ((self.dist_token,) if self.dist_token is not None else ()):
            nn.init.trunc_normal_(t, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.register_buffer("stage", torch.tensor(0))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.cfg.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def features(self, x: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        """The final normalised tokens; ``taps`` collects the inner tensors it asks for."""
        x = self.patch_embed(self.patchify(x))
        b = x.shape[0]
        toks = [self.cls_token.expand(b, -1, -1)]
        if self.dist_token is not None:
            toks.append(self.dist_token.expand(b, -1, -1))
        x = torch.cat(toks + [x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x, taps)
            if taps is not None and taps.states is not None:
                taps.states.append(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor, taps: Taps | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.features(x, taps)
        z = self.head(x[:, 0])
        zd = self.head_dist(x[:, 1]) if self.head_dist is not None else None
        return z, zd

    def predict(self, x: torch.Tensor, taps: Taps | None = None) -> torch.Tensor:
        """Inference logits: the mean of the cls and distillation heads."""
        z, zd = self(x, taps)
        return z if zd is None else 0.5 * (z + zd)

    @torch.no_grad()
    def deploy(self, x: torch.Tensor) -> torch.Tensor:
        """The deploy forward: eval mode (frozen thresholds and scales), averaged heads.

        Every engine product of a quantized model is computed as the numeric
        contract's integers (:func:`model.deploy.integer_product`), so it is
        integer-exact where the contract is integer; the float parts are torch's.
        """
        self.eval()
        parts = [m for m in self.modules() if isinstance(m, (QLinear, Attention))]
        for m in parts:
            m.integer = True
        try:
            with torch.no_grad():
                return self.predict(x)
        finally:
            for m in parts:
                m.integer = False

    @torch.no_grad()
    def integer_program(self, preprocessing: "Preprocessing", calibration: np.ndarray) -> "IntegerProgram":
        """This model's integer-only program (:mod:`model.intvit`), calibrated on raw training images."""
        from model.export import export_model
        from model.intvit import compile_program

        return compile_program(export_model(self.eval(), preprocessing), calibration)

    def set_stage(self, stage: int, stage1_scope: str = "mlp_weights") -> None:
        """0: full precision; 1: the part ``stage1_scope`` names quantized; 2: everything quantized.

        ``stage1_scope`` (:data:`STAGE1_SCOPES`, training only): ``mlp_weights``
        (fc1/fc2 weights binary, the default recipe), ``weights`` (every binary
        layer's weights: qkv, proj, fc1, fc2), ``weights_inputs`` (those weights
        and their input binarizers; Q, K, V, the attention map and the 8-bit
        patch embedding and heads wait for stage 2).
        """
        if stage not in (0, 1, 2):
            raise ValueError(f"stage must be 0, 1 or 2, got {stage}")
        if stage1_scope not in STAGE1_SCOPES:
            raise ValueError(f"stage1_scope must be one of {STAGE1_SCOPES}, got {stage1_scope!r}")
        if self.kind == "fp" and stage:
            raise ValueError("an fp model has no quantized stage")
        self.stage.fill_(stage)
        attn_weights = stage >= 2 or (stage == 1 and stage1_scope != "mlp_weights")
        inputs = stage >= 2 or (stage == 1 and stage1_scope == "weights_inputs")
        linears = []
        for blk in self.blocks:
            for lin in (blk.mlp.fc1, blk.mlp.fc2):
                lin.binary.fill_(stage >= 1)
            for lin in (blk.attn.qkv, blk.attn.proj):
                lin.binary.fill_(attn_weights)
            linears += [blk.attn.qkv, blk.attn.proj, blk.mlp.fc1, blk.mlp.fc2]
        for m in self.modules():
            if isinstance(m, FakeQuant):
                m.enabled.fill_(stage >= 2)
            if isinstance(m, Int8Linear):
                m.int8.fill_(stage >= 2)
        for lin in linears:
            if isinstance(lin.act, FakeQuant):
                lin.act.enabled.fill_(inputs)


@torch.no_grad()
def deploy_integer(program: "IntegerProgram", raw: np.ndarray, trace: "Trace | None" = None) -> torch.Tensor:
    """The integer deploy forward: int64 logits of raw pixel images, exactly the contract's.

    Every engine product is a torch int64 matrix product on the unpacked
    codes (:class:`model.intvit.ReferenceEngine`); every other step is the
    contract's integer operation (:mod:`model.intops`).  ``program`` comes
    from :meth:`ViT.integer_program`.
    """
    from model.intvit import ReferenceEngine, forward

    engine = ReferenceEngine(program, lambda a, b: (torch.from_numpy(a) @ torch.from_numpy(b)).numpy())
    return torch.from_numpy(forward(program, raw, engine, trace))


def build_model(cfg: ModelConfig, method: str) -> ViT:
    return ViT(cfg, method)


def model_bits(model: ViT) -> int:
    """Storage bits of the deployed model.

    Binary weight matrices: 1 bit per weight + a 32-bit scale; 8-bit layers:
    8 bits per weight + a 32-bit scale; everything else (biases, LayerNorm,
    tokens, position embedding, quantizer offsets/scales/thresholds): 32 bits.
    """
    bits = 0
    counted = set()
    for m in model.modules():
        if isinstance(m, QLinear) and bool(m.binary):
            bits += m.weight.numel() + 32
            counted.add(id(m.weight))
        elif isinstance(m, Int8Linear) and bool(m.int8):
            bits += 8 * m.weight.numel() + 32
            counted.add(id(m.weight))
    for p in model.parameters():
        if id(p) not in counted:
            bits += 32 * p.numel()
    for name, buf in model.named_buffers():
        if name.endswith(("running_max", "running_min", "running_scale")):
            bits += 32 * buf.numel()
    return int(bits)


@torch.no_grad()
def deploy_spec(model: ViT) -> dict:
    """The frozen quantities of the deploy forward, per binary layer (for the exporter).

    Returns ``{"blocks": [ {name: params} ... ], "stage": int}`` where for each
    block ``qkv``, ``proj``, ``fc1``, ``fc2`` hold ``weight_signs`` (int8
    +-1, shape (out, in)), ``weight_scale``, ``bias`` (float, added on the
    host) and ``input`` (the input quantizer's :meth:`deploy_params`); ``q``,
    ``k``, ``v``, ``attn`` hold their quantizer's deploy params.
    """
    if model.kind == "fp":
        raise ValueError("an fp model has no binary layers to export")
    out = {"stage": int(model.stage), "method": model.method, "blocks": []}
    for blk in model.blocks:
        d = {}
        for name, lin in (("qkv", blk.attn.qkv), ("proj", blk.attn.proj), ("fc1", blk.mlp.fc1), ("fc2", blk.mlp.fc2)):
            signs, scale = weight_planes(lin.weight)
            d[name] = {"weight_signs": signs, "weight_scale": float(scale), "bias": lin.bias.detach().clone(),
                       "input": lin.act.deploy_params()}
        d["q"] = blk.attn.q_quant.deploy_params()
        d["k"] = blk.attn.k_quant.deploy_params()
        d["v"] = blk.attn.v_quant.deploy_params()
        d["attn"] = blk.attn.a_quant.deploy_params()
        out["blocks"].append(d)
    return out
