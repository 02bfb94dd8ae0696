"""The demo's model: trained and exported once, then reused (training and export stubbed: they have tests of their own)."""

from __future__ import annotations

import torch

import model.export
import model.train
from model import modelfile
from model.demo import demo_model
from model.random_model import random_integer_model


def test_trains_and_exports_once_then_reuses_the_file(tmp_path, monkeypatch):
    trained = []

    def train(cfg, method, seed, out, resume, progress):
        trained.append((cfg.data.dataset, method, seed, out, resume))
        return {"val_acc": 80.0, "test_acc": 79.0}

    monkeypatch.setattr(model.train, "train", train)
    monkeypatch.setattr(model.export, "export_checkpoint", lambda checkpoint: random_integer_model())
    threads = torch.get_num_threads()
    try:
        path = demo_model(tmp_path, progress=False)
        assert demo_model(tmp_path, progress=False) == path
    finally:
        torch.set_num_threads(threads)
    assert trained == [("digits", "gsb", 0, str(tmp_path / "runs" / "gsb"), True)]
    assert modelfile.load(path).integer is not None
