"""Activation-aware and weight SVD: optimality, factors, the factored torch layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model.lowrank.svd import LowRankLinear, activation_spectrum, balance, weight_spectrum


def _problem(seed=0, n=400, d_in=12, d_out=20):
    rng = np.random.default_rng(seed)
    # anisotropic inputs: the activation-aware error differs from the weight error
    x = rng.normal(size=(n, d_in)) * np.geomspace(5.0, 0.05, d_in)
    w = rng.normal(size=(d_out, d_in))
    return x, w


@pytest.mark.parametrize("r", [1, 3, 7, 12])
def test_activation_aware_factors_are_the_optimal_rank_r_output_fit(r):
    x, w = _problem()
    spec = activation_spectrum(w, x)
    a, b = spec.factors(r)
    w_hat = (b @ a).double().numpy()
    err = np.sum((x @ w.T - x @ w_hat.T) ** 2)
    assert err == pytest.approx(spec.err[r], rel=1e-4, abs=1e-6 * spec.err[0])
    # the best rank-r output fit: Eckart-Young on Y = X W^T
    s = np.linalg.svd(x @ w.T, compute_uv=False)
    assert spec.err[r] == pytest.approx(np.sum(s[r:] ** 2), rel=1e-6, abs=1e-9 * spec.err[0])
    # and never worse on the output than the weight SVD of the same rank
    wa, wb = weight_spectrum(w).factors(r)
    err_w = np.sum((x @ w.T - x @ (wb @ wa).double().numpy().T) ** 2)
    assert err <= err_w * (1 + 1e-6) + 1e-6 * spec.err[0]


def test_weight_spectrum_is_eckart_young():
    _, w = _problem(1)
    spec = weight_spectrum(w)
    for r in (1, 5, 12):
        a, b = spec.factors(r)
        assert np.sum((w - (b @ a).double().numpy()) ** 2) == pytest.approx(spec.err[r], rel=1e-4, abs=1e-8)
    assert spec.err[-1] == 0 and spec.max_rank == 12
    with pytest.raises(ValueError):
        spec.factors(13)


def test_balance_keeps_the_product_and_equalises_norms():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 9, generator=g) * 10, torch.randn(6, 4, generator=g) * 0.1
    a2, b2 = balance(a, b)
    assert torch.allclose(b2 @ a2, b @ a, rtol=1e-5, atol=1e-5)
    assert torch.allclose(a2.norm(dim=1), b2.norm(dim=0), rtol=1e-5)


def test_low_rank_linear_merges_its_residual():
    g = torch.Generator().manual_seed(1)
    a, b, c, d = (torch.randn(*s, generator=g) for s in ((3, 8), (5, 3), (5, 2), (2, 8)))
    bias = torch.randn(5, generator=g)
    layer = LowRankLinear(a, b, bias, c, d)
    x = torch.randn(7, 8, generator=g)
    assert layer.rank == 5 and layer.params == 5 * 13
    assert torch.allclose(layer(x), x @ (b @ a + c @ d).T + bias, atol=1e-5)
    a2, b2 = layer.merged()
    assert a2.shape == (5, 8) and torch.allclose(x @ (b2 @ a2).T + bias, layer(x), atol=1e-5)
    assert [p.shape for p in layer.parameters() if p.requires_grad] == [c.shape, d.shape]
