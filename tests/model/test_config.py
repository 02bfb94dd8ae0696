"""YAML configs of the family."""

from __future__ import annotations

import glob

import pytest

from model.config import from_dict, load_config, upgrade_checkpoint_config


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    if path.endswith("rgb32.yaml"):
        assert cfg.model.num_patches == 64 and cfg.model.in_channels == 3 and cfg.data.dataset == "folder"
    else:
        assert cfg.model.num_patches == 16 and cfg.model.tokens == 18
        assert cfg.data.dataset in ("digits", "fashion_mnist")


def test_unknown_keys_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="unknown key.*'model'.*dims"):
        from_dict({"model": {"dims": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        from_dict({"modle": {}})
    with pytest.raises(ValueError, match="multiple of patch"):
        from_dict({"model": {"image_size": 9, "patch_size": 2}})


@pytest.mark.parametrize("section,key,value,message", [
    ("model", "dim", 0, r"'model.dim': must be >= 1, got 0"),
    ("model", "depth", -2, r"'model.depth': must be >= 1"),
    ("model", "patch_size", 0, r"'model.patch_size': must be >= 1"),  # not a ZeroDivisionError in image_size % patch_size
    ("model", "heads", "4", r"'model.heads': must be int, got '4'"),
    ("model", "dim", 64.0, r"'model.dim': must be int"),
    ("model", "cls_token", 1, r"'model.cls_token': must be bool"),
    ("model", "mlp_ratio", 0.001, r"mlp_ratio 0.001 gives 0 MLP hidden channels"),
    ("model", "drop_path", 1.0, r"'model.drop_path': must be in \[0, 1\)"),
    ("data", "dataset", "cifar", r"'data.dataset': must be one of digits, fashion_mnist"),
    ("data", "samples_per_class", 0, r"'data.samples_per_class': must be >= 1"),
    ("data", "shift", True, r"'data.shift': must be int, got True"),
    ("train", "batch_size", 0, r"'train.batch_size': must be >= 1"),
    ("train", "lr", float("nan"), r"'train.lr': must be float, got nan"),
    ("train", "lr", -1e-3, r"'train.lr': must be > 0"),
    ("train", "epochs", None, r"'train.epochs': must be int, got None"),
    ("train", "stage1_fraction", 1.5, r"'train.stage1_fraction': must be in \[0, 1\]"),
    ("train", "stage1_scope", "attention", r"'train.stage1_scope': must be one of mlp_weights, weights"),
    ("train", "kd", "ranking", r"'train.kd': must be one of hard, soft"),
    ("train", "kd_temperature", 0.0, r"'train.kd_temperature': must be > 0"),
])
def test_bad_values_are_refused_naming_the_key(section, key, value, message):
    with pytest.raises(ValueError, match=message):
        from_dict({section: {key: value}})


def test_config_files_need_every_section_as_a_mapping(tmp_path):
    import yaml

    full = yaml.safe_load(open("configs/digits.yaml"))
    path = tmp_path / "c.yaml"
    for broken, message in (({k: v for k, v in full.items() if k != "train"}, "missing config section.*train"),
                            ({**full, "model": [1, 2]}, "section 'model' must be a mapping"),
                            ([1, 2], "missing config section.*data, model, train"),
                            ({**full, "model": {**full["model"], "dim": -64}}, r"c\.yaml: config key 'model\.dim'")):
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ValueError, match=message):
            load_config(str(path))
    assert load_config("configs/digits.yaml").train.lr == full["train"]["lr"]


def test_an_old_key_names_its_new_name(tmp_path):
    """The architecture's keys are the model file's names; a config file with the old ones is refused, not guessed."""
    path = tmp_path / "old.yaml"
    path.write_text("data: {}\nmodel: {img_size: 8, in_chans: 1, patch: 2, dist_token: true}\ntrain: {}\n")
    with pytest.raises(ValueError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: renamed config key(s)")
    for old, new in (("img_size", "image_size"), ("in_chans", "in_channels"), ("patch", "patch_size"),
                     ("dist_token", "distillation_token")):
        assert f"'model.{old}' is now 'model.{new}'" in message


def test_a_checkpoints_config_gets_the_new_names():
    old = {"data": {"dataset": "digits"}, "model": {"img_size": 8, "in_chans": 1, "patch": 2, "dim": 16, "dist_token": False},
           "train": {}}
    cfg = from_dict(upgrade_checkpoint_config(old))
    assert (cfg.model.image_size, cfg.model.in_channels, cfg.model.patch_size, cfg.model.dim) == (8, 1, 2, 16)
    assert cfg.model.distillation_token is False
    assert old["model"]["img_size"] == 8  # the stored dict is left alone


def test_issue16_options_default_to_the_recipe():
    """stage1_scope / kd / kd_temperature: absent keys give today's recipe (MLP weights first, hard KD)."""
    t = load_config("configs/digits.yaml").train
    assert (t.stage1_scope, t.kd, t.kd_temperature) == ("mlp_weights", "hard", 1.0)
    t = from_dict({"train": {"stage1_scope": "weights_inputs", "kd": "soft", "kd_temperature": 4}}).train
    assert (t.stage1_scope, t.kd, t.kd_temperature) == ("weights_inputs", "soft", 4)
