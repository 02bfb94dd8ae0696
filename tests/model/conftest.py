"""What the model tests share: a small digits ViT trained for a few steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import model.vit as vit
from model.config import ModelConfig
from model.data import Splits, load_splits


def train_small_vit(kind: str, steps: int, stage: int | None = None) -> tuple[torch.nn.Module, Splits]:
    """A dim-32, depth-2 ViT of ``kind`` ("fp", "gsb", ...) trained ``steps`` steps on 100 digits per class."""
    torch.manual_seed(0)
    splits = load_splits("digits", 100, 20, 0)
    cfg = ModelConfig(image_size=8, in_channels=1, patch_size=2, dim=32, depth=2, heads=2, mlp_ratio=2.0, drop_path=0.0)
    model = vit.build_model(cfg, kind)
    if stage is not None:
        model.set_stage(stage)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(splits.train.x), torch.from_numpy(splits.train.y)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        z, zd = model(x[idx])
        loss = F.cross_entropy(z, y[idx]) + F.cross_entropy(zd, y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), splits


@pytest.fixture(scope="session")
def small_vit():
    """:func:`train_small_vit`, for tests that train their own small model."""
    return train_small_vit
