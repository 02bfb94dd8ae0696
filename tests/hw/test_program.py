from dataclasses import replace

import numpy as np
import pytest

from hw.config import DEFAULT, SMALL
from hw.program import (DoesNotFit, code_entries, compile_chunks, compile_layer, repack, split_coefficient, take_rows,
                        y_layout)
from model import golden
from model.golden import Operand, PlaneKind


def _op(values, enc, wb=16):
    return golden.Operand.from_values(np.asarray(values), enc, wb)


ONE_TREE = replace(DEFAULT, count_c=False)


def _cmodes(image):
    return [d[1] >> 31 for d in image.descriptors]


def test_lanes_that_count_c_need_one_pass_per_plane_pair():
    x, y = _op([[1, 0, 1]], "ternary"), _op([[1, 0, -1]], "ternary")
    image = compile_layer(DEFAULT, [x], [y], np.array([[3]]))
    assert image.offset == 0 and _cmodes(image) == [0]


def test_one_tree_folds_c_of_bipolar_pairs_into_the_offset():
    x, y = _op([[1, -1, 1]], "bipolar"), _op([[1, 1, -1], [-1, -1, -1]], "bipolar")
    image = compile_layer(ONE_TREE, [x], [y], np.array([[3]]))
    assert image.offset == 3 * 3 and _cmodes(image) == [0]


def test_one_tree_masked_pairs_get_a_c_pass_first():
    x, y = _op([[1, 0, 1]], "unipolar"), _op([[1, 1, -1]], "bipolar")
    image = compile_layer(ONE_TREE, [x], [y], np.array([[3]]))
    assert image.offset == 0 and _cmodes(image) == [1, 0]


def test_one_tree_unipolar_pairs_skip_the_p_pass():
    x, y = _op([[1, 0, 1]], "unipolar"), _op([[1, 1, 0]], "unipolar")
    image = compile_layer(ONE_TREE, [x], [y], np.array([[3]]))
    assert _cmodes(image) == [1]


def test_split_coefficient_uses_the_shift():
    assert split_coefficient(DEFAULT, -2 * 128 * 5) == (-5, 8)
    assert split_coefficient(SMALL, 12) == (3, 2)
    with pytest.raises(DoesNotFit, match="coef_bits"):
        split_coefficient(SMALL, 4097)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n=SMALL.max_n + 1), "n"),
    (dict(rows_x=40), "x entries"),
    (dict(coef=1 << 20), "coef"),
])
def test_rejects_layers_that_do_not_fit(kwargs, match):
    n, rows_x, coef = kwargs.get("n", 8), kwargs.get("rows_x", 1), kwargs.get("coef", 1)
    x = _op(np.ones((rows_x, n), int), "bipolar", 8)
    y = _op(np.ones((1, n), int), "bipolar", 8)
    with pytest.raises(DoesNotFit, match=match):
        compile_layer(SMALL, [x], [y], np.array([[coef]]))


def test_rejects_partial_sums_beyond_the_accumulator():
    """int2 x bipolar at max_n with the largest coefficient: (1 + 2) * c * n exceeds the 30-bit accumulator."""
    n, coef = DEFAULT.max_n, (1 << (DEFAULT.coef_bits - 1)) - 1
    x, y = _op(np.ones((1, n), int), "int2"), _op(np.ones((1, n), int), "bipolar")
    with pytest.raises(DoesNotFit, match="accumulator"):
        compile_layer(DEFAULT, [x], [y], np.array([[coef]]))


def test_wrong_arguments_are_not_layers_that_do_not_fit():
    """Only DoesNotFit lets a caller run the layer elsewhere: a caller's error is a plain ValueError."""
    x = _op([[1, -1]], "bipolar", 8)
    for call in (lambda: compile_layer(SMALL, [x], [x], np.array([[1, 1]])),
                 lambda: compile_layer(SMALL, [x], [x], np.array([[1]]), y_bases=[0, 1]),
                 lambda: compile_layer(DEFAULT, [x], [x], np.array([[1]]))):
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, DoesNotFit)


def test_chunks_split_the_columns_to_fit_the_result_buffer():
    rng = np.random.default_rng(0)
    rows_x = SMALL.result_depth // 3  # 3 blocks of 2 lanes per run
    x = _op(rng.choice([-1, 1], (rows_x, 9)), "bipolar", 8)
    y = _op(rng.integers(-1, 2, (13, 9)), "ternary", 8)
    thr = (np.arange(13), np.ones(13, np.int8))
    chunks = compile_chunks(SMALL, [x], [y], np.array([[1]]), thr)
    assert [c for c, _ in chunks] == [slice(0, 6), slice(6, 12), slice(12, 13)]
    assert [i.rows_y for _, i in chunks] == [6, 6, 1]
    assert chunks[1][1].thresh_rows[0][0] == 6
    assert np.array_equal(take_rows(y, 6, 12).to_values(), y.to_values()[6:12])
    with pytest.raises(DoesNotFit, match="result buffer"):
        compile_chunks(SMALL, [_op(np.ones((SMALL.result_depth + 1, 9), int), "bipolar", 8)], [y], np.array([[1]]))


def test_rejects_mismatched_word_bits():
    x = _op([[1, -1]], "bipolar", 8)
    with pytest.raises(ValueError, match="word_bits"):
        compile_layer(DEFAULT, [x], [x], np.array([[1]]))


def test_y_bases_point_the_program_at_resident_planes():
    rng = np.random.default_rng(1)
    x = _op(rng.choice([-1, 1], (3, 20)), "bipolar")
    y = [_op(rng.integers(-1, 2, (9, 20)), "ternary"), _op(rng.choice([-1, 1], (9, 20)), "bipolar")]
    coefs = np.array([[2, -3]])
    rows, firsts = y_layout(DEFAULT, y)
    contiguous = compile_layer(DEFAULT, [x], y, coefs)
    assert list(contiguous.y_rows) == rows and firsts == [0, 6]       # 3 blocks x 2 words per plane
    placed = compile_layer(DEFAULT, [x], y, coefs, y_bases=[100 + f for f in firsts])
    assert placed.y_rows == () and [d[1] - c[1] for d, c in zip(placed.descriptors, contiguous.descriptors)] == [100, 100]
    chunks = compile_chunks(replace(DEFAULT, result_depth=6), [x], y, coefs, y_bases=[100, 106])
    assert [c for c, _ in chunks] == [slice(0, 8), slice(8, 9)]
    assert [d[1] & 0xFFFFFF for d in chunks[1][1].descriptors] == [100 + 2 * 2, 106 + 2 * 2]
    with pytest.raises(ValueError, match="y_bases must hold one bank row per y plane"):
        compile_layer(DEFAULT, [x], y, coefs, y_bases=[0])
    with pytest.raises(DoesNotFit, match="y bank rows"):
        compile_layer(DEFAULT, [x], y, coefs, y_bases=[0, DEFAULT.y_depth - 1])


def test_repack_keeps_the_values():
    op = _op(np.random.default_rng(2).integers(-128, 128, (4, 70)), "int8", 64)
    again = repack(op, 16)
    assert again.word_bits == 16 and np.array_equal(again.to_values(), op.to_values())


def test_code_entries_are_the_x_entries_compile_layer_lays_out():
    rng = np.random.default_rng(3)
    for kind, values in ((PlaneKind.BIPOLAR, [-1, 1]), (PlaneKind.TERNARY, [-1, 0, 1]), (PlaneKind.UNIPOLAR, [0, 1])):
        codes = rng.choice(values, (3, 37))
        y = rng.choice([-1, 1], (5, 37))
        image = compile_layer(DEFAULT, [Operand.from_values(codes, kind.value, DEFAULT.word_bits)],
                              [Operand.from_values(y, "bipolar", DEFAULT.word_bits)], np.array([[1]]))
        assert code_entries(codes, kind, DEFAULT.word_bits) == list(image.x_entries)
