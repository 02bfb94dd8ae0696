import pytest

from hw.config import DEFAULT
from hw.isa import Op, descriptor, from_word, header, run_args, threshold_word, to_word


def test_header_and_values():
    assert header(Op.RUN, 1) == 0x120
    assert from_word(to_word(-5)) == -5
    assert threshold_word(-1, 1) == (1 << 31) - 1
    assert threshold_word(-1, -1) == (1 << 31) | 2  # -Y >= -1 is Y < 2


@pytest.mark.parametrize("call,match", [
    (lambda: descriptor(DEFAULT, DEFAULT.x_depth, 0, 0), "x_base"),
    (lambda: descriptor(DEFAULT, 0, 0, 1 << 17), "coef"),
    (lambda: descriptor(DEFAULT, 0, 0, 1, shift=16), "shift"),
    (lambda: run_args(DEFAULT, 1, 1, 1, 1, 1 << 30), "offset"),
    (lambda: threshold_word(1 << 30, 1), "threshold"),
    (lambda: threshold_word(0, 0), "direction"),
])
def test_rejects_fields_that_do_not_fit(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_header_type_checked():
    with pytest.raises(TypeError, match="op"):
        header(0x10)
