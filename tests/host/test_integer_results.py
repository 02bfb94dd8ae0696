"""``python -m host.integer_results`` on a tiny trained run: the measures and the table."""

from __future__ import annotations

import torch
import yaml

from host.integer_results import evaluate, table_md
from model.results import main as results_main

TINY = {
    "data": {"dataset": "digits", "samples_per_class": 10, "val_per_class": 5},
    "model": {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2},
    "train": {"epochs": 2, "fp_epochs": 2, "batch_size": 64, "warmup_epochs": 1},
}


def test_evaluate_a_tiny_run_and_tabulate(tmp_path):
    n = torch.get_num_threads()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    try:
        assert results_main(["--configs", str(cfg), "--methods", "fp", "gsb", "--seeds", "0", "--samples-per-class", "10",
                             "--root", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "r"),
                             "--plot", str(tmp_path / "p.png")]) == 0
        r = evaluate(str(tmp_path / "runs/digits/spc10/seed0/gsb/best.pt"), progress=False)
    finally:
        torch.set_num_threads(n)
    assert r["images"] == 540 and r["torch_equals_emulator_logits"] == 1.0 and r["steps_equal_on_sample"]
    assert r["float_steps"] == 0 and 0 <= r["integer_acc"] <= 100
    table = table_md({"digits": [r, dict(r, integer_acc=r["integer_acc"] - 1.0)]})
    assert "| digits | 2 |" in table and "100%" in table
