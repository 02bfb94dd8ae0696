"""Greedy and uniform rank allocation under a weight budget."""

from __future__ import annotations

import numpy as np
import pytest

from model.lowrank.ranks import allocate, allocate_uniform, dense_params, first_rank, rank_params, removed_fraction

SHAPES = {"a": (48, 16), "b": (16, 16), "c": (32, 16)}


def _errors(decay):
    """Relative error curves err[r] = decay**r (r = 0..max rank)."""
    return {n: decay[n] ** np.arange(min(s) + 1) * (np.arange(min(s) + 1) < min(s)) for n, s in SHAPES.items()}


@pytest.mark.parametrize("keep", [0.9, 0.5, 0.3, 0.15])
def test_greedy_meets_the_budget(keep):
    dense = sum(dense_params(s) for s in SHAPES.values())
    budget = int(keep * dense)
    ranks = allocate(_errors({"a": 0.5, "b": 0.8, "c": 0.7}), SHAPES, budget)
    total = sum(rank_params(SHAPES[n], r) for n, r in ranks.items())
    assert total <= budget
    # one rank more on any factored layer would break the budget or not be a move the greedy skipped
    assert removed_fraction(SHAPES, ranks) >= 1 - keep
    for n, r in ranks.items():
        assert r is None or 1 <= r <= first_rank(SHAPES[n])


def test_greedy_cuts_where_error_per_weight_is_cheapest():
    # layer "a" has a fast-decaying spectrum: it loses rank first, "b" keeps more
    ranks = allocate(_errors({"a": 0.2, "b": 0.95, "c": 0.95}), SHAPES, int(0.6 * 1536))
    assert ranks["a"] is not None and (ranks["b"] is None or ranks["b"] > ranks["a"])


def test_budget_below_rank_one_everywhere_raises():
    with pytest.raises(ValueError, match="below rank 1"):
        allocate(_errors({"a": 0.5, "b": 0.5, "c": 0.5}), SHAPES, 10)


def test_uniform_keeps_about_the_same_fraction_per_layer():
    dense = sum(dense_params(s) for s in SHAPES.values())
    budget = int(0.5 * dense)
    ranks = allocate_uniform(SHAPES, budget)
    assert sum(rank_params(SHAPES[n], r) for n, r in ranks.items()) <= budget
    fractions = [rank_params(SHAPES[n], r) / dense_params(SHAPES[n]) for n, r in ranks.items()]
    assert max(fractions) - min(fractions) < 0.15 and removed_fraction(SHAPES, ranks) < 0.56
    assert first_rank((16, 16)) == 7 and first_rank((48, 16)) == 11
