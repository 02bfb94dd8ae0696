"""The ViT family: stages, the eval (deploy) forward, and its integer plane form."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import golden
from model.config import ModelConfig
from model.gsb import FakeQuant
from model.vit import METHODS, build_model, deploy_spec, model_bits

CFG = ModelConfig(image_size=8, patch_size=2, dim=16, depth=2, heads=2, mlp_ratio=2.0)


def _trained_quant_model(method="gsb", seed=0):
    torch.manual_seed(seed)
    m = build_model(CFG, method)
    m.set_stage(2)
    m.train()
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 1 and p.requires_grad:
                p.normal_(0, 0.1)  # non-zero offsets so thresholds matter
        for _ in range(3):
            m(torch.randn(16, 1, 8, 8))  # initialises scales, fills the running statistics
    return m.eval()


@pytest.mark.parametrize("method", METHODS)
def test_shapes_and_predict(method):
    m = build_model(CFG, method)
    if method != "fp":
        m.set_stage(2)
    z, zd = m(torch.randn(3, 1, 8, 8))
    assert z.shape == (3, 10) and zd.shape == (3, 10)
    assert torch.allclose(m.eval().predict(torch.zeros(1, 1, 8, 8)), 0.5 * sum(m(torch.zeros(1, 1, 8, 8))))


def test_stages_switch_the_right_parts():
    m = build_model(CFG, "gsb")
    m.set_stage(1)
    blk = m.blocks[0]
    assert bool(blk.mlp.fc1.binary) and bool(blk.mlp.fc2.binary) and not bool(blk.attn.qkv.binary)
    assert not any(bool(q.enabled) for q in m.modules() if isinstance(q, FakeQuant))
    m.set_stage(2)
    assert bool(blk.attn.qkv.binary) and all(bool(q.enabled) for q in m.modules() if isinstance(q, FakeQuant))
    with pytest.raises(ValueError):
        build_model(CFG, "fp").set_stage(1)
    assert model_bits(m) < model_bits(build_model(CFG, "fp")) / 1.5  # tiny dims: float parts dominate


@pytest.mark.parametrize("method", ["gsb", "bin1"])
def test_eval_forward_is_batch_independent(method):
    m = _trained_quant_model(method)
    x = torch.randn(5, 1, 8, 8)
    others = 50 * torch.randn(7, 1, 8, 8)
    with torch.no_grad():
        for forward in (m.predict, m.deploy):  # each against itself: they round float sums differently
            alone = torch.cat([forward(x[i:i + 1]) for i in range(5)])
            mixed = forward(torch.cat([x, others]))[:5]
            assert torch.allclose(alone, mixed, atol=1e-5)


def _codes(z, groups):
    out = []
    for g in groups:
        p = {k: torch.tensor(v, dtype=torch.float32) for k, v in g["params"].items()}
        if g["rule"] == "sign":
            out.append(torch.where(z >= 0, 1, -1))
        elif g["rule"] == "step":
            out.append((z >= p["threshold"]).long())
        else:
            out.append(torch.where(z >= p["hi"], 1, torch.where(z <= p["lo"], -1, 0)))
    return out


def test_binary_linears_are_integer_plane_products():
    """qkv/proj/fc1/fc2 outputs == scales * golden integer plane products + bias."""
    m = _trained_quant_model()
    spec = deploy_spec(m)
    blk, d = m.blocks[0], spec["blocks"][0]
    x = torch.randn(4, CFG.tokens, CFG.dim)
    for name, lin, xin in (("qkv", blk.attn.qkv, x), ("fc1", blk.mlp.fc1, x),
                           ("fc2", blk.mlp.fc2, torch.rand(4, CFG.tokens, CFG.mlp_hidden) * 2)):
        p = d[name]
        grp = p["input"]["groups"]
        codes = _codes(xin + p["input"]["offset"], grp)
        assert len(codes) == 1
        xs = codes[0].reshape(-1, xin.shape[-1]).numpy()
        enc = grp[0]["encoding"]
        dint = golden.operand_product(golden.Operand.from_values(xs, enc), golden.Operand.from_values(
            p["weight_signs"].numpy().astype(np.int64), "bipolar"))
        y = grp[0]["scale"] * p["weight_scale"] * torch.from_numpy(dint).float() + p["bias"]
        with torch.no_grad():
            ref = lin(xin).reshape(-1, lin.out_features)
        assert torch.allclose(y, ref, atol=1e-4), name


def test_attention_value_product_as_group_planes():
    """A_hat @ V_hat == sum over (level i, V group k) of s_i t_k (P_i @ G_k) with golden products."""
    m = _trained_quant_model()
    d = deploy_spec(m)["blocks"][0]
    attn = m.blocks[0].attn
    n, c, h = CFG.tokens, CFG.dim, CFG.heads
    v = torch.randn(1, n, c)
    p = torch.softmax(torch.randn(1, h, n, n), -1)
    with torch.no_grad():
        vq = attn.v_quant(v).reshape(1, n, h, c // h).transpose(1, 2)
        ref = attn.a_quant(p) @ vq
    vcodes = _codes(v + d["v"]["offset"], d["v"]["groups"])
    acodes = _codes(p + d["attn"]["offset"], d["attn"]["groups"])
    for head in range(h):
        sl = slice(head * c // h, (head + 1) * c // h)
        ops_a = [golden.Operand.from_values(a[0, head].numpy().astype(np.int64), "unipolar") for a in acodes]
        # V^T rows are channels: D[i, j] = sum_token A[i, token] * V[token, j]
        ops_v = [golden.Operand.from_values(vc[0, :, sl].T.numpy().astype(np.int64), g["encoding"])
                 for vc, g in zip(vcodes, d["v"]["groups"])]
        dint = golden.group_products(ops_a, ops_v)
        s = np.array([g["scale"] for g in d["attn"]["groups"]])
        t = np.array([g["scale"] for g in d["v"]["groups"]])
        out = np.einsum("g,h,ghab->ab", s, t, dint.astype(np.float64))
        assert np.allclose(out, ref[0, head].numpy(), atol=1e-4)
