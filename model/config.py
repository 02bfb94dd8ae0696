"""YAML configs of the ViT/DeiT family and its training recipe.

A config file has three sections (see ``configs/digits.yaml``)::

    data:  {dataset, samples_per_class, val_per_class, augment: {shift, flip}}
    model: {img_size, in_chans, patch, dim, depth, heads, mlp_ratio,
            cls_token, dist_token, drop_path}
    train: {epochs, stage1_fraction, batch_size, lr, weight_decay,
            quant_lr, warmup_epochs, eval_every}

Unknown keys raise, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml


@dataclass
class DataConfig:
    dataset: str = "digits"
    samples_per_class: int | None = 100
    val_per_class: int = 20
    shift: int = 1          # random translation in pixels (augmentation)
    flip: bool = False      # random horizontal flip (augmentation)


@dataclass
class ModelConfig:
    img_size: int = 8
    in_chans: int = 1
    patch: int = 2
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    cls_token: bool = True
    dist_token: bool = True
    drop_path: float = 0.1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.img_size % self.patch:
            raise ValueError(f"img_size {self.img_size} is not a multiple of patch {self.patch}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if not self.cls_token:
            raise ValueError("the family needs a cls token (the classifier reads it)")

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @property
    def num_tokens(self) -> int:
        return self.num_patches + int(self.cls_token) + int(self.dist_token)

    @property
    def hidden(self) -> int:
        return int(round(self.dim * self.mlp_ratio))


@dataclass
class TrainConfig:
    epochs: int = 60             # total over both stages (quantized methods)
    fp_epochs: int | None = None  # epochs of the FP teacher / baseline (default: epochs)
    stage1_fraction: float = 0.3
    batch_size: int = 64
    lr: float = 1e-3
    quant_lr: float | None = None  # lr of the quantized stages (default: lr)
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    eval_every: int = 1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown key(s) in config section '{section}': {', '.join(unknown)}")
    return cls(**values)


def from_dict(d: dict[str, Any]) -> Config:
    d = dict(d or {})
    unknown = sorted(set(d) - {"data", "model", "train"})
    if unknown:
        raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
    return Config(
        data=_build(DataConfig, d.get("data"), "data"),
        model=_build(ModelConfig, d.get("model"), "model"),
        train=_build(TrainConfig, d.get("train"), "train"),
    )


def load_config(path: str) -> Config:
    with open(path) as f:
        return from_dict(yaml.safe_load(f))
