"""The host command line: run a model file through a backend, or the demo.

``python -m host infer --model FILE`` streams a dataset's test images
through a backend and prints accuracy, latency and throughput; ``python -m
host demo`` is what ``make demo`` runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from host.emulator import EmulatorBackend
from host.runtime import Runtime
from model import modelfile


def test_images(dataset: str, input_divisor: float) -> tuple[np.ndarray, np.ndarray]:
    """A dataset's fixed test split as raw pixels (N, C, H, W) and labels.

    ``model.data`` holds pixels divided by ``input_divisor``; multiplying back
    and rounding gives the exact raw integers a camera or a file would give.
    """
    from model.data import load_pool

    _, _, x, y = load_pool(dataset)
    return np.rint(x * np.float32(input_divisor)).astype(np.float32), y


def infer(model: modelfile.Model, images: np.ndarray, labels: np.ndarray, backend_name: str = "emulator", progress: bool = True) -> dict:
    """Run ``images`` through ``model`` on a backend; return the summary dict."""
    if backend_name != "emulator":
        raise ValueError(f"backend must be 'emulator', got {backend_name!r}")
    runtime = Runtime(model, EmulatorBackend("fast"))
    predictions, latencies = [], []
    for img in tqdm(images, desc=f"infer ({backend_name})", unit="img", disable=not progress):
        start = time.perf_counter()
        predictions.append(int(np.argmax(runtime.forward(img))))
        latencies.append(time.perf_counter() - start)
    predictions = np.array(predictions)
    return {
        "backend": backend_name,
        "images": int(len(images)),
        "accuracy": float(np.mean(predictions == labels)),
        "latency_ms_mean": 1e3 * float(np.mean(latencies)),
        "images_per_s": float(len(images) / np.sum(latencies)),
        "engine_cycles_per_image": runtime.backend.cycles() / max(1, len(images)),
        "predictions": predictions.tolist(),
    }


def _print_summary(summary: dict) -> None:
    print(f"backend {summary['backend']}: {summary['images']} images, accuracy {100 * summary['accuracy']:.2f}%, "
          f"latency {summary['latency_ms_mean']:.2f} ms/image, {summary['images_per_s']:.1f} images/s, "
          f"{summary['engine_cycles_per_image']:.0f} ideal engine cycles/image (16 lanes)")


def _write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(summary, indent=1))
        print(f"wrote {path}")


def _load(path: str) -> modelfile.Model | None:
    try:
        return modelfile.load(path)
    except modelfile.ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_infer(args: argparse.Namespace) -> int:
    model = _load(args.model)
    if model is None:
        return 2
    images, labels = test_images(model.preprocessing.dataset, model.preprocessing.input_divisor)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    summary = infer(model, images, labels, args.backend, progress=not args.quiet)
    summary["model"] = str(args.model)
    _print_summary(summary)
    _write_json(args.json, summary)
    return 0


def demo_model(out: Path, progress: bool) -> Path:
    """Train (or reuse) the default GSB digits model and export it; returns the model file."""
    import torch

    from model.config import load_config
    from model.export import export_checkpoint
    from model.train import train

    path = out / "gsb-digits.gsbf"
    if path.exists():
        print(f"demo: reusing {path} (delete it to train again)")
        return path
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run = out / "runs" / "gsb"
    print("demo: training the default digits model: a full-precision teacher, then GSB in two stages "
          f"(configs/digits.yaml, 100 images per class, seed 0) into {run.parent}; a few minutes on 2 cores")
    metrics = train(load_config("configs/digits.yaml"), "gsb", 0, str(run), resume=True, progress=progress)
    print(f"demo: torch GSB model: validation {metrics['val_acc']:.2f}%, test {metrics['test_acc']:.2f}%")
    modelfile.save(export_checkpoint(str(run / "best.pt")), path)
    print(f"demo: exported {path} ({os.path.getsize(path)} bytes)")
    return path


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _load(str(demo_model(out, not args.quiet)))
    if model is None:
        return 2
    images, labels = test_images("digits", model.preprocessing.input_divisor)
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    arch = model.architecture
    print(f"demo: running the {len(images)} digits test images through the host runtime on the EmulatorBackend: "
          f"every binary product (qkv, proj, fc1, fc2, Q K^T, attention x V; dim {arch.dim}, depth {arch.depth}, "
          f"heads {arch.heads}) on the popcount contract, LayerNorm/softmax/GELU on the host")
    summary = infer(model, images, labels, "emulator", progress=not args.quiet)
    _print_summary(summary)
    _write_json(str(out / "demo.json"), summary)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m host", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="run the test split of a model file's dataset through a backend")
    p.add_argument("--model", required=True, help="the packed model file (.gsbf) to run")
    p.add_argument("--backend", default="emulator", choices=["emulator"], help="where the binary products run (default: emulator)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N test images")
    p.add_argument("--json", default=None, help="write the summary (accuracy, latency, predictions) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("demo", help="what `make demo` runs: train (or reuse) the GSB digits model, export it, run the test set on the emulator")
    p.add_argument("--out", default="build/demo", help="folder for the model file and summary (default: build/demo)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N test images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m host``."""
    args = build_parser().parse_args(argv)
    return args.func(args)
