"""The import contracts of ``pyproject.toml``: each folder imports only the ones below it
(bench, sim, host, hw, model) and Amaranth stays in the gateware and the sim backend.

``make test`` runs this, so a wrong import fails it; ``lint-imports`` prints the same report.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parent.parent


def test_every_import_contract_is_kept(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))  # the packages are analysed from this checkout
    monkeypatch.chdir(ROOT)
    config = ROOT / "pyproject.toml"
    contracts = tomllib.loads(config.read_text())["tool"]["importlinter"]["contracts"]
    code = lint_imports(config_filename=str(config), no_cache=True, no_logo=True)
    report = capsys.readouterr().out
    assert code == 0 and f"{len(contracts)} kept, 0 broken" in report, report
