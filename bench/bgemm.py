"""Binary GEMM throughput: golden reference vs the compiled kernel vs float32 BLAS.

``python -m bench.bgemm`` times, for each shape, the exact bipolar product
``x @ y.T`` (x: rows x n, y: cols x n, both bipolar) four ways and counts
``rows * cols * n`` multiply-accumulates for each:

* ``reference``: :func:`model.golden.operand_product`, timed on the first
  ``--ref-rows`` rows of x only (its broadcast temporaries grow with
  rows x cols x words) and scaled to the full shape by rows;
* ``fast``: :func:`host.kernels.fast_operand_product` on the full operands,
  packed operands in, int64 product out, after a warm-up call (compilation);
* ``fast_prepared``: the same with y prepared once (:func:`host.kernels.prepare`),
  as the EmulatorBackend holds a resident weight: its checks, 64-bit words and
  row counts are not redone per call (x, the activations, still are);
* ``f32``: numpy's float32 matmul ``(rows, n) @ (n, cols)``.

The products take turns in ``--repeats`` rounds, each calling one product
``--calls`` times in a row, every call timed with the 1-minute load average
read before and after it: on a shared machine other jobs slow float BLAS and
the kernel unevenly, and the load says how far a figure is from an idle
machine's.  Two medians are reported, of the calls after the first in a
round (``steady``: a loop of such products, as in inference) and of each
round's first call (``first_call``: it pays for waking its threads after
another product ran; on a 2-CPU virtual machine that cost the kernel up to
half its speed).  The fast results are checked against the reference on the
timed rows.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from bench import write_report
from host.kernels import fast_operand_product, get_threads, prepare, set_threads
from model.golden import Operand, operand_product

# (name, rows, cols, n): rows x n activations times cols x n weights.
SHAPES = (
    ("square_1024", 1024, 1024, 1024),
    # DeiT-S qkv projection: 197 tokens, 384 inputs, 3 * 384 = 1152 outputs.
    ("deit_s_qkv", 197, 1152, 384),
)


def time_rounds(
    fns: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True, calls: int = 1
) -> dict[str, dict[str, list]]:
    """Wall times of each function over ``repeats`` rounds, after one warm-up call each (unless ``warm_up`` is false).

    The rounds interleave the functions, so that load from other jobs on the
    machine falls on all of them alike rather than on whichever ran last.
    In a round each function is called ``calls`` times in a row, every call
    timed: the first after another function pays for waking this one's
    threads (OpenBLAS's spin a while after a call, the kernel's pool blocks
    at once), the later ones see the steady state of a loop of such calls.
    Returns, per function, ``seconds``, ``cpu_seconds``, ``first_of_round``
    (whether the call was its round's first) and the 1-minute load average
    ``load_before`` and ``load_after`` each call.
    """
    for fn in fns.values() if warm_up else ():
        fn()
    fields = ("seconds", "cpu_seconds", "first_of_round", "load_before", "load_after")
    rounds = {name: {field: [] for field in fields} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for call in range(calls):
                rounds[name]["load_before"].append(os.getloadavg()[0])
                start, cpu = time.perf_counter(), time.process_time()
                fn()
                rounds[name]["seconds"].append(time.perf_counter() - start)
                rounds[name]["cpu_seconds"].append(time.process_time() - cpu)
                rounds[name]["first_of_round"].append(call == 0)
                rounds[name]["load_after"].append(os.getloadavg()[0])
    return rounds


def machine_info() -> dict:
    """What the numbers depend on: CPU, thread counts, library versions, load."""
    cpu_model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    return {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "numba_threads": numba.get_num_threads(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "blas": f"{blas.get('name')} {blas.get('version')}",
        "load_average_at_start": list(os.getloadavg()),
    }


def _medians(rounds: dict[str, dict[str, list]], field: str, first: bool | None) -> dict[str, float]:
    """Median of ``field`` per function over its rounds' first calls (True), later calls (False) or all (None)."""
    return {
        name: float(np.median([v for v, f in zip(r[field], r["first_of_round"]) if first is None or f == first]))
        for name, r in rounds.items()
    }


def bench_shape(
    name: str, rows: int, cols: int, n: int, ref_rows: int, repeats: int, calls: int, rng: np.random.Generator
) -> dict:
    """Time the products for one shape and return MAC/s and ratios, of first calls and of steady calls."""
    x_vals = np.where(rng.random((rows, n)) < 0.5, -1, 1)
    y_vals = np.where(rng.random((cols, n)) < 0.5, -1, 1)
    x, y = Operand.from_values(x_vals, "bipolar"), Operand.from_values(y_vals, "bipolar")
    ref_rows = min(ref_rows, rows)
    x_sub = Operand.from_values(x_vals[:ref_rows], "bipolar")

    expected = operand_product(x_sub, y)
    y_prepared = prepare(y)
    for label, product in (("fast", fast_operand_product(x, y)), ("fast_prepared", fast_operand_product(x, y_prepared))):
        if not np.array_equal(product[:ref_rows], expected):
            raise AssertionError(f"{name}: {label} kernel differs from the golden reference")

    a = rng.standard_normal((rows, n), dtype=np.float32)
    b = rng.standard_normal((n, cols), dtype=np.float32)
    macs = rows * cols * n
    rounds = time_rounds(
        {
            "reference": lambda: operand_product(x_sub, y),
            "fast": lambda: fast_operand_product(x, y),
            "fast_prepared": lambda: fast_operand_product(x, y_prepared),
            "f32": lambda: a @ b,
        },
        repeats,
        calls=calls,
    )
    scale = {"reference": rows / ref_rows}
    seconds = {
        kind: {k: v * scale.get(k, 1) for k, v in _medians(rounds, "seconds", first).items()}
        for kind, first in (("first_call", True), ("steady", False if calls > 1 else True))
    }
    cpu = _medians(rounds, "cpu_seconds", False if calls > 1 else True)
    ratios = {
        f"{fast}_vs_f32_{kind}": seconds[kind]["f32"] / seconds[kind][fast]
        for fast in ("fast", "fast_prepared")
        for kind in seconds
    }
    loads = [v for r in rounds.values() for v in r["load_before"] + r["load_after"]]
    return {
        "shape": name,
        "rows": rows,
        "cols": cols,
        "n": n,
        "macs": macs,
        "reference_rows_timed": ref_rows,
        "reference_time_scaled_by": f"rows / reference_rows_timed = {rows / ref_rows:g}",
        "statistic": (f"median over {repeats} interleaved rounds of {calls} calls in a row each: "
                      "first_call = each round's first call, steady = its later calls"),
        "seconds": seconds,
        "macs_per_s": {kind: {k: macs / v for k, v in s.items()} for kind, s in seconds.items()},
        "ratios": ratios,
        # process CPU time (all threads) of steady calls: with --threads 1, the time on a core of its own
        "cpu_seconds": {"fast": cpu["fast"], "f32": cpu["f32"]},
        "ratio_fast_vs_f32_cpu_time": cpu["f32"] / cpu["fast"],
        "ratio_fast_vs_reference": seconds["steady"]["reference"] / seconds["steady"]["fast"],
        "load_average_min_max": [min(loads), max(loads)],
        "rounds": rounds,
        "checked_against_reference": True,
    }


def print_table(results: list[dict]) -> None:
    """One line per shape: GMAC/s of each product (steady calls, first calls in brackets) and the ratios."""
    print(f"{'shape':<13}{'fast GMAC/s':>14}{'prepared':>14}{'f32 GMAC/s':>14}{'fast/f32':>14}{'prepared/f32':>14}"
          f"{'fast/ref':>9}{'load':>12}")
    for r in results:
        m, q = r["macs_per_s"], r["ratios"]
        rates = [f"{m['steady'][k] / 1e9:.0f} ({m['first_call'][k] / 1e9:.0f})" for k in ("fast", "fast_prepared", "f32")]
        ratios = [f"{q[k + '_vs_f32_steady']:.2f} ({q[k + '_vs_f32_first_call']:.2f})" for k in ("fast", "fast_prepared")]
        print(
            f"{r['shape']:<13}" + "".join(f"{v:>14}" for v in rates + ratios) + f"{r['ratio_fast_vs_reference']:>9.0f}"
            + f"{r['load_average_min_max'][0]:>6.2f}..{r['load_average_min_max'][1]:.2f}"
        )
    print("(median GMAC/s of the calls after the first in a round, each round's first call in brackets; "
          "prepared: y prepared once, as a resident weight; load: the 1-minute load average around the timed calls, min..max)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/bgemm.json"), help="JSON result file")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per product (the median is reported)")
    parser.add_argument("--calls", type=int, default=5,
                        help="timed calls in a row of each product per round (the first one is reported apart)")
    parser.add_argument("--ref-rows", type=int, default=256, help="rows of x the golden reference is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the kernel and for BLAS (default: every CPU this process may use)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.calls < 1 or args.ref_rows < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --calls, --ref-rows and --threads must be >= 1")
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        set_threads(args.threads)
        threadpool_limits(args.threads)

    rng = np.random.default_rng(args.seed)
    info = machine_info()
    results = [bench_shape(*shape, args.ref_rows, args.repeats, args.calls, rng) for shape in SHAPES]
    info["load_average_at_end"] = list(os.getloadavg())
    info["kernel_threads"] = get_threads()
    print_table(results)
    report = {
        "mac_definition": "one binary (bipolar) multiply-accumulate; float32 matmul counted as rows*cols*n MACs",
        "machine": info,
        "results": results,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
