"""Shared fixtures of the host's tests."""

import numpy as np
import pytest

from model import intvit
from model.random_model import TINY, random_integer_model


@pytest.fixture(scope="module")
def tiny():
    """The random TINY integer model and three raw images in its pixel range (for the whole-model runtimes)."""
    model = random_integer_model(TINY, seed=11)
    raw = np.random.default_rng(11).integers(0, intvit.program(model).params["pixel_max"] + 1, (3, 1, 8, 8))
    return model, raw
