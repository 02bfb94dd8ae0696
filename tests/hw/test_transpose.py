# amaranth: UnusedElaboratable=no
"""hw.transpose against hw.program's entries of the transposed codes (V as A V's y operand)."""

import numpy as np
import pytest

from hw.packer import KIND_CODES
from hw.program import code_entries
from hw.streamsim import run_batches, run_stream
from hw.transpose import TransposePacker
from model.golden import PlaneKind


@pytest.mark.parametrize("kind", list(PlaneKind))
@pytest.mark.parametrize("word_bits, rows, cols", [(16, 18, 16), (8, 5, 3), (32, 40, 4), (8, 8, 7)])
def test_two_matrices_back_to_back_become_their_transposes_entries(kind, word_bits, rows, cols):
    rng = np.random.default_rng(rows * cols + word_bits)
    values = {PlaneKind.BIPOLAR: [-1, 1], PlaneKind.UNIPOLAR: [0, 1], PlaneKind.TERNARY: [-1, 0, 1]}[kind]
    matrices = [rng.choice(values, (rows, cols)) for _ in range(2)]
    dut = TransposePacker(word_bits, rows, cols, kind)
    want = code_entries(matrices[0].T, kind, word_bits) + code_entries(matrices[1].T, kind, word_bits)
    items = [int(c) for codes in matrices for c in codes.ravel()]
    got, _ = run_stream(dut, dut.i, dut.o, items, len(want), seed=rows + cols, stall=0.3)
    assert got == want


def test_the_kind_port_changes_between_matrices():
    """V's three groups through one unit: a bipolar matrix, then two ternary ones, the kind set in between."""
    rng = np.random.default_rng(5)
    dut = TransposePacker(16, 18, 8, PlaneKind.UNIPOLAR)
    batches, want = [], []
    for kind, values in ((PlaneKind.BIPOLAR, [-1, 1]), (PlaneKind.TERNARY, [-1, 0, 1]), (PlaneKind.TERNARY, [-1, 0, 1])):
        codes = rng.choice(values, (18, 8))

        async def setup(ctx, kind=kind):
            ctx.set(dut.kind, KIND_CODES[kind])

        entries = code_entries(codes.T, kind, 16)
        batches.append((setup, [int(c) for c in codes.ravel()], len(entries)))
        want += entries
    got, _ = run_batches(dut, dut.i, dut.o, batches, seed=6, stall=0.3)
    assert got == want


def test_cycles_a_code_in_and_a_column_out():
    rows, cols, word_bits = 18, 64, 16
    codes = np.random.default_rng(1).choice([-1, 1], (rows, cols))
    dut = TransposePacker(word_bits, rows, cols, PlaneKind.BIPOLAR)
    want = code_entries(codes.T, PlaneKind.BIPOLAR, word_bits)
    got, cycles = run_stream(dut, dut.i, dut.o, [int(c) for c in codes.ravel()], len(want))
    assert got == want
    assert cycles <= rows * cols + 2 + cols * (2 + 2) + 3


@pytest.mark.parametrize("kwargs, name", [
    (dict(word_bits=12, rows=4, cols=4, kind=PlaneKind.BIPOLAR), "word_bits"),
    (dict(word_bits=8, rows=0, cols=4, kind=PlaneKind.BIPOLAR), "rows"),
    (dict(word_bits=8, rows=4, cols=2, kind=PlaneKind.BIPOLAR), "cols"),
    (dict(word_bits=8, rows=4, cols=4, kind="ternary"), "kind"),
])
def test_rejects_bad_parameters(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TransposePacker(**kwargs)
