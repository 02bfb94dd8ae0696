"""Training: a few steps lower the loss, resume reproduces an uninterrupted run, the CLI works."""

from __future__ import annotations

import json
import os

import pytest
import torch

from model.config import from_dict
from model.train import attention_distillation_loss, distillation_loss, hidden_distillation_loss, load_checkpoint, load_model, main, stage_plan, train
from model.vit import Taps, build_model

TINY = {
    "data": {"dataset": "digits", "samples_per_class": 10, "val_per_class": 5, "shift": 1},
    "model": {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0},
    "train": {"epochs": 4, "fp_epochs": 6, "batch_size": 32, "lr": 0.003, "warmup_epochs": 1},
}


def _log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_fp_training_lowers_loss_and_writes_metrics(tmp_path):
    out = str(tmp_path / "fp")
    m = train(from_dict(TINY), "fp", 0, out, progress=False)
    log = _log(out)
    assert len(log) == 6 and log[-1]["loss"] < log[0]["loss"]
    assert os.path.exists(os.path.join(out, "best.pt")) and 0 <= m["test_acc"] <= 100
    assert m["n_train"] == 100 and m["n_val"] == 50 and m["n_test"] == 540
    assert load_model(os.path.join(out, "best.pt")).method == "fp"


class _Touch:
    """Unpickles as ``open(marker, "w")``: a checkpoint that runs code when loaded with ``weights_only=False``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def test_hostile_checkpoint_is_refused_without_running_code(tmp_path):
    from model.export import main as export_main

    marker = tmp_path / "pwned"
    evil = {"model": {}, "opt": {}, "state": {"stage_idx": 0}, "config": TINY, "method": "fp", "seed": 0,
            "payload": _Touch(marker)}
    run = tmp_path / "run"
    run.mkdir()
    torch.save(evil, run / "last.pt")
    loads = [lambda: load_checkpoint(run / "last.pt"), lambda: load_model(run / "last.pt"),
             lambda: export_main([str(run / "last.pt"), str(tmp_path / "out.gsbf")]),
             lambda: train(from_dict(TINY), "fp", 0, str(run), progress=False, resume=True)]
    for load in loads:
        with pytest.raises(ValueError, match="refused"):
            load()
        assert not marker.exists()


def test_a_checkpoint_trained_before_the_rename_still_loads(tmp_path):
    """Stored checkpoints keep the old architecture keys (img_size, in_chans, patch); they load with the new ones."""
    from model.vit import Taps, build_model

    cfg = from_dict(TINY)
    old = {**cfg.to_dict(), "model": {{"image_size": "img_size", "in_channels": "in_chans", "patch_size": "patch"}.get(k, k): v
                                      for k, v in cfg.to_dict()["model"].items()}}
    torch.save({"model": build_model(cfg.model, "fp").state_dict(), "config": old, "method": "fp"}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["config"] == cfg.to_dict()
    assert load_model(tmp_path / "old.pt").cfg == cfg.model


def test_stage_plan():
    cfg = from_dict({**TINY, "train": {**TINY["train"], "epochs": 10, "stage1_fraction": 0.3}})
    assert stage_plan(cfg, "gsb", None) == [(1, 3), (2, 7)]
    assert stage_plan(cfg, "fp", None) == [(0, 6)]


def test_distillation_loss_hard_and_soft():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    t = torch.tensor([[0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    assert torch.allclose(distillation_loss(z, t), torch.nn.functional.cross_entropy(z, torch.tensor([1, 0])))
    for temp in (1.0, 4.0):  # by hand: T^2 * mean over the batch of sum p_t (log p_t - log p_z)
        pt, pz = torch.softmax(t / temp, -1), torch.softmax(z / temp, -1)
        want = temp ** 2 * (pt * (pt.log() - pz.log())).sum(-1).mean()
        assert torch.allclose(distillation_loss(z, t, "soft", temp), want)
    assert float(distillation_loss(t, t, "soft", 2.0)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kd must be"):
        distillation_loss(z, t, "ranking")


def test_stage1_scope_chooses_what_stage1_quantizes():
    cfg = from_dict(TINY).model
    m = build_model(cfg, "gsb")
    blk = m.blocks[0]
    lins = {"qkv": blk.attn.qkv, "proj": blk.attn.proj, "fc1": blk.mlp.fc1, "fc2": blk.mlp.fc2}
    others = [blk.attn.q_quant, blk.attn.k_quant, blk.attn.v_quant, blk.attn.a_quant]

    def state():
        return ({k: bool(v.binary) for k, v in lins.items()}, {k: bool(v.act.enabled) for k, v in lins.items()},
                [bool(q.enabled) for q in others], bool(m.head.int8))
    m.set_stage(1)  # default: today's recipe, MLP weights only
    assert state() == ({"qkv": False, "proj": False, "fc1": True, "fc2": True}, dict.fromkeys(lins, False),
                       [False] * 4, False)
    m.set_stage(1, "weights")
    assert state() == (dict.fromkeys(lins, True), dict.fromkeys(lins, False), [False] * 4, False)
    m.set_stage(1, "weights_inputs")
    assert state() == (dict.fromkeys(lins, True), dict.fromkeys(lins, True), [False] * 4, False)
    for scope in ("mlp_weights", "weights", "weights_inputs"):
        m.set_stage(2, scope)
        assert state() == (dict.fromkeys(lins, True), dict.fromkeys(lins, True), [True] * 4, True)
        m.set_stage(0, scope)
        assert state() == (dict.fromkeys(lins, False), dict.fromkeys(lins, False), [False] * 4, False)
    with pytest.raises(ValueError, match="stage1_scope"):
        m.set_stage(1, "attention")


@pytest.mark.parametrize("method,cut", [("fp", 8), ("gsb", 4), ("gsb", 8)])  # 4 steps per epoch
def test_resume_matches_uninterrupted(tmp_path, method, cut):
    cfg = lambda: from_dict(TINY)  # noqa: E731
    teacher = None
    if method != "fp":
        train(cfg(), "fp", 0, str(tmp_path / "fp"), progress=False)
        teacher = str(tmp_path / "fp" / "best.pt")
    full = str(tmp_path / "full")
    train(cfg(), method, 0, full, teacher_path=teacher, progress=False)
    part = str(tmp_path / "part")
    train(cfg(), method, 0, part, teacher_path=teacher, progress=False, max_steps=cut)  # "interrupted"
    assert len(_log(part)) == cut // 4
    train(cfg(), method, 0, part, teacher_path=teacher, progress=False, resume=True)
    a = load_checkpoint(os.path.join(full, "last.pt"))["model"]
    b = load_checkpoint(os.path.join(part, "last.pt"))["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    assert [r["loss"] for r in _log(full)] == pytest.approx([r["loss"] for r in _log(part)])


def test_cli_trains_teacher_then_gsb(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    import yaml
    cfg.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "seed0" / "gsb_nokd"
    assert main(["--config", str(cfg), "--method", "gsb_nokd", "--seed", "0", "--epochs", "3",
                 "--out", str(out), "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "gsb_nokd" and (tmp_path / "seed0" / "fp" / "metrics.json").exists()
    met = json.loads((out / "metrics.json").read_text())
    assert met["stage"] == 2 and met["teacher"] is None and met["model_bits"] < 32 * 20000


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--resume" in text and "gsb_ste" in text and "distillation" in text


@pytest.mark.slow
def test_digits_full_schedule_gsb_beats_one_base(tmp_path):
    """The shipped digits config, seed 0: GSB's validation accuracy exceeds the 1-base baseline's."""
    from model.config import load_config

    res = {m: train(load_config("configs/digits.yaml"), m, 0, str(tmp_path / m), progress=False)
           for m in ("fp", "gsb", "bin1")}
    assert res["gsb"]["val_acc"] > res["bin1"]["val_acc"]


def test_hidden_distillation_loss_compares_the_stream_shape_block_by_block():
    gen = torch.Generator().manual_seed(0)
    t = [torch.randn(3, 5, 8, generator=gen) for _ in range(2)]
    assert float(hidden_distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(hidden_distillation_loss([3 * h + 1 for h in t], t)) == pytest.approx(0.0, abs=1e-5)
    s = [torch.randn(3, 5, 8, generator=gen) for _ in range(2)]
    norm = [torch.nn.functional.layer_norm(h, (8,)) for h in s + t]
    want = 0.5 * sum(torch.mean((a - b) ** 2) for a, b in zip(norm[:2], norm[2:]))
    assert torch.allclose(hidden_distillation_loss(s, t), want)
    with pytest.raises(ValueError, match="one tensor per block"):
        hidden_distillation_loss(s[:1], t)


def test_attention_distillation_loss_is_the_mean_kl_of_the_rows():
    gen = torch.Generator().manual_seed(0)
    t = [torch.randn(2, 3, 5, 5, generator=gen).softmax(-1) for _ in range(2)]
    s = [torch.randn(2, 3, 5, 5, generator=gen).softmax(-1) for _ in range(2)]
    assert float(attention_distillation_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    want = sum(torch.nn.functional.kl_div(a.log(), b, reduction="none").sum(-1).mean() for a, b in zip(s, t)) / 2
    assert torch.allclose(attention_distillation_loss(s, t), want)
    assert float(attention_distillation_loss(s, t)) > 0
    with pytest.raises(ValueError, match="attention-map distillation"):
        attention_distillation_loss(s, t[:1])


def test_taps_hand_out_every_block_output_and_attention_map():
    cfg = from_dict({**TINY, "model": {**TINY["model"], "depth": 2}})
    model = build_model(cfg.model, "gsb").eval()
    taps = Taps(states=[], maps=[])
    x = torch.rand(2, 1, 8, 8)
    z = model.predict(x, taps)
    n = cfg.model.tokens
    assert len(taps.states) == 2 and all(h.shape == (2, n, 16) for h in taps.states)
    assert len(taps.maps) == 2 and all(a.shape == (2, cfg.model.heads, n, n) for a in taps.maps)
    assert torch.allclose(taps.maps[0].sum(-1), torch.ones(2, cfg.model.heads, n))
    assert torch.equal(z, model.predict(x))
    assert torch.equal(model.norm(taps.states[-1]), model.features(x))
    only_maps = Taps(maps=[])
    model.predict(x, only_maps)
    assert only_maps.states is None and len(only_maps.maps) == 2


@pytest.mark.parametrize("term", ["kd_hidden", "kd_attn"])
def test_inner_distillation_changes_the_student(tmp_path, term):
    """The same GSB run with the term's weight 0 and 1 (same FP teacher, same seed) ends with different weights."""
    teacher = str(tmp_path / "fp")
    train(from_dict(TINY), "fp", 0, teacher, progress=False, max_steps=2)
    weights = []
    for w in (0.0, 1.0):
        cfg = from_dict({**TINY, "train": {**TINY["train"], term: w}})
        out = str(tmp_path / f"gsb{w}")
        train(cfg, "gsb", 0, out, teacher_path=os.path.join(teacher, "best.pt"), progress=False, max_steps=3)
        weights.append(torch.load(os.path.join(out, "last.pt"), weights_only=True)["model"])
    diff = [k for k in weights[0] if weights[0][k].is_floating_point() and not torch.equal(weights[0][k], weights[1][k])]
    assert diff
