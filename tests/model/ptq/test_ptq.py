"""PTQ: quantizer rules, engine layers, search, mixed precision, export and the runtime equality.

Fast tests use a small random ViT (untrained) and a few digits images; the
trained-model checks (whole digits test split on the EmulatorBackend) are
``@pytest.mark.slow``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from host.ptq_results import run_runtime, sim_backend
from model import golden, modelfile
from model.config import ModelConfig
from model.layers import EngineLinear, EngineMatmul
from model.ptq import mixed
from model.ptq.export import export_ptq
from model.ptq.quant import (ActQ, LinearSpec, MatmulSpec, QModel, build_layers, codes_t, engine_layer_names,
                             fit_coef_bits, int_matmul, weight_codes)
from model.ptq.search import (RankLoss, SearchConfig, baseline_spec, calibration_indices, capture, pearson,
                              search_linear, search_model, search_qk)
from model.vit import ViT

torch.set_num_threads(1)

CFG = ModelConfig(image_size=8, in_channels=1, patch_size=2, dim=32, depth=2, heads=2, mlp_ratio=2.0, cls_token=True,
                  distillation_token=True, drop_path=0.0, num_classes=10)


def small_model(seed: int = 0) -> ViT:
    torch.manual_seed(seed)
    m = ViT(CFG, "fp")
    with torch.no_grad():  # larger weights than the init so that the products are not all near zero
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(10.0)
    return m.eval()


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 1, 8, 8)).astype(np.float32)


# ------------------------------------------------------------------ quantizer rules


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_codes_match_quantizer_rule(bits, signed):
    """torch codes == model.quantizers' numpy rule, half-way points and clipping included."""
    rng = np.random.default_rng(bits)
    q = ActQ(bits, 0.37, signed)
    x = np.concatenate([rng.normal(scale=3, size=500), (np.arange(-20, 20) + 0.5) * np.float32(q.step)]).astype(np.float32)
    ref = q.quantizer().codes(x)[0]
    assert np.array_equal(codes_t(torch.from_numpy(x), q).numpy().astype(np.int64), ref)
    lo, hi = golden.Encoding("int" if signed else "uint", bits).value_range
    assert ref.min() >= lo and ref.max() <= hi


def test_steps_are_float32():
    q = ActQ(4, 0.1)
    assert q.step == float(np.float32(0.1))
    assert q.quantizer().groups[0].scale == q.quantizer().groups[0].params["step"]


def test_int_matmul_exact():
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, size=(7, 300))
    b = rng.integers(-128, 128, size=(300, 5))
    assert np.array_equal(int_matmul(torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)).numpy(), a @ b)
    a = rng.integers(-2**15, 2**15, size=(3, 50))
    assert np.array_equal(int_matmul(torch.tensor(a, dtype=torch.float64), torch.tensor(a.T, dtype=torch.float64)).numpy(), a @ a.T)


def test_fit_coef_bits_fits_accumulator():
    x, w = ActQ(8, 0.013), ActQ(8, 0.002)
    cb = fit_coef_bits(x, w, 128, 1.0, 30)
    assert cb < 18
    lin = EngineLinear(x.quantizer(), (golden_weight(w, 128),), None, cb)
    _, coefs = lin.coefficients
    assert abs(int(coefs[0, 0])) * 128 * 255 * 255 <= 2**29 - 1
    assert fit_coef_bits(x, w, 128, 1.0, None) == 18


def golden_weight(w: ActQ, n: int):
    from model.layers import WeightGroup

    codes = np.zeros((3, n), dtype=np.int64)
    return WeightGroup(golden.Operand.from_values(codes, w.encoding), w.step)


# ------------------------------------------------------------------ engine layers and the torch forward


def test_engine_linear_equals_golden():
    """QModel's linear product == the golden model's packed bit-plane product (b_x * b_w plane pairs)."""
    m = small_model()
    cap = capture(m, images(4))
    spec = baseline_spec(m, cap, 4, "minmax")
    layers = build_layers(m, spec)
    q = QModel(m, layers)
    name = "blocks.0.mlp.fc1"
    layer = layers[name]
    x = cap[name].reshape(-1, CFG.dim)
    ours = q.linear(name, m.blocks[0].mlp.fc1, x).numpy()
    from model.deploy import linear_output

    ref = linear_output(layer, x.numpy(), 64)
    assert np.array_equal(ours, ref)
    (wg,) = layer.weights
    assert wg.operand.encoding == golden.Encoding("int", 4) and len(wg.operand.planes) == 4
    assert len(layer.input.operands(x.numpy(), 64)[0].planes) == 4


def test_fp_forward_matches_torch_model():
    m = small_model()
    x = torch.from_numpy(images(6))
    with torch.no_grad():
        ref = m.predict(x)
    assert torch.allclose(QModel(m).logits(x), ref, atol=1e-4)


def test_runtime_equals_torch_quantized_forward(tmp_path):
    """Exported file on the EmulatorBackend: the same predictions (and near-identical logits) as QModel."""
    m = small_model()
    cx = images(8, 1)
    spec, _ = search_model(m, cx, 4, SearchConfig(candidates=8, rounds=2))
    spec = _mixed_bits(spec)
    mf = _export(m, spec, tmp_path)
    raw = np.rint(np.random.default_rng(2).uniform(0, 16, size=(6, 1, 8, 8))).astype(np.float32)
    r = run_runtime(mf, raw)
    x = np.stack([mf.preprocessing.apply(img) for img in raw])
    lt = QModel(m, build_layers(m, spec)).logits(torch.from_numpy(x)).numpy()
    assert np.array_equal(r["predictions"], lt.argmax(-1))
    assert np.abs(r["logits"] - lt).max() < 1e-3
    # every engine layer is int/uint planes, b_x * b_w plane pairs
    for name, layer in mf.layers.items():
        if isinstance(layer, EngineLinear):
            assert layer.weights[0].operand.encoding.name == "int"
            assert layer.input.groups[0].encoding.name == "int"
        elif isinstance(layer, EngineMatmul):
            assert layer.x.groups[0].encoding.name == ("uint" if name.endswith("av") else "int")
    assert r["cycles_per_image"] > 0


def _at_bits(s, bits):
    """A 4-bit layer spec re-quantized at ``bits``: both operands' steps scaled by ``2 ** (4 - bits)``."""
    from dataclasses import replace

    f = 2.0 ** (bits - 4)
    if isinstance(s, LinearSpec):
        return LinearSpec(replace(s.x, bits=bits, step=s.x.step / f), replace(s.w, bits=bits, step=s.w.step / f), s.bias)
    return MatmulSpec(replace(s.x, bits=bits, step=s.x.step / f), replace(s.y, bits=bits, step=s.y.step / f))


def _mixed_bits(spec):
    """Some layers at 6 and 8 bits (re-quantized at the same steps scaled) to cover several widths."""
    return {name: _at_bits(s, 8 if "attn" in name else 6) if name.startswith("blocks.1") else s
            for name, s in spec.items()}


def _export(m, spec, tmp_path):
    from model.export import export_model
    from model.modelfile import Preprocessing

    mf = export_model(m, Preprocessing(16.0, 0.3, 0.4, "digits"), overrides=build_layers(m, spec))
    path = tmp_path / "ptq.gsbf"
    modelfile.save(mf, path)
    return modelfile.load(path)


def test_sim_backend_predicts_as_torch(tmp_path):
    sb = sim_backend()
    m = small_model()
    spec = baseline_spec(m, capture(m, images(4)), 4, "minmax")
    mf = _export(m, spec, tmp_path)
    raw = np.rint(np.random.default_rng(3).uniform(0, 16, size=(2, 1, 8, 8))).astype(np.float32)
    x = np.stack([mf.preprocessing.apply(img) for img in raw])
    lt = QModel(m, build_layers(m, spec)).logits(torch.from_numpy(x)).numpy()
    assert np.array_equal(run_runtime(mf, raw, sb)["predictions"], lt.argmax(-1))


# ------------------------------------------------------------------ search


def test_pearson_and_rank_loss():
    y = torch.randn(3, 5, 7)
    assert pearson(y, 2 * y + 1) == pytest.approx(1.0)
    assert pearson(y, -y) == pytest.approx(-1.0)
    s = torch.tensor([[[0.0, 1.0, 2.0]]])
    rl = RankLoss(s, theta=0.2)
    assert rl(s) == pytest.approx(0.0)                      # every difference >= 1 > theta
    assert rl(-s) == pytest.approx(np.mean([1.2, 2.2, 1.2]))  # reversed order is penalised


def test_search_beats_minmax_on_outliers():
    """With a few large outliers, the searched steps correlate better than min-max."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 8)
    x = torch.randn(20, 6, 16)
    x[0, 0, 0] = 40.0
    res = search_linear(x, lin, 4, SearchConfig(candidates=20, bias_correction=False))
    y = x @ lin.weight.detach().T + lin.bias.detach()
    from model.ptq.quant import fake_quant
    from model.ptq.search import max_step

    qx, qw = ActQ(4, max_step(x, ActQ(4, 1.0))), ActQ(4, max_step(lin.weight.detach(), ActQ(4, 1.0)))
    mm = pearson(y, fake_quant(x, qx) @ fake_quant(lin.weight.detach(), qw).T + lin.bias.detach())
    assert res.pearson > mm
    assert 0.5 * qx.step <= res.spec.x.step <= 1.2 * qx.step * (1 + 1e-6)


def test_bias_correction_removes_mean_error():
    torch.manual_seed(1)
    lin = torch.nn.Linear(16, 8)
    x = torch.relu(torch.randn(30, 6, 16))
    res = search_linear(x, lin, 3, SearchConfig(candidates=10))
    from model.ptq.quant import fake_quant

    s = res.spec
    yq = fake_quant(x, s.x) @ fake_quant(lin.weight.detach(), s.w).T + torch.from_numpy(s.bias)
    y = x @ lin.weight.detach().T + lin.bias.detach()
    assert (y - yq).reshape(-1, 8).mean(0).abs().max() < 1e-4


def test_search_qk_rank_changes_objective():
    torch.manual_seed(2)
    q, k = torch.randn(4, 2, 9, 8), torch.randn(4, 2, 9, 8)
    a = search_qk(q, k, 4, SearchConfig(candidates=10, rank=False))
    b = search_qk(q, k, 4, SearchConfig(candidates=10, rank=True))
    assert b.objective < b.pearson          # the ranking loss is subtracted
    assert a.objective == a.pearson


def test_search_cache_and_layer_names():
    m = small_model()
    cx = images(6)
    cache: dict = {}
    sp1, _ = search_model(m, cx, 4, SearchConfig(candidates=6, rounds=2, rank=False, bias_correction=False, sequential=False), cache=cache)
    n = len(cache)
    sp2, _ = search_model(m, cx, 4, SearchConfig(candidates=6, rounds=2, bias_correction=False, sequential=False), cache=cache)
    assert set(sp1) == set(engine_layer_names(CFG.depth))
    assert len(cache) == n + CFG.depth                 # only the Q K^T layers searched again
    assert sp1["blocks.0.mlp.fc1"] == sp2["blocks.0.mlp.fc1"]
    seq, _ = search_model(m, cx, 4, SearchConfig(candidates=6, rounds=2))
    assert set(seq) == set(sp1) and seq["blocks.0.attn.qkv"] == sp2["blocks.0.attn.qkv"]  # the first layer sees FP inputs


def test_calibration_indices_seeded():
    a, b = calibration_indices(1000, 100, 0), calibration_indices(1000, 100, 1)
    assert len(set(a)) == 100 and np.array_equal(a, calibration_indices(1000, 100, 0)) and not np.array_equal(a, b)


# ------------------------------------------------------------------ mixed precision


def test_mixed_precision_assignment():
    m = small_model()
    cx = images(6)
    cap = capture(m, cx)
    specs = {b: baseline_spec(m, cap, b, "minmax") for b in (4, 6, 8)}
    sens = mixed.sensitivities(m, cx, specs, cap)
    blocks = mixed.blocks(CFG.depth)
    assert set(sens["omega"]) == set(blocks)
    for k in blocks:
        assert sens["error"][k][8] <= sens["error"][k][4]
    assign = mixed.assign_bits(m, sens["omega"], 5.0)
    bits = mixed.layer_bits(assign)
    assert mixed.mean_weight_bits(m, bits) <= 5.0 + 1e-9
    assert mixed.assign_bits(m, sens["omega"], 8.0) == {k: 8 for k in blocks}
    with pytest.raises(ValueError):
        mixed.assign_bits(m, sens["omega"], 3.0)
    spec = mixed.compose(specs, bits)
    assert all(spec[n].x.bits == b for n, b in bits.items())


def test_hidden_depth_budget_weights():
    m = small_model()
    assert mixed.block_weights(m, "blocks.0.attn") == 4 * CFG.dim * CFG.dim
    assert mixed.block_weights(m, "blocks.0.mlp") == 2 * CFG.dim * CFG.mlp_hidden


# ------------------------------------------------------------------ trained models (slow)


DIGITS_FP = "runs/results/digits/spc100/seed0/fp/best.pt"


@pytest.mark.slow
def test_digits_test_split_emulator_equals_torch(tmp_path):
    """The whole digits test split: EmulatorBackend predictions == the torch quantized forward (W4A4 and mixed)."""
    if not os.path.exists(DIGITS_FP):
        pytest.skip("train the FP digits model first (python -m host.ptq_results trains it)")
    from host.cli import test_images
    from model.data import load_splits
    from model.ptq.export import torch_inputs
    from model.train import load_model

    m = load_model(DIGITS_FP)
    s = load_splits("digits", 100, 20, 0)
    cx = s.train.x[calibration_indices(len(s.train.y), 100, 0)]
    spec, _ = search_model(m, cx, 4, SearchConfig())
    for sp in (spec, _mixed_bits_depth(spec)):
        mf = export_ptq(DIGITS_FP, m, sp)
        path = tmp_path / "m.gsbf"
        modelfile.save(mf, path)
        mf = modelfile.load(path)
        raw, _ = test_images(mf.preprocessing.dataset)
        lt = QModel(m, build_layers(m, sp)).logits(torch.from_numpy(torch_inputs(mf, raw))).numpy()
        r = run_runtime(mf, raw)
        assert np.array_equal(r["predictions"], lt.argmax(-1))


def _mixed_bits_depth(spec):
    """The first block at 8 bits, the rest at 4."""
    return {name: _at_bits(s, 8 if name.startswith("blocks.0") else 4) for name, s in spec.items()}


def test_int8_layers_fit_the_accelerator_accumulator():
    """With the fitted coefficient formats every W8A8 layer compiles for the default accelerator (30-bit accumulator)."""
    from dataclasses import replace as dc_replace

    from hw.config import DEFAULT
    from hw.program import compile_layer, repack
    from model.deploy import head_operands

    config = dc_replace(DEFAULT, y_depth=4096, x_depth=128)       # room for the weights; max_n and acc_bits unchanged
    assert config.acc_bits == 30
    m = small_model()
    cap = capture(m, images(4))
    spec = baseline_spec(m, cap, 8, "minmax")
    for acc_bits, ok in ((30, True), (None, False)):
        layers = build_layers(m, spec, acc_bits=acc_bits)
        fits = []
        for name in ("blocks.0.mlp.fc2", "blocks.0.attn.qk"):
            layer = layers[name]
            if isinstance(layer, EngineLinear):
                x = cap[name].reshape(-1, cap[name].shape[-1])[:1].numpy()
                gx, gy = layer.input.operands(x, 64), [w.operand for w in layer.weights]
            else:
                q, k = cap[name]
                t = q.shape[2]
                q2 = q[0].transpose(0, 1).reshape(t, -1).numpy()
                k2 = k[0].transpose(0, 1).reshape(t, -1).numpy()
                gx, gy = head_operands(layer, q2[:1], k2, CFG.heads, False, 64)[0]
            try:
                compile_layer(config, [repack(g, 16) for g in gx], [repack(g, 16) for g in gy], layer.coefficients[1])
                fits.append(True)
            except ValueError as exc:
                assert "accumulator" in str(exc)
                fits.append(False)
        assert fits == [ok, ok]
