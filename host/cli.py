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


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All of scikit-learn's digits as raw (N, 1, 8, 8) pixel values 0..16 and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.reshape(-1, 1, 8, 8).astype(np.float32), digits.target.astype(np.int64)


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


def cmd_infer(args: argparse.Namespace) -> int:
    try:
        model = modelfile.load(args.model)
    except modelfile.ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images, labels = digits_images()
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    summary = infer(model, images, labels, args.backend, progress=not args.quiet)
    _print_summary(summary)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from model.random_model import random_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "random-vit.gsbf"
    model = random_model(seed=0)
    modelfile.save(model, path)
    arch = model.architecture
    print(f"demo: wrote {path} ({os.path.getsize(path)} bytes): a ViT-shaped model with RANDOM planes "
          f"(dim {arch.dim}, depth {arch.depth}, heads {arch.heads}, {arch.tokens} tokens), untrained")
    model = modelfile.load(path)
    images, labels = digits_images()
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    print(f"demo: running {len(images)} digits images through the host runtime on the EmulatorBackend "
          "(every binary product, Q K^T and attention x V included, on the popcount contract)")
    summary = infer(model, images, labels, "emulator", progress=not args.quiet)
    _print_summary(summary)
    print("demo: the weights are random, so the accuracy is chance level (about 10%); it shows the path runs end to end")
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m host", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="run a model file's test images through a backend")
    p.add_argument("--model", required=True, help="the packed model file (.gsbf) to run")
    p.add_argument("--backend", default="emulator", choices=["emulator"], help="where the binary products run (default: emulator)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N test images")
    p.add_argument("--json", default=None, help="write the summary (accuracy, latency, predictions) to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("demo", help="what `make demo` runs")
    p.add_argument("--out", default="build/demo", help="folder for the model file and summary (default: build/demo)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m host``."""
    args = build_parser().parse_args(argv)
    return args.func(args)
