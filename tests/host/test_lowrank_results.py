"""``python -m host.lowrank_results --collect-only``: the committed records give the committed table."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from host.lowrank_results import main

RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_collect_only_rebuilds_the_committed_table(tmp_path, capsys):
    for dataset in ("digits", "fashion_mnist"):
        shutil.copy(RESULTS / f"lowrank_{dataset}.json", tmp_path)
    threads = torch.get_num_threads()
    try:
        assert main(["--collect-only", "--results-dir", str(tmp_path), "--plot", str(tmp_path / "lowrank.png")]) == 0
    finally:
        torch.set_num_threads(threads)  # the driver runs on one thread
    assert (tmp_path / "lowrank_table.md").read_text() == (RESULTS / "lowrank_table.md").read_text()
    assert (tmp_path / "lowrank.png").stat().st_size > 0
