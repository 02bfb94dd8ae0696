"""Activation quantizer rules."""

from __future__ import annotations

import numpy as np
import pytest

from model.golden import Encoding
from model.quantizers import QuantGroup, Quantizer


def test_rules_on_boundaries():
    z = np.array([-1.5, -0.5, 0.0, 0.25, 0.5, 1.5, 2.5], np.float32)
    assert QuantGroup("sign", Encoding("bipolar"), 1.0).codes(z).tolist() == [-1, -1, 1, 1, 1, 1, 1]
    assert QuantGroup("step", Encoding("unipolar"), 1.0, {"threshold": 0.5}).codes(z).tolist() == [0, 0, 0, 0, 1, 1, 1]
    tern = QuantGroup("ternary", Encoding("ternary"), 1.0, {"lo": -0.5, "hi": 0.5})
    assert tern.codes(z).tolist() == [-1, -1, 0, 0, 1, 1, 1]
    # half to even, clipped to the encoding's range
    assert QuantGroup("int", Encoding("int", 2), 1.0, {"step": 1.0}).codes(z).tolist() == [-2, -0, 0, 0, 0, 1, 1]
    assert QuantGroup("uint", Encoding("uint", 2), 1.0, {"step": 0.5}).codes(z).tolist() == [0, 0, 0, 0, 1, 3, 3]


def test_offset_and_dequantize():
    q = Quantizer((QuantGroup("sign", Encoding("bipolar"), 0.5), QuantGroup("ternary", Encoding("ternary"), 0.25, {"lo": -1.0, "hi": 1.0})),
                  np.array([0.0, 2.0], np.float32))
    x = np.array([[-0.1, -0.1], [1.2, -3.5]], np.float32)
    assert np.allclose(q.dequantize(x), [[-0.5, 0.75], [0.75, -0.75]])
    ops = q.operands(x, 64)
    assert [o.encoding.name for o in ops] == ["bipolar", "ternary"]


def test_bad_groups():
    with pytest.raises(ValueError, match="needs a bipolar encoding"):
        QuantGroup("sign", Encoding("unipolar"), 1.0)
    with pytest.raises(ValueError, match="takes params"):
        QuantGroup("step", Encoding("unipolar"), 1.0)
    with pytest.raises(ValueError, match="lo < hi"):
        QuantGroup("ternary", Encoding("ternary"), 1.0, {"lo": 1.0, "hi": 0.0})
    with pytest.raises(ValueError, match="step > 0"):
        QuantGroup("int", Encoding("int", 4), 1.0, {"step": 0.0})
    with pytest.raises(TypeError, match="x must be float32"):
        Quantizer((QuantGroup("sign", Encoding("bipolar"), 1.0),)).codes(np.zeros(3))
