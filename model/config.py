"""YAML configs of the ViT/DeiT family and its training recipe.

A config file has three sections (see ``configs/digits.yaml``)::

    data:  {dataset, path, scale, test_fraction, samples_per_class,
            val_per_class, shift, flip}
    model: {image_size, in_channels, patch_size, dim, depth, heads, mlp_ratio,
            cls_token, distillation_token, drop_path}
    train: {epochs, stage1_fraction, batch_size, lr, weight_decay,
            quant_lr, warmup_epochs, eval_every, stage1_scope, kd,
            kd_temperature, kd_hidden, kd_attn}

Unknown keys raise, so a typo never silently falls back to a default; a
config file must have all three sections; every value is checked for its type
and range, with a message naming the key (``model.dim: must be an int >= 1``),
before anything is built from it.  The architecture's keys are the model
file's names (:class:`model.modelfile.Architecture`); a key of their older
names (:data:`RENAMED`) is refused with its new name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml

from .data import DATASETS, FILE_KINDS, Source


@dataclass
class DataConfig:
    """The dataset (see :mod:`model.data`): a built-in name, or ``npz``/``folder`` with its ``path``."""

    dataset: str = "digits"
    path: str | None = None        # the .npz file or image folder (relative to the working directory)
    scale: float | None = None     # top raw pixel value of an npz (default 255 for uint8)
    test_fraction: float = 0.2     # share of each class drawn as the test split of a file without one
    samples_per_class: int | None = 100
    val_per_class: int = 20
    shift: int = 1          # random translation in pixels (augmentation)
    flip: bool = False      # random horizontal flip (augmentation)

    def __post_init__(self) -> None:
        if (self.dataset in FILE_KINDS) != (self.path is not None):
            raise ValueError(f"data.path: {'needed' if self.path is None else 'only'} for a dataset read from "
                             f"a file ({', '.join(FILE_KINDS)}), dataset is {self.dataset!r}")
        if self.scale is not None and self.dataset != "npz":
            raise ValueError("data.scale: only for an npz dataset (the others know their pixel scale)")

    def source(self) -> Source:
        """Where :func:`model.data.load_splits` reads this dataset from."""
        return Source(self.dataset, self.path, None if self.scale is None else float(self.scale), self.test_fraction)


@dataclass
class ModelConfig:
    """The ViT's shape, by the names of the model file's :class:`~model.modelfile.Architecture`."""

    image_size: int = 8
    in_channels: int = 1
    patch_size: int = 2
    dim: int = 64
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 2.0
    cls_token: bool = True
    distillation_token: bool = True
    drop_path: float = 0.1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not a multiple of heads {self.heads}")
        if not self.cls_token:
            raise ValueError("the family needs a cls token (the classifier reads it)")
        if self.mlp_hidden < 1:
            raise ValueError(f"mlp_ratio {self.mlp_ratio} gives {self.mlp_hidden} MLP hidden channels (dim {self.dim})")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        return self.num_patches + int(self.cls_token) + int(self.distillation_token)

    @property
    def mlp_hidden(self) -> int:
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
    stage1_scope: str = "mlp_weights"  # what stage 1 quantizes: mlp_weights | weights | weights_inputs
    kd: str = "hard"                   # distillation of the dist head: hard (argmax) | soft (KL at kd_temperature)
    kd_temperature: float = 1.0        # soft KD only
    kd_hidden: float = 0.0             # weight of hidden-state distillation (KD methods; 0 = off)
    kd_attn: float = 0.0               # weight of attention-map distillation (KD methods; 0 = off)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = ("data", "model", "train")
#: Keys of the model section renamed to the model file's names, old -> new.
RENAMED = {"img_size": "image_size", "in_chans": "in_channels", "patch": "patch_size", "dist_token": "distillation_token"}
_KINDS = {"int": int, "float": (int, float), "bool": bool, "str": str}


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f">= {low:g}"


def _in(low: float, high: float, open_high: bool = False) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: low <= v < high if open_high else low <= v <= high), f"in [{low:g}, {high:g}{')' if open_high else ']'}"


#: The range of each key (its type comes from the dataclass field); None passes where the type allows it.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dataset": ((lambda v: v in DATASETS + FILE_KINDS), f"one of {', '.join(DATASETS + FILE_KINDS)}"),
    "scale": ((lambda v: v > 0), "> 0"), "test_fraction": ((lambda v: 0 < v < 1), "in (0, 1)"),
    "samples_per_class": _at_least(1), "val_per_class": _at_least(1), "shift": _at_least(0),
    **{k: _at_least(1) for k in ("image_size", "in_channels", "patch_size", "dim", "depth", "heads", "num_classes")},
    "mlp_ratio": ((lambda v: v > 0), "> 0"), "drop_path": _in(0, 1, open_high=True),
    "epochs": _at_least(1), "fp_epochs": _at_least(1), "stage1_fraction": _in(0, 1), "batch_size": _at_least(1),
    "lr": ((lambda v: v > 0), "> 0"), "quant_lr": ((lambda v: v > 0), "> 0"), "weight_decay": _at_least(0),
    "warmup_epochs": _at_least(0), "eval_every": _at_least(1),
    "stage1_scope": ((lambda v: v in ("mlp_weights", "weights", "weights_inputs")),
                     "one of mlp_weights, weights, weights_inputs"),
    "kd": ((lambda v: v in ("hard", "soft")), "one of hard, soft"), "kd_temperature": ((lambda v: v > 0), "> 0"),
    "kd_hidden": _at_least(0), "kd_attn": _at_least(0),
}


def _check_value(key: str, annotation: str, value: Any) -> None:
    """``value`` of config key ``key`` (``section.name``) has the field's type and lies in its range."""
    kinds = [k.strip() for k in annotation.split("|")]
    if value is None and "None" in kinds:
        return
    allowed = [_KINDS[k] for k in kinds if k != "None"]
    if (isinstance(value, bool) and "bool" not in kinds) or not isinstance(value, tuple(allowed)) or (
            isinstance(value, float) and not math.isfinite(value)):
        raise ValueError(f"config key '{key}': must be {' or '.join(kinds)}, got {value!r}")
    rule, words = RANGES.get(key.split(".")[1], ((lambda v: True), ""))
    if not rule(value):
        raise ValueError(f"config key '{key}': must be {words}, got {value!r}")


def _build(cls: type, values: dict[str, Any] | None, section: str) -> Any:
    if values is not None and not isinstance(values, dict):
        raise ValueError(f"config section '{section}' must be a mapping, got {type(values).__name__}")
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if section == "model":
        renamed = [f"'{section}.{old}' is now '{section}.{new}'" for old, new in RENAMED.items() if old in values]
        if renamed:
            raise ValueError(f"renamed config key(s): {'; '.join(renamed)}")
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) in config section '{section}': {', '.join(unknown)}")
    for name, value in values.items():
        _check_value(f"{section}.{name}", str(fields[name].type), value)
    return cls(**values)


def from_dict(d: dict[str, Any]) -> Config:
    """A Config from a dict of sections; a missing section or key takes the defaults."""
    if d is not None and not isinstance(d, dict):
        raise ValueError(f"a config must be a mapping of sections, got {type(d).__name__}")
    d = dict(d or {})
    unknown = sorted(set(d) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown config section(s): {', '.join(unknown)}")
    return Config(
        data=_build(DataConfig, d.get("data"), "data"),
        model=_build(ModelConfig, d.get("model"), "model"),
        train=_build(TrainConfig, d.get("train"), "train"),
    )


def upgrade_checkpoint_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config dict stored in a checkpoint, its model keys of :data:`RENAMED` given their new names.

    Checkpoints trained before the rename hold the old names; a config file
    with them is refused instead (:func:`from_dict`), so that it gets edited.
    """
    model = d.get("model")
    if not isinstance(model, dict):
        return d
    return {**d, "model": {RENAMED.get(key, key): value for key, value in model.items()}}


def load_config(path: str) -> Config:
    """A config file: every section must be there (a file never falls back to a whole default section)."""
    with open(path) as f:
        d = yaml.safe_load(f)
    missing = [s for s in SECTIONS if not isinstance(d, dict) or s not in d]
    if missing:
        raise ValueError(f"{path}: missing config section(s): {', '.join(missing)}")
    try:
        return from_dict(d)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
