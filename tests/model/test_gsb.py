"""GSB quantizers: forward values, gradients against hand computation, frozen thresholds."""

from __future__ import annotations

import math

import pytest
import torch

from model.gsb import (AttnLevelFn, AttnQuant, SignFn, SignQuant, UnsignedFn, UnsignedQuant, VGroupFn,
                       VGroupQuant, binarize_weight, bipolar, weight_planes)


def test_bipolar_sign_of_zero_is_plus_one():
    assert bipolar(torch.tensor([-2.0, 0.0, 3.0])).tolist() == [-1.0, 1.0, 1.0]


def test_weight_binarization_value_and_identity_grad():
    w = torch.tensor([[1.0, -2.0], [3.0, 0.0]], requires_grad=True)
    q = binarize_weight(w)
    # mean = 0.5, mean|w| = 1.5: sign(w - 0.5) * 1.5
    assert q.tolist() == [[1.5, -1.5], [1.5, -1.5]]
    q.sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    signs, scale = weight_planes(w)
    assert signs.dtype == torch.int8 and signs.tolist() == [[1, -1], [1, -1]] and float(scale) == 1.5


def _grads(fn, x, alpha, *extra):
    x = x.clone().requires_grad_(True)
    alpha = alpha.clone().requires_grad_(True)
    y = fn.apply(x, alpha, *extra)
    g = torch.arange(1, x.numel() + 1, dtype=torch.float32).reshape(x.shape)
    (y * g).sum().backward()
    return y.detach(), x.grad, alpha.grad, g


def test_sign_fn_code_gradient_by_hand():
    x = torch.tensor([-3.0, -0.5, 0.0, 1.0, 2.5])
    a = torch.tensor([2.0])
    y, gx, ga, g = _grads(SignFn, x, a, "code")
    assert y.tolist() == [-2.0, -2.0, 2.0, 2.0, 2.0]
    mid = [0.0, 1.0, 1.0, 1.0, 0.0]
    assert gx.tolist() == [gi * m for gi, m in zip(g.tolist(), mid)]
    q = [-1, -1, 1, 1, 1]
    expect = sum(gi * (qi - m * xi / 2.0) for gi, qi, m, xi in zip(g.tolist(), q, mid, x.tolist())) / math.sqrt(5)
    assert ga.item() == pytest.approx(expect)


def test_sign_fn_ste_gradient_by_hand():
    x = torch.tensor([-3.0, -0.5, 0.0, 1.0, 2.5])
    y, gx, ga, g = _grads(SignFn, x, torch.tensor([2.0]), "ste")
    assert gx.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    assert ga.item() == pytest.approx(-1 - 2 + 3 + 4 + 5)


def test_unsigned_fn_value_and_gradient():
    x = torch.tensor([-1.0, 0.2, 0.5, 0.9, 3.0])
    y, gx, ga, g = _grads(UnsignedFn, x, torch.tensor([1.0]), "code")
    assert y.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]  # round half up at x = alpha/2
    assert gx.tolist() == [0.0, 2.0, 3.0, 4.0, 0.0]
    # big: 1; mid: q - x/alpha
    expect = (2 * (0 - 0.2) + 3 * (1 - 0.5) + 4 * (1 - 0.9) + 5 * 1) / math.sqrt(5)
    assert ga.item() == pytest.approx(expect)


V = torch.tensor([-10.0, -8.0, -1.0, 0.0, 0.5, 6.5, 9.5, 10.0])


def test_vgroup_forward_superposition():
    # vmax = 10, vmin = -10: M1 = |v| >= 7, M2 = |v| >= 9
    a = torch.tensor([1.0, 2.0, 4.0])
    y = VGroupFn.apply(V, a, torch.tensor(10.0), torch.tensor(-10.0), "code")
    assert y.tolist() == [-7.0, -3.0, -1.0, 1.0, 1.0, 1.0, 7.0, 7.0]


def test_vgroup_code_vs_ramp_gradients():
    a = torch.tensor([1.0, 2.0, 4.0])
    vmax, vmin = torch.tensor(10.0), torch.tensor(-10.0)
    _, gx_code, ga_code, g = _grads(VGroupFn, V, a, vmax, vmin, "code")
    _, gx_ramp, ga_ramp, _ = _grads(VGroupFn, V, a, vmax, vmin, "ramp")
    gl = g.tolist()
    # code: [|v|<=1] + [|v*M1|<=2] + [|v*M2|<=4]; outside a mask the masked input is 0 -> indicator 1
    m1 = [1, 1, 0, 0, 0, 0, 1, 1]
    m2 = [1, 0, 0, 0, 0, 0, 1, 1]
    mid0 = [0, 0, 1, 1, 1, 0, 0, 0]
    code = [gl[i] * (mid0[i] + (1 - m1[i]) + (1 - m2[i])) for i in range(8)]
    assert gx_code.tolist() == code
    # ramp: ramps of width a_k at +-7 (k=1) and +-9 (k=2)
    near1 = [abs(abs(v) - 7) <= 1 for v in V.tolist()]
    near2 = [abs(abs(v) - 9) <= 2 for v in V.tolist()]
    ramp = [gl[i] * (mid0[i] + near1[i] + near2[i]) for i in range(8)]
    assert gx_ramp.tolist() == ramp
    assert torch.allclose(ga_code, ga_ramp)
    # scale gradient of group 2 (M1 has 4 entries): sum g*(q*M1 - mid*v*M1/a2) / sqrt(4); mid on M1 is 0 here
    q = bipolar(V).tolist()
    expect = sum(gl[i] * q[i] * m1[i] for i in range(8)) / 2.0
    assert ga_code[1].item() == pytest.approx(expect)


def test_vgroup_ste_gradient():
    a = torch.tensor([1.0, 2.0, 4.0])
    _, gx, ga, g = _grads(VGroupFn, V, a, torch.tensor(10.0), torch.tensor(-10.0), "ste")
    assert gx.tolist() == [0, 0, 3, 4, 5, 0, 0, 0]
    q = bipolar(V)
    assert ga[0].item() == pytest.approx(float((g * q).sum()))


def test_attention_levels_forward_and_gradients():
    a = torch.tensor([0.0, 0.05, 0.3, 0.72, 0.95, 1.0])
    al = torch.tensor([0.1, 0.2, 0.3])
    amax = torch.tensor(1.0)
    y, gx, ga, g = _grads(AttnLevelFn, a, al, amax, "code")
    # level 0: [A >= 0.05] * 0.1; level 1: [A >= 0.7] * 0.2; level 2: [A >= 0.9] * 0.3
    assert y.tolist() == pytest.approx([0.0, 0.1, 0.1, 0.3, 0.6, 0.6])
    gl = g.tolist()
    mid = [1, 1, 0, 0, 0, 0]
    m1 = [0, 0, 0, 1, 1, 1]
    m2 = [0, 0, 0, 0, 1, 1]
    code = [gl[i] * (mid[i] + 0.2 * m1[i] + 0.3 * m2[i]) for i in range(6)]
    assert gx.tolist() == pytest.approx(code)
    assert ga[1].item() == pytest.approx(sum(gl[i] * m1[i] for i in range(6)) / math.sqrt(3))
    _, gx_r, _, _ = _grads(AttnLevelFn, a, al, amax, "ramp")
    ramp = [gl[i] * (mid[i] + (abs(a[i].item() - 0.7) <= 0.1) + (abs(a[i].item() - 0.9) <= 0.15)) for i in range(6)]
    assert gx_r.tolist() == pytest.approx(ramp)


@pytest.mark.parametrize("make", [
    lambda: SignQuant(4), lambda: UnsignedQuant(4), lambda: VGroupQuant(4), lambda: SignQuant(4, scale="mean"),
    lambda: AttnQuant(1, 4), lambda: AttnQuant(1, 4, levels=1, scale="mean"),
])
def test_eval_thresholds_frozen_and_batch_independent(make):
    torch.manual_seed(0)
    q = make()
    q.enabled.fill_(True)
    q.train()
    for _ in range(3):
        x = torch.rand(8, 4, 4) if isinstance(q, AttnQuant) else torch.randn(8, 5, 4)
        q(x)
    q.eval()
    state = {k: v.clone() for k, v in q.state_dict().items()}
    x = torch.rand(6, 4, 4) if isinstance(q, AttnQuant) else torch.randn(6, 5, 4)
    big = torch.cat([x, 100 * torch.randn_like(x)])  # an outlier batch-mate must change nothing
    with torch.no_grad():
        alone = torch.cat([q(x[i:i + 1]) for i in range(len(x))])
        together = q(big)[: len(x)]
    assert torch.equal(alone, together)
    assert all(torch.equal(v, q.state_dict()[k]) for k, v in state.items())


def test_deploy_params_reproduce_eval_forward():
    torch.manual_seed(1)
    for q in (SignQuant(4), UnsignedQuant(4), VGroupQuant(4), AttnQuant(2, 4)):
        q.enabled.fill_(True)
        shape = (5, 2, 4, 4) if isinstance(q, AttnQuant) else (5, 3, 4)
        with torch.no_grad():
            q.bias.normal_()
        q.train()
        q(torch.rand(shape) if isinstance(q, AttnQuant) else torch.randn(shape))
        q.eval()
        x = torch.rand(shape) if isinstance(q, AttnQuant) else torch.randn(shape)
        p = q.deploy_params()
        z = x + p["offset"]
        total = torch.zeros_like(z)
        for grp in p["groups"]:
            par = {k: torch.tensor(v, dtype=torch.float32) for k, v in grp["params"].items()}
            if grp["rule"] == "sign":
                code = torch.where(z >= 0, 1.0, -1.0)
            elif grp["rule"] == "step":
                code = (z >= par["threshold"]).float()
            else:
                code = torch.where(z >= par["hi"], 1.0, torch.where(z <= par["lo"], -1.0, 0.0))
            total = total + grp["scale"] * code
        with torch.no_grad():
            assert torch.allclose(q(x), total, atol=1e-6)
