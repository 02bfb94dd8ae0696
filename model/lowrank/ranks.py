"""Greedy per-layer ranks that meet a parameter budget.

Every compressed layer starts dense (``in*out`` weights, error 0).  A move
lowers one layer's rank: from dense to the largest rank that stores fewer
weights than dense (``r0 = ceil(in*out/(in+out)) - 1``), then one rank at a
time down to rank 1.  Each step takes the move with the smallest *added
error per weight saved*, ``(err[r_new] - err[r_old]) / (params_old - params_new)``,
until the layers' total is at most the budget.  The error of each layer is
its spectrum's squared error at that rank divided by its rank-0 energy
(``Spectrum.relative_err``), so layers of different output scale compare;
the kind of spectrum (activation-aware or weight) decides what "error"
means, which is the only difference between the two methods' allocations.

A layer whose rank would not save weights stays dense (``rank None``).
"""

from __future__ import annotations

import math

import numpy as np


def dense_params(shape: tuple[int, int]) -> int:
    """Weights of a dense (out, in) layer."""
    return shape[0] * shape[1]


def rank_params(shape: tuple[int, int], rank: int | None) -> int:
    """Weights of a layer at ``rank`` (None: dense)."""
    return dense_params(shape) if rank is None else rank * (shape[0] + shape[1])


def first_rank(shape: tuple[int, int]) -> int:
    """The largest rank that stores fewer weights than the dense layer."""
    out_f, in_f = shape
    return math.ceil(out_f * in_f / (out_f + in_f)) - 1


def allocate(errors: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]], budget: int,
             min_rank: int = 1) -> dict[str, int | None]:
    """Greedy ranks (None = dense) with total weights <= ``budget``.

    ``errors[name][r]`` is the layer's (relative) error at rank r for
    r = 0..max; ranks above ``len(errors[name]) - 1`` have error 0.
    Raises when even ``min_rank`` everywhere does not meet the budget.
    """
    floor = sum(rank_params(shapes[n], min_rank) for n in shapes)
    if floor > budget:
        raise ValueError(f"budget {budget} is below rank {min_rank} everywhere ({floor} weights)")

    def err(name: str, r: int | None) -> float:
        e = errors[name]
        return 0.0 if r is None or r >= len(e) else float(e[r])

    ranks: dict[str, int | None] = {n: None for n in shapes}
    total = sum(dense_params(s) for s in shapes.values())
    while total > budget:
        best, best_cost = None, math.inf
        for n, r in ranks.items():
            new = first_rank(shapes[n]) if r is None else r - 1
            if new < min_rank:
                continue
            saved = rank_params(shapes[n], r) - rank_params(shapes[n], new)
            cost = (err(n, new) - err(n, r)) / saved
            if cost < best_cost:
                best, best_cost = (n, new, saved), cost
        if best is None:  # cannot happen past the floor check
            raise RuntimeError("no rank can be lowered")
        n, new, saved = best
        ranks[n] = new
        total -= saved
    return ranks


def removed_fraction(shapes: dict[str, tuple[int, int]], ranks: dict[str, int | None]) -> float:
    """Fraction of the layers' dense weights removed at these ranks."""
    dense = sum(dense_params(s) for s in shapes.values())
    return 1.0 - sum(rank_params(shapes[n], ranks[n]) for n in shapes) / dense


def allocate_uniform(shapes: dict[str, tuple[int, int]], budget: int, min_rank: int = 1) -> dict[str, int | None]:
    """Every layer keeps about the same fraction of its weights (the plain-SVD baseline's usual choice).

    Start from ``floor(keep * in*out / (in+out))`` with ``keep = budget / dense``,
    then raise the rank of the layer with the smallest kept fraction while the
    total stays within the budget.  Ranks that would not save weights stay dense.
    """
    dense = sum(dense_params(s) for s in shapes.values())
    keep = budget / dense
    ranks = {n: max(min_rank, int(keep * dense_params(s) / (s[0] + s[1]))) for n, s in shapes.items()}
    if sum(rank_params(shapes[n], r) for n, r in ranks.items()) > budget:
        raise ValueError(f"budget {budget} is below the uniform floor")
    total = sum(rank_params(shapes[n], r) for n, r in ranks.items())
    while True:
        fits = [n for n in shapes if total + sum(shapes[n]) <= budget and ranks[n] < first_rank(shapes[n])]
        if not fits:
            break
        n = min(fits, key=lambda n: (rank_params(shapes[n], ranks[n]) / dense_params(shapes[n]), n))
        ranks[n] += 1
        total += sum(shapes[n])
    return {n: (None if r > first_rank(shapes[n]) else r) for n, r in ranks.items()}
