# amaranth: UnusedElaboratable=no
import pytest

from hw.config import DEFAULT, PRESETS, AccelConfig, preset
from model import golden


def test_widths_come_from_the_contract():
    c = DEFAULT
    assert c.max_n == min(c.x_depth, c.y_depth) * c.word_bits
    assert c.row_value_bits == golden.dot_bits(c.max_n)
    assert c.word_value_bits == golden.dot_bits(c.word_bits)
    assert c.acc_bits == golden.signed_bits(c.max_n << (c.coef_bits - 1))
    assert c.coef_bits == golden.FixedPoint(0).total_bits


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name):
    assert preset(name).acc_bits + 1 <= 31


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(word_bits=12), ValueError, "word_bits"),
    (dict(lanes=0), ValueError, "lanes"),
    (dict(lanes=33), ValueError, "lanes"),
    (dict(x_depth=1.5), TypeError, "x_depth"),
    (dict(coef_bits=1), ValueError, "coef_bits"),
    (dict(shift_bits=6), ValueError, "shift_bits"),
    (dict(coef_bits=20), ValueError, "accumulator"),
    (dict(count_c=1), TypeError, "count_c"),
])
def test_rejects_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        AccelConfig(**kwargs)


def test_preset_name_checked():
    with pytest.raises(ValueError, match="name"):
        preset("up5k-huge")
    with pytest.raises(TypeError, match="name"):
        preset(3)
