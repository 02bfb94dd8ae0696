"""``python -m host infer``: backends, the JSON summary, --compare."""

from __future__ import annotations

import json

import pytest

from host.cli import EMULATOR_BATCH, main
from model import modelfile
from model.random_model import random_model


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "tiny.gsbf"
    modelfile.save(random_model(), path)
    return path


def test_infer_on_the_emulator_writes_the_summary(model_file, tmp_path, capsys):
    out = tmp_path / "summary.json"
    assert main(["infer", "--model", str(model_file), "--limit", "3", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["images"] == 3 and len(summary["predictions"]) == 3
    assert summary["compute_bound_images_per_s"] > 0
    assert "accuracy" in capsys.readouterr().out


def test_serial_without_a_board_fails_clearly(model_file, capsys):
    assert main(["infer", "--model", str(model_file), "--backend", "serial", "--port", "/dev/gsbflow-none", "--quiet"]) == 1
    assert "cannot open serial port '/dev/gsbflow-none'" in capsys.readouterr().err
    assert main(["infer", "--model", str(model_file), "--backend", "serial", "--quiet"]) == 1
    assert "needs --port" in capsys.readouterr().err


@pytest.mark.sim
def test_compare_emulator_and_sim(model_file, tmp_path, capsys):
    out = tmp_path / "compare.json"
    assert main(["infer", "--model", str(model_file), "--compare", "emulator", "sim", "--limit", "2", "--quiet",
                 "--batch", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["differences"] == []
    sim = result["compare"][1]
    assert result["compare"][0]["batch"] == 2 and sim["batch"] == 1  # a device streams image by image
    assert sim["bytes_sent_per_image"] > 0 and sim["link_bound_images_per_s"] > 0
    assert "differ on 0 of 2 images" in capsys.readouterr().out


def test_batch_size_does_not_change_the_predictions(model_file, tmp_path):
    runs = {}
    for batch in (None, "1", "2"):
        out = tmp_path / f"b{batch}.json"
        assert main(["infer", "--model", str(model_file), "--limit", "5", "--quiet", "--json", str(out)]
                    + (["--batch", batch] if batch else [])) == 0
        runs[batch] = json.loads(out.read_text())
    assert runs[None]["batch"] == EMULATOR_BATCH and runs["1"]["batch"] == 1 and runs["2"]["batch"] == 2
    assert runs[None]["predictions"] == runs["1"]["predictions"] == runs["2"]["predictions"]
    assert runs[None]["engine_cycles_per_image"] == runs["1"]["engine_cycles_per_image"] == runs["2"]["engine_cycles_per_image"]


@pytest.mark.parametrize("limit", ["0", "-3"])
def test_limit_below_one_is_a_usage_error(model_file, capsys, limit):
    with pytest.raises(SystemExit) as info:
        main(["infer", "--model", str(model_file), "--limit", limit, "--quiet"])
    assert info.value.code == 2 and "--limit: must be at least 1" in capsys.readouterr().err


def test_unwritable_json_fails_before_the_run(model_file, tmp_path, capsys, monkeypatch):
    import host.cli

    monkeypatch.setattr(host.cli, "infer", lambda *a, **k: pytest.fail("ran although --json cannot be written"))
    (tmp_path / "file").write_text("")
    for bad in (tmp_path / "file" / "out.json", tmp_path):
        assert main(["infer", "--model", str(model_file), "--limit", "1", "--quiet", "--json", str(bad)]) == 2
        assert "cannot write --json" in capsys.readouterr().err
    host.cli._check_writable(str(tmp_path / "new" / "x.json"))
    assert not (tmp_path / "new" / "x.json").exists()  # the probe leaves no empty summary behind


def test_json_summary_has_no_bare_nan(tmp_path):
    from host.cli import _write_json

    out = tmp_path / "s.json"
    _write_json(str(out), {"accuracy": float("nan"), "rates": [1.0, float("inf")]})
    assert json.loads(out.read_text()) == {"accuracy": None, "rates": [1.0, None]}
    assert "NaN" not in out.read_text()


def test_config_and_clock_reach_the_backends(monkeypatch):
    """--config picks the simulated preset too, --clock-mhz the device backends' clock, not only the printed bound."""
    import host.serial_backend
    from host.cli import make_backend
    from host.sim_backend import SIM_CONFIG
    from hw.config import DEFAULT, ECP5, SMALL, UP5K

    sim = make_backend("sim", config="small", clock_mhz=25.0)
    assert sim.config == SMALL and sim.clock_hz == sim.link.clock_hz == 25e6
    assert make_backend("sim").config == SIM_CONFIG
    seen = {}

    def serial(port, baud, config, **kwargs):
        seen.update(port=port, baud=baud, config=config, **kwargs)

    monkeypatch.setattr(host.serial_backend, "SerialBackend", serial)
    make_backend("serial", "/dev/board", 9600, "up5k", clock_mhz=12.0)
    assert seen == {"port": "/dev/board", "baud": 9600, "config": UP5K, "clock_hz": 12e6}
    assert make_backend("emulator", config="ecp5").lanes == ECP5.lanes
    assert make_backend("emulator").lanes == DEFAULT.lanes
