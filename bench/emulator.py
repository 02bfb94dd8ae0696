"""The emulator as a CPU inference engine: images/s against the torch float model it replaces.

``python -m bench.emulator`` runs the digits test images (540, raw pixels to
class index) through, in the same run, on the same images, batched alike
(``--batch``, default 64) and on the same number of threads (``--threads``,
default 1: torch, the packed kernel's pool and BLAS are all limited to it):

* ``emulator_integer``: the GSB model's integer program compiled for the
  CPU, :class:`host.compiled_program.CompiledProgram` (what ``python -m host
  infer`` runs on the emulator);
* ``emulator_integer_backend``: the same program with every product packed
  and sent through the EmulatorBackend (fast kernel),
  :class:`host.integer_runtime.IntegerRuntime`, the path a device takes;
* ``emulator_float_host``: the same model file's float-host graph on the
  EmulatorBackend, :class:`host.runtime.Runtime`;
* ``torch_fp``: the torch full-precision ViT of the same architecture
  (``model.vit.ViT``, method ``fp``), ``predict`` under ``inference_mode``,
  preprocessing included.  It is the trained full-precision teacher that
  sits next to the GSB checkpoint when there is one, else an untrained ViT
  of the same architecture (its accuracy is then chance; its time is the
  same): the JSON says which.

The GSB model is ``--checkpoint`` (default: the digits results run
``runs/results/digits/spc100/seed0/gsb/best.pt``), exported in memory; when
it does not exist, the demo's model (``build/demo``, trained the first time,
a few minutes) is used.  Nothing else is trained.

Each engine runs once to warm up, then ``--repeats`` interleaved rounds; the
figure is the median round.  The load average (1 minute) is recorded before
and after every timed round: the machine may be shared, and other jobs slow
every engine, not all alike.  The process CPU time of every round is
recorded too: with one thread it is what the run would take on a core of
its own (``images_per_cpu_s``), the better estimate of an idle machine
when the load is high (other jobs on sibling hyperthreads and in the
caches still slow it).  Writes ``bench/out/emulator.json`` with the ratios
``emulator / torch_fp``, by wall time and by CPU time, and where the
compiled program's time goes, kernel by kernel (:func:`kernel_breakdown`).
"""

from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from collections.abc import Callable

import numpy as np

from bench import write_report

GSB_CHECKPOINT = Path("runs/results/digits/spc100/seed0/gsb/best.pt")
#: the emulator's engines, each compared with torch_fp
ENGINES = ("emulator_integer", "emulator_integer_backend", "emulator_float_host")


def gsb_model(checkpoint: Path, progress: bool):
    """``(model file, GSB checkpoint)``: the checkpoint exported, or the demo's model when it is missing."""
    from model import modelfile
    from model.export import export_checkpoint

    if checkpoint.exists():
        return export_checkpoint(str(checkpoint)), checkpoint
    from host.cli import demo_model

    print(f"bench.emulator: {checkpoint} not found: using the demo's model (build/demo, trained the first time)")
    path = demo_model(Path("build/demo"), progress)
    return modelfile.load(path), Path("build/demo/runs/gsb/best.pt")


def fp_model(gsb_checkpoint: Path):
    """``(torch FP ViT, description)``: the trained teacher beside the GSB run, else an untrained one."""
    from model.train import load_model
    from model.vit import ViT

    teacher = gsb_checkpoint.parent.parent / "fp" / "best.pt"
    if teacher.exists():
        model = load_model(str(teacher))
        if model.kind == "fp":
            return model, f"trained full-precision teacher {teacher}"
    cfg = load_model(str(gsb_checkpoint)).cfg
    return ViT(cfg, "fp").eval(), "untrained ViT (random weights) of the same architecture: timing only, accuracy is chance"


def kernel_breakdown(prog, batches: list[np.ndarray], repeats: int) -> dict[str, float]:
    """Seconds per pass over ``batches`` of each :mod:`host.fused` kernel of the compiled program, and the rest.

    Every kernel is wrapped with a timer for a fresh program (its recorded
    blocks call the wrappers), run once to warm up and ``repeats`` times;
    ``other`` is the rest of a pass (Python, numpy steps, the patch
    embedding's and heads' glue), the median of the passes.
    """
    import time
    from collections import defaultdict

    from host import fused
    from host.compiled_program import CompiledProgram

    names = [n for n in dir(fused) if not n.startswith("_") and hasattr(getattr(fused, n), "py_func")]
    originals = {n: getattr(fused, n) for n in names}
    spent: dict[str, float] = defaultdict(float)

    def timed(name: str, kernel):
        def run(*args):
            start = time.perf_counter()
            kernel(*args)
            spent[name] += time.perf_counter() - start
        return run

    try:
        for n in names:
            setattr(fused, n, timed(n, originals[n]))
        compiled = CompiledProgram(prog)
        for b in batches:
            compiled.logits(b)
        passes = []
        for _ in range(repeats):
            before, start = dict(spent), time.perf_counter()
            for b in batches:
                compiled.logits(b)
            passes.append((time.perf_counter() - start, {n: spent[n] - before.get(n, 0.0) for n in spent}))
    finally:
        for n in names:
            setattr(fused, n, originals[n])
    total, kernels = sorted(passes, key=lambda p: p[0])[len(passes) // 2]
    result = {n: v for n, v in sorted(kernels.items(), key=lambda kv: -kv[1]) if v > 0}
    result["other"] = total - sum(result.values())
    return result


def time_rounds(engines: dict[str, Callable[[], np.ndarray]], repeats: int) -> tuple[dict, dict]:
    """Warm up each engine, then ``repeats`` interleaved timed rounds with the load average around each.

    Returns ``(predictions of the warm-up run, per engine: seconds and load averages of every round)``.
    """
    from bench.bgemm import time_rounds as interleaved

    predictions = {name: fn() for name, fn in engines.items()}  # the warm-up run
    return predictions, interleaved(engines, repeats, warm_up=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=GSB_CHECKPOINT, help="the GSB checkpoint (best.pt) to export")
    parser.add_argument("--batch", type=int, default=64, help="images per call, every engine (default: 64)")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch, the kernel and BLAS (default: 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per engine; the median is reported")
    parser.add_argument("--out", type=Path, default=Path("bench/out/emulator.json"), help="JSON result file")
    args = parser.parse_args(argv)
    if min(args.batch, args.threads, args.repeats) < 1:
        parser.error("--batch, --threads and --repeats must be >= 1")

    import torch
    from threadpoolctl import threadpool_limits

    from bench.bgemm import machine_info
    from host import kernels
    from host.cli import test_images
    from host.compiled_program import CompiledProgram
    from host.emulator import EmulatorBackend
    from host.integer_runtime import IntegerRuntime
    from host.runtime import Runtime
    from model import intvit

    torch.set_num_threads(args.threads)
    kernels.set_threads(args.threads)
    threadpool_limits(args.threads)
    info = machine_info()

    model, checkpoint = gsb_model(args.checkpoint, progress=True)
    fp, fp_what = fp_model(checkpoint)
    images, labels = test_images(model.preprocessing.dataset)
    batches = [images[i:i + args.batch] for i in range(0, len(images), args.batch)]
    compiled = CompiledProgram(intvit.program(model))
    integer = IntegerRuntime(intvit.program(model), EmulatorBackend("fast"))
    float_host = Runtime(model, EmulatorBackend("fast"))

    def torch_fp() -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate([
                fp.predict(torch.from_numpy(model.preprocessing.apply(b))).argmax(-1).numpy() for b in batches])

    engines = {
        "emulator_integer": lambda: np.concatenate([compiled.predict(b) for b in batches]),
        "emulator_integer_backend": lambda: np.concatenate([integer.predict(b) for b in batches]),
        "emulator_float_host": lambda: np.concatenate([float_host.predict(b) for b in batches]),
        "torch_fp": torch_fp,
    }
    predictions, rounds = time_rounds(engines, args.repeats)
    breakdown = kernel_breakdown(intvit.program(model), batches, args.repeats)
    info["load_average_at_end"] = list(os.getloadavg())
    results = {}
    for name, r in rounds.items():
        median = statistics.median(r["seconds"])
        cpu = statistics.median(r["cpu_seconds"])
        results[name] = {
            "images_per_s": len(images) / median,
            "median_seconds": median,
            # one thread: CPU time is what the run would take on a core of its own
            "images_per_cpu_s": len(images) / cpu,
            "median_cpu_seconds": cpu,
            "accuracy": float(np.mean(predictions[name] == labels)),
            **r,
        }
    ratios = {f"{name}_vs_torch_fp": results[name]["images_per_s"] / results["torch_fp"]["images_per_s"]
              for name in ENGINES}
    ratios.update({f"{name}_vs_torch_fp_cpu_time": results[name]["images_per_cpu_s"] / results["torch_fp"]["images_per_cpu_s"]
                   for name in ENGINES})

    print(f"{len(images)} images, batch {args.batch}, {args.threads} thread(s), median of {args.repeats} rounds; "
          f"load average {info['load_average_at_start'][0]:.2f} at start, {info['load_average_at_end'][0]:.2f} at end")
    print(f"{'engine':<26}{'images/s':>10}{'vs torch_fp':>13}{'images/cpu-s':>14}{'vs torch_fp':>13}{'accuracy':>10}{'load (min..max)':>18}")
    for name, r in results.items():
        loads = r["load_before"] + r["load_after"]
        ratio = r["images_per_s"] / results["torch_fp"]["images_per_s"]
        cpu_ratio = r["images_per_cpu_s"] / results["torch_fp"]["images_per_cpu_s"]
        print(f"{name:<26}{r['images_per_s']:>10.1f}{ratio:>13.3f}{r['images_per_cpu_s']:>14.1f}{cpu_ratio:>13.3f}"
              f"{100 * r['accuracy']:>9.2f}%{min(loads):>10.2f}..{max(loads):.2f}")
    agree = bool(np.array_equal(predictions["emulator_integer"], predictions["emulator_integer_backend"]))
    print(f"torch_fp: {fp_what}")
    print(f"compiled program and EmulatorBackend predict the same class on every image: {agree}")
    print("emulator_integer, where a pass over the images goes (ms; kernels of host.fused, then the rest):")
    print("  " + ", ".join(f"{name} {1e3 * seconds:.1f}" for name, seconds in breakdown.items()))
    report = {
        "what": "images/s from raw pixels to class index, same images, batch and threads, same run; median of rounds",
        "images": len(images),
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "gsb_checkpoint": str(checkpoint),
        "torch_fp_model": fp_what,
        "machine": {**info, "torch": torch.__version__},
        "results": results,
        "ratios": ratios,
        "compiled_equals_backend": agree,
        "emulator_integer_seconds_per_pass": breakdown,
    }
    write_report(report, args.out)


if __name__ == "__main__":
    main()
