"""Binary GEMM throughput: golden reference vs the compiled kernel vs float32 BLAS.

``python -m bench.bgemm`` times, for each shape, the exact bipolar product
``x @ y.T`` (x: rows x n, y: cols x n, both bipolar) three ways and counts
``rows * cols * n`` multiply-accumulates for each:

* ``reference``: :func:`model.golden.operand_product`, timed on the first
  ``--ref-rows`` rows of x only (its broadcast temporaries grow with
  rows x cols x words) and scaled to the full shape by rows;
* ``fast``: :func:`host.kernels.fast_operand_product` on the full operands,
  packed operands in, int64 product out, after a warm-up call (compilation);
* ``f32``: numpy's float32 matmul ``(rows, n) @ (n, cols)``.

Each figure is the median of ``--repeats`` interleaved rounds (the best
round is recorded too), with the 1-minute load average read before and
after every timed call: on a shared machine other jobs slow float BLAS and
the kernel unevenly, and the load says how far a figure is from an idle
machine's.  The fast result is checked against the reference on the timed
rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numba
import numpy as np

from host.kernels import fast_operand_product, get_threads, set_threads
from model.golden import Operand, operand_product

# (name, rows, cols, n): rows x n activations times cols x n weights.
SHAPES = (
    ("square_1024", 1024, 1024, 1024),
    # DeiT-S qkv projection: 197 tokens, 384 inputs, 3 * 384 = 1152 outputs.
    ("deit_s_qkv", 197, 1152, 384),
)


def time_rounds(fns: dict[str, Callable[[], object]], repeats: int, warm_up: bool = True) -> dict[str, dict[str, list[float]]]:
    """Wall times of each function over ``repeats`` rounds, after one warm-up call each (unless ``warm_up`` is false).

    The rounds interleave the functions, so that load from other jobs on the
    machine falls on all of them alike rather than on whichever ran last.
    Returns, per function, ``seconds`` and the 1-minute load average
    ``load_before`` and ``load_after`` each call.
    """
    for fn in fns.values() if warm_up else ():
        fn()
    rounds = {name: {"seconds": [], "cpu_seconds": [], "load_before": [], "load_after": []} for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            rounds[name]["load_before"].append(os.getloadavg()[0])
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            rounds[name]["seconds"].append(time.perf_counter() - start)
            rounds[name]["cpu_seconds"].append(time.process_time() - cpu)
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


def bench_shape(name: str, rows: int, cols: int, n: int, ref_rows: int, repeats: int, rng: np.random.Generator) -> dict:
    """Time the three products for one shape and return MAC/s and ratios."""
    x_vals = np.where(rng.random((rows, n)) < 0.5, -1, 1)
    y_vals = np.where(rng.random((cols, n)) < 0.5, -1, 1)
    x, y = Operand.from_values(x_vals, "bipolar"), Operand.from_values(y_vals, "bipolar")
    ref_rows = min(ref_rows, rows)
    x_sub = Operand.from_values(x_vals[:ref_rows], "bipolar")

    expected = operand_product(x_sub, y)
    if not np.array_equal(fast_operand_product(x, y)[:ref_rows], expected):
        raise AssertionError(f"{name}: fast kernel differs from the golden reference")

    a = rng.standard_normal((rows, n), dtype=np.float32)
    b = rng.standard_normal((n, cols), dtype=np.float32)
    macs = rows * cols * n
    rounds = time_rounds(
        {"reference": lambda: operand_product(x_sub, y), "fast": lambda: fast_operand_product(x, y), "f32": lambda: a @ b},
        repeats,
    )
    median = {k: float(np.median(r["seconds"])) for k, r in rounds.items()}
    cpu = {k: float(np.median(r["cpu_seconds"])) for k, r in rounds.items()}
    best = {k: min(r["seconds"]) for k, r in rounds.items()}
    t_ref, t_fast, t_f32 = median["reference"] * rows / ref_rows, median["fast"], median["f32"]
    loads = [v for r in rounds.values() for v in r["load_before"] + r["load_after"]]
    return {
        "shape": name,
        "rows": rows,
        "cols": cols,
        "n": n,
        "macs": macs,
        "reference_rows_timed": ref_rows,
        "reference_time_scaled_by": f"rows / reference_rows_timed = {rows / ref_rows:g}",
        "seconds": {"reference": t_ref, "fast": t_fast, "f32": t_f32},
        "macs_per_s": {"reference": macs / t_ref, "fast": macs / t_fast, "f32": macs / t_f32},
        "statistic": f"median of {repeats} interleaved rounds",
        "ratio_fast_vs_f32": t_f32 / t_fast,
        "ratio_fast_vs_f32_best_rounds": best["f32"] / best["fast"],
        # process CPU time (all threads): with --threads 1, the time on a core of its own
        "cpu_seconds": {"fast": cpu["fast"], "f32": cpu["f32"]},
        "ratio_fast_vs_f32_cpu_time": cpu["f32"] / cpu["fast"],
        "load_average_min_max": [min(loads), max(loads)],
        "rounds": rounds,
        "ratio_fast_vs_reference": t_ref / t_fast,
        "ratio_reference_vs_f32": t_f32 / t_ref,
        "checked_against_reference": True,
    }


def print_table(results: list[dict]) -> None:
    """One line per shape: GMAC/s of each product and the ratios."""
    print(f"{'shape':<14}{'ref GMAC/s':>12}{'fast GMAC/s':>13}{'f32 GMAC/s':>12}{'fast/f32':>10}{'(cpu time)':>11}{'fast/ref':>10}{'load':>14}")
    for r in results:
        m = r["macs_per_s"]
        print(
            f"{r['shape']:<14}{m['reference'] / 1e9:>12.2f}{m['fast'] / 1e9:>13.1f}{m['f32'] / 1e9:>12.1f}"
            f"{r['ratio_fast_vs_f32']:>10.2f}{r['ratio_fast_vs_f32_cpu_time']:>11.2f}{r['ratio_fast_vs_reference']:>10.0f}"
            f"{r['load_average_min_max'][0]:>8.2f}..{r['load_average_min_max'][1]:.2f}"
        )
    print("(GMAC/s of the median round; fast/f32 by wall time, then by process CPU time; "
          "load: the 1-minute load average around the timed calls, min..max)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/out/bgemm.json"), help="JSON result file")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds per product (the median is reported)")
    parser.add_argument("--ref-rows", type=int, default=256, help="rows of x the golden reference is timed on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for the kernel and for BLAS (default: every CPU this process may use)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.ref_rows < 1 or (args.threads is not None and args.threads < 1):
        parser.error("--repeats, --ref-rows and --threads must be >= 1")
    if args.threads is not None:
        from threadpoolctl import threadpool_limits

        set_threads(args.threads)
        threadpool_limits(args.threads)

    rng = np.random.default_rng(args.seed)
    info = machine_info()
    results = [bench_shape(*shape, args.ref_rows, args.repeats, rng) for shape in SHAPES]
    info["load_average_at_end"] = list(os.getloadavg())
    info["kernel_threads"] = get_threads()
    print_table(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "mac_definition": "one binary (bipolar) multiply-accumulate; float32 matmul counted as rows*cols*n MACs",
        "machine": info,
        "results": results,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
