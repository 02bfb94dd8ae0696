"""``python -m host.ptq_results --collect-only``: the committed records give the committed table."""

from __future__ import annotations

import shutil
from pathlib import Path

from host.ptq_results import main

RESULTS = Path(__file__).resolve().parents[2] / "results"


def test_collect_only_rebuilds_the_committed_table(tmp_path):
    for dataset in ("digits", "fashion_mnist"):
        shutil.copy(RESULTS / f"ptq_{dataset}.json", tmp_path)
    assert main(["--collect-only", "--out", str(tmp_path), "--plot", str(tmp_path / "ptq.png")]) == 0
    assert (tmp_path / "ptq_table.md").read_text() == (RESULTS / "ptq_table.md").read_text()
    assert (tmp_path / "ptq.png").stat().st_size > 0
