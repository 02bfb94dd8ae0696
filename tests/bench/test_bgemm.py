import numpy as np

from bench.bgemm import bench_shape, time_rounds


def test_time_rounds_marks_each_rounds_first_call() -> None:
    calls = []
    rounds = time_rounds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=2, warm_up=False, calls=3)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert rounds["a"]["first_of_round"] == [True, False, False] * 2
    assert len(rounds["b"]["seconds"]) == len(rounds["b"]["load_after"]) == 6


def test_bench_shape_reports_steady_and_first_calls() -> None:
    result = bench_shape("tiny", 6, 70, 130, ref_rows=4, repeats=2, calls=2, rng=np.random.default_rng(0))
    assert result["checked_against_reference"]
    assert set(result["seconds"]) == {"first_call", "steady"}
    assert set(result["ratios"]) == {f"{k}_vs_f32_{c}" for k in ("fast", "fast_prepared") for c in ("first_call", "steady")}
    steady = result["seconds"]["steady"]
    assert result["ratios"]["fast_vs_f32_steady"] == steady["f32"] / steady["fast"]
