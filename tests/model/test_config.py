"""YAML configs of the family."""

from __future__ import annotations

import glob

import pytest

from model.config import from_dict, load_config


@pytest.mark.parametrize("path", sorted(glob.glob("configs/*.yaml")))
def test_shipped_configs_load(path):
    cfg = load_config(path)
    assert cfg.model.num_patches == 16 and cfg.model.num_tokens == 18
    assert cfg.data.dataset in ("digits", "fashion_mnist")


def test_unknown_keys_and_bad_shapes_raise():
    with pytest.raises(ValueError, match="unknown key.*'model'.*dims"):
        from_dict({"model": {"dims": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        from_dict({"modle": {}})
    with pytest.raises(ValueError, match="multiple of patch"):
        from_dict({"model": {"img_size": 9, "patch": 2}})
