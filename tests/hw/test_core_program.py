"""hw.core_program: the whole-model core's image and buffer sizes from a model's integer program (the runs of the
images on the core are tests/hw/test_core.py)."""

from dataclasses import replace

import numpy as np
import pytest

from hw.config import DEFAULT, preset
from hw.core import Stage
from hw.core_program import blocks_image, core_config, model_image
from hw.program import DoesNotFit
from hw.steps import StepOp
from model import intvit
from model.modelfile import Architecture
from model.random_model import TINY, random_integer_model


@pytest.fixture(scope="module")
def prog():
    return intvit.program(random_integer_model(TINY, seed=1))


@pytest.mark.parametrize("name", ["default", "up5k", "ecp5"])
def test_core_config_sizes_a_presets_buffers_for_the_model_and_keeps_its_engine(prog, name):
    base = preset(name)
    config = core_config(base, prog)
    for depth in (config.x_depth, config.y_depth, config.result_depth, config.prog_depth):
        assert depth & (depth - 1) == 0  # powers of two
    assert (config.lanes, config.word_bits, config.acc_bits) == (base.lanes, base.word_bits, base.acc_bits)
    image = model_image(config, prog)
    assert len(image.y_rows) <= config.y_depth < 2 * len(image.y_rows)  # every layer's weights, and no more
    with pytest.raises(DoesNotFit, match="y bank rows"):
        model_image(replace(config, y_depth=config.y_depth // 2, row_words=min(config.row_words, config.y_depth // 2)),
                    prog)


def test_the_whole_models_program_runs_every_stage_in_order(prog):
    image = model_image(core_config(DEFAULT, prog), prog)
    stages = [Stage(step["field"]) for step in image.steps if step["op"] == StepOp.GO]
    assert stages[:4] == [Stage.TOKENS, Stage.BITS, Stage.RUN, Stage.READ_ADD]  # the patch embedding
    assert stages[-1] == Stage.ARGMAX and stages.count(Stage.LOGITS) == 2  # two heads summed
    heads, depth = TINY.heads, TINY.depth
    assert stages.count(Stage.SCORES) == heads * depth and stages.count(Stage.READ_V) == 3 * depth
    assert image.steps[-1]["op"] == StepOp.END


def test_bad_stages_and_models_are_refused(prog):
    config = core_config(DEFAULT, prog)
    zeros = np.zeros((TINY.tokens, TINY.dim), np.int64)
    with pytest.raises(ValueError, match="a stage is"):
        blocks_image(config, prog, zeros, [(2, "mlp")])
    with pytest.raises(ValueError, match="residual must be"):
        blocks_image(config, prog, zeros[1:])
    rgb = replace(TINY, in_channels=3)
    with pytest.raises(ValueError, match="one channel"):
        model_image(config, intvit.program(random_integer_model(rgb, seed=1)))
    odd = Architecture(image_size=8, in_channels=1, patch_size=2, dim=12, depth=1, heads=2, mlp_hidden=24,
                       num_classes=10)
    with pytest.raises(ValueError, match="head_dim 6 must be a multiple"):
        model_image(config, intvit.program(random_integer_model(odd, seed=1)))
