"""Benchmarks (``make bench``): each prints a table and writes its figures to ``bench/out/*.json``."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(report: object, path: Path) -> None:
    """Write ``report`` as JSON to ``path`` (its folder made if missing) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")
