"""bench.emulator's timing: interleaved rounds, the load average around each."""

from __future__ import annotations

import numpy as np

from bench.emulator import kernel_breakdown, time_rounds


def test_rounds_record_every_time_and_load():
    calls = []
    engines = {"a": lambda: calls.append("a") or np.array([1]), "b": lambda: calls.append("b") or np.array([2])}
    predictions, rounds = time_rounds(engines, 3)
    assert calls == ["a", "b"] * 4  # a warm-up, then interleaved rounds
    assert predictions["a"].tolist() == [1] and predictions["b"].tolist() == [2]
    for r in rounds.values():
        assert len(r["seconds"]) == len(r["load_before"]) == len(r["load_after"]) == 3
        assert all(s >= 0 for s in r["seconds"]) and all(v >= 0 for v in r["load_before"] + r["load_after"])


def test_the_kernel_breakdown_times_every_kernel_and_leaves_them_unwrapped():
    from host import fused
    from model import intvit
    from model.random_model import random_integer_model

    before = fused.linear_planes
    images = np.random.default_rng(1).integers(0, 17, size=(4, 1, 8, 8))
    breakdown = kernel_breakdown(intvit.program(random_integer_model(seed=2)), [images[:2], images[2:]], 2)
    assert fused.linear_planes is before
    assert {"linear_planes", "matmul_planes", "attention_planes", "norm_compare", "other"} <= breakdown.keys()
    assert all(v >= 0 for k, v in breakdown.items() if k != "other")
