"""The results matrix on a tiny config: json, markdown table and plot are written."""

from __future__ import annotations

import json

import torch
import yaml

from model.results import main

TINY = {
    "data": {"dataset": "digits", "samples_per_class": 10, "val_per_class": 5},
    "model": {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2},
    "train": {"epochs": 2, "fp_epochs": 2, "batch_size": 64, "warmup_epochs": 1},
}


def test_tiny_matrix(tmp_path, capsys):
    n = torch.get_num_threads()
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    args = ["--configs", str(cfg), "--methods", "fp", "gsb", "bin1", "--seeds", "0", "1",
            "--samples-per-class", "10", "--root", str(tmp_path / "runs"),
            "--results-dir", str(tmp_path / "results"), "--plot", str(tmp_path / "plot.png")]
    try:
        assert main(args) == 0
        assert main(args + ["--collect-only"]) == 0
        assert main(args) == 0  # finished runs are skipped
    finally:
        torch.set_num_threads(n)
    res = json.loads((tmp_path / "results" / "digits_spc10.json").read_text())
    assert set(res) == {"fp", "gsb", "bin1"} and res["gsb"]["n_seeds"] == 2
    table = (tmp_path / "results" / "table.md").read_text()
    assert "GSB − FP" in table and "±" in table
    assert (tmp_path / "plot.png").stat().st_size > 1000
    assert "done already" in capsys.readouterr().out
