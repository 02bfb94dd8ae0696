"""The integer-only GSB models against their float-host versions: ``results/integer.json`` and ``results/integer_table.md``.

``python -m host.integer_results`` takes, for each dataset and seed, the GSB
run of ``python -m model.results`` (training the FP teacher and the GSB model
first where a run is missing), exports it with its integer program
(calibrated on the run's own training split) and measures on the dataset's
whole test split:

* the float-host GSB model: the torch deploy forward (engine products as
  integers, LayerNorm, softmax, GELU, residuals and heads in float32), the
  model as it ran before the integer program;
* the integer program in torch (:func:`model.vit.deploy_integer`, int64
  products on unpacked codes) and on the EmulatorBackend (packed popcount
  products, :class:`host.integer_runtime.IntegerRuntime`): their logits must
  be equal on every image, and every step's integers equal on a sample.

The table gives the mean and sample std over seeds of each accuracy and of
the difference (integer minus float-host).  Each measured run is kept in
its run folder (``integer.json`` next to the GSB checkpoint,
``integer_ptq<b>.json`` next to the FP one) and not measured again, so the
command can be re-run after an interruption; ``--again`` measures anew.

PTQ models (``--ptq-bits``, default W8A8 and W4A4): the FP run of each seed,
quantized by the PTQ search of :mod:`model.ptq` (similarity + ranking loss,
bias correction, sequential; calibration seed 0, 100 training images), as
its float-host version (:class:`model.ptq.quant.QModel`: engine layers as
integers, patch embedding, heads, LayerNorm, softmax and GELU in float) and as
an integer program (its patch embedding and heads rounded to 8 bits).  The
emulator runs the first ``--ptq-engine-images`` test images of each (the
bit-serial int8 products are 64 plane products each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DATASETS = {"digits": "configs/digits.yaml", "fashion_mnist": "configs/fashion_mnist.yaml"}
TRACE_SAMPLE = 16  #: images whose every step is compared


def _in_batches(logits_of, images: np.ndarray, batch: int, progress: bool = False, desc: str = "") -> np.ndarray:
    """``logits_of`` applied to ``images`` ``batch`` at a time, concatenated (a progress bar when ``progress``)."""
    from tqdm import tqdm

    starts = tqdm(range(0, len(images), batch), desc=desc, unit="batch", disable=not progress)
    return np.concatenate([np.asarray(logits_of(images[i:i + batch])) for i in starts])


def evaluate(checkpoint: str, batch: int = 256, progress: bool = True) -> dict:
    """One GSB run's float-host and integer accuracies and the engine agreement, on its test split."""
    import torch

    from host.cli import test_images
    from host.emulator import EmulatorBackend
    from host.integer_runtime import IntegerRuntime
    from model import intvit
    from model.export import export_checkpoint
    from model.train import load_model
    from model.vit import deploy_integer

    started = time.time()
    model = export_checkpoint(checkpoint)
    prog = intvit.program(model)
    raw, labels = test_images(model.preprocessing.dataset)
    raw = raw.astype(np.int64)
    torch_model = load_model(checkpoint)
    runtime = IntegerRuntime(prog, EmulatorBackend("fast"))
    float_pred = _in_batches(lambda x: torch_model.deploy(torch.from_numpy(model.preprocessing.apply(x))), raw, batch,
                             progress, os.path.dirname(checkpoint)).argmax(-1)
    torch_int = _in_batches(lambda x: deploy_integer(prog, x), raw, batch)
    emulator_int = _in_batches(runtime.logits, raw, batch)
    int_pred = intvit.intops.argmax(torch_int)
    reference, traced = intvit.Trace(keep=True), IntegerRuntime(prog, EmulatorBackend("fast"), trace=True)
    deploy_integer(prog, raw[:TRACE_SAMPLE], reference)
    traced.logits(raw[:TRACE_SAMPLE])
    steps_equal = all(np.array_equal(v, traced.last_trace[k]) for k, v in reference.values.items())
    return {
        "checkpoint": checkpoint,
        "images": int(len(raw)),
        "float_host_acc": 100.0 * float(np.mean(float_pred == labels)),
        "integer_acc": 100.0 * float(np.mean(int_pred == labels)),
        "torch_equals_emulator_logits": float(np.mean(np.all(torch_int == emulator_int, axis=-1))),
        "steps_equal_on_sample": bool(steps_equal and reference.values.keys() == traced.last_trace.keys()),
        "sample_images": TRACE_SAMPLE,
        "steps_per_image": reference.steps,
        "float_steps": reference.float_steps + runtime.float_steps,
        "agreement_with_float_host": float(np.mean(int_pred == float_pred)),
        "residual_frac": prog.params["residual_frac"],
        "seconds": time.time() - started,
    }


def evaluate_ptq(fp_checkpoint: str, bits: int, engine_images: int = 300, batch: int = 256, progress: bool = True) -> dict:
    """A PTQ model at W``bits``A``bits`` of an FP run: float-host against integer-only accuracy on the test split."""
    from host.cli import test_images
    from host.emulator import EmulatorBackend
    from host.integer_runtime import IntegerRuntime
    from model import intvit
    from model.data import load_splits
    from model.export import calibration_images, export_checkpoint
    from model.ptq.quant import DEFAULT_ACC_BITS, QModel, build_layers
    from model.ptq.search import SearchConfig, calibration_indices, capture, search_model
    from model.train import load_checkpoint, load_model
    from model.vit import deploy_integer

    started = time.time()
    model = load_model(fp_checkpoint)
    ck = load_checkpoint(fp_checkpoint)
    data = ck["config"]["data"]
    splits = load_splits(data["dataset"], data["samples_per_class"], data["val_per_class"], int(ck["seed"]))
    calib = splits.train.x[calibration_indices(len(splits.train.y), 100, 0)]
    spec, _ = search_model(model, calib, bits, SearchConfig(sequential=True), capture(model, calib), acc_bits=DEFAULT_ACC_BITS)
    layers = build_layers(model, spec, acc_bits=DEFAULT_ACC_BITS)
    float_pred = QModel(model, layers).predict(splits.test.x)
    exported = export_checkpoint(fp_checkpoint, overrides=layers)
    prog = intvit.compile_program(exported, calibration_images(fp_checkpoint))
    raw, labels = test_images(exported.preprocessing.dataset)
    raw = raw.astype(np.int64)
    logits = _in_batches(lambda x: deploy_integer(prog, x), raw, batch, progress, f"W{bits}A{bits}")
    shown = raw[: engine_images if engine_images > 0 else len(raw)]
    runtime = IntegerRuntime(prog, EmulatorBackend("fast"))
    emulator = _in_batches(runtime.logits, shown, 64)
    int_pred = intvit.intops.argmax(logits)
    return {
        "checkpoint": fp_checkpoint, "bits": bits, "images": int(len(raw)),
        "float_host_acc": 100.0 * float(np.mean(float_pred == labels)),
        "integer_acc": 100.0 * float(np.mean(int_pred == labels)),
        "engine_images": int(len(shown)),
        "torch_equals_emulator_logits": float(np.mean(np.all(emulator == logits[: len(shown)], axis=-1))),
        "float_steps": runtime.float_steps,
        "agreement_with_float_host": float(np.mean(int_pred == float_pred)),
        "seconds": time.time() - started,
    }


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.array(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def ptq_table_md(results: dict) -> str:
    """The markdown table of the PTQ programs (``results[dataset]`` lists one record per bit width and seed)."""
    lines = ["PTQ models (similarity + ranking search, bias correction), float-host against integer-only, test accuracy (%), "
             "mean ± std over seeds; the emulator's logits compared with torch's on the first images of each.", "",
             "| dataset | setting | seeds | float-host | integer-only | integer − float-host | torch = emulator (images) |",
             "|---|---|---|---|---|---|---|"]
    for dataset, runs in results.items():
        for bits in sorted({r["bits"] for r in runs}, reverse=True):
            sel = [r for r in runs if r["bits"] == bits]
            fh, it = _mean_std([r["float_host_acc"] for r in sel]), _mean_std([r["integer_acc"] for r in sel])
            diff = _mean_std([r["integer_acc"] - r["float_host_acc"] for r in sel])
            equal = min(r["torch_equals_emulator_logits"] for r in sel)
            lines.append(f"| {dataset} | W{bits}A{bits} | {len(sel)} | {fh[0]:.2f} ± {fh[1]:.2f} | {it[0]:.2f} ± {it[1]:.2f} | "
                         f"{diff[0]:+.2f} ± {diff[1]:.2f} | {100 * equal:.0f}% ({sum(r['engine_images'] for r in sel)}) |")
    return "\n".join(lines)


def table_md(results: dict) -> str:
    """The markdown table of :func:`main`'s GSB results."""
    lines = ["Test accuracy (%) of the GSB + KD model (100 training images per class), float-host against integer-only, "
             "mean ± std over seeds, whole test split. Integer = `model.vit.deploy_integer` (torch) = the EmulatorBackend "
             "(column: share of test images with identical logits).", "",
             "| dataset | seeds | float-host | integer-only | integer − float-host | torch = emulator | same prediction |",
             "|---|---|---|---|---|---|---|"]
    for dataset, runs in results.items():
        fh, it = _mean_std([r["float_host_acc"] for r in runs]), _mean_std([r["integer_acc"] for r in runs])
        diff = _mean_std([r["integer_acc"] - r["float_host_acc"] for r in runs])
        equal = min(r["torch_equals_emulator_logits"] for r in runs)
        agree = _mean_std([100 * r["agreement_with_float_host"] for r in runs])
        lines.append(f"| {dataset} | {len(runs)} | {fh[0]:.2f} ± {fh[1]:.2f} | {it[0]:.2f} ± {it[1]:.2f} | "
                     f"{diff[0]:+.2f} ± {diff[1]:.2f} | {100 * equal:.0f}% | {agree[0]:.1f}% |")
    return "\n".join(lines)


def _cached(path: str, again: bool, measure) -> dict:
    """The record in ``path``, or ``measure()`` written there."""
    if os.path.exists(path) and not again:
        with open(path) as f:
            return json.load(f)
    record = measure()
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
    return record


def main(argv: list[str] | None = None) -> int:
    """``python -m host.integer_results``."""
    p = argparse.ArgumentParser(prog="python -m host.integer_results", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS), help="default: both")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--root", default="runs/results", help="the run folders of python -m model.results (default runs/results)")
    p.add_argument("--results-dir", default="results", help="where integer.json and integer_table.md go (default results)")
    p.add_argument("--ptq-bits", nargs="*", type=int, default=[8, 4], help="PTQ settings W<b>A<b> to compile (none: skip PTQ)")
    p.add_argument("--ptq-engine-images", type=int, default=300, help="test images per PTQ program on the emulator (0: all)")
    p.add_argument("--skip-gsb", action="store_true", help="only the PTQ programs")
    p.add_argument("--again", action="store_true", help="measure every run again (by default a run's integer*.json is reused)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    a = p.parse_args(argv)
    import torch

    from model.results import run_dir, run_matrix

    torch.set_num_threads(1)
    results: dict[str, list[dict]] = {}
    ptq: dict[str, list[dict]] = {}
    for dataset in a.datasets:
        for seed in a.seeds if not a.skip_gsb else []:
            checkpoint = os.path.join(run_dir(a.root, dataset, 100, seed, "gsb"), "best.pt")
            if not os.path.exists(os.path.join(os.path.dirname(checkpoint), "metrics.json")):
                run_matrix([DATASETS[dataset]], ["fp", "gsb"], [seed], 100, a.root)
            r = _cached(os.path.join(os.path.dirname(checkpoint), "integer.json"), a.again,
                        lambda: evaluate(checkpoint, progress=not a.quiet))
            print(f"[integer] {dataset} seed {seed}: float-host {r['float_host_acc']:.2f}, integer {r['integer_acc']:.2f}, "
                  f"torch = emulator on {100 * r['torch_equals_emulator_logits']:.1f}% ({r['seconds']:.0f} s)", flush=True)
            results.setdefault(dataset, []).append(dict(r, seed=seed))
        for seed in a.seeds:
            for bits in a.ptq_bits:
                checkpoint = os.path.join(run_dir(a.root, dataset, 100, seed, "fp"), "best.pt")
                if not os.path.exists(os.path.join(os.path.dirname(checkpoint), "metrics.json")):
                    run_matrix([DATASETS[dataset]], ["fp"], [seed], 100, a.root)
                r = _cached(os.path.join(os.path.dirname(checkpoint), f"integer_ptq{bits}.json"), a.again,
                            lambda: evaluate_ptq(checkpoint, bits, a.ptq_engine_images, progress=not a.quiet))
                print(f"[integer] {dataset} seed {seed} W{bits}A{bits}: float-host {r['float_host_acc']:.2f}, "
                      f"integer {r['integer_acc']:.2f} ({r['seconds']:.0f} s)", flush=True)
                ptq.setdefault(dataset, []).append(dict(r, seed=seed))
    os.makedirs(a.results_dir, exist_ok=True)
    with open(os.path.join(a.results_dir, "integer.json"), "w") as f:
        json.dump({"gsb": results, "ptq": ptq}, f, indent=1)
    table = "\n\n".join(t for t in (table_md(results) if results else "", ptq_table_md(ptq) if ptq else "") if t)
    with open(os.path.join(a.results_dir, "integer_table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
