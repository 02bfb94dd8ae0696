"""Export a PTQ model to the packed model file and run it through the host runtime.

The FP checkpoint exports with :func:`model.export.export_checkpoint`, its
engine layers replaced by the PTQ spec's (:func:`model.ptq.quant.build_layers`):
each weight is one ``int<b>`` group of b unipolar planes (two's complement
weights), each input quantizer one ``int<b>``/``uint<b>`` group, so the engine
runs every product bit-serially as ``b_x * b_w`` plane products.  Patch
embedding and heads stay float layers on the host.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from model import modelfile
from model.golden import DEFAULT_WORD_BITS
from model.ptq.quant import DEFAULT_ACC_BITS, QSpec, build_layers

if TYPE_CHECKING:
    from host.sim_backend import SimBackend


def export_ptq(checkpoint: str, model, spec: QSpec, word_bits: int = DEFAULT_WORD_BITS,
               acc_bits: int | None = DEFAULT_ACC_BITS, meta: dict | None = None) -> modelfile.Model:
    """The :class:`~model.modelfile.Model` of FP ``checkpoint`` quantized by ``spec``."""
    from model.export import export_checkpoint

    mf = export_checkpoint(checkpoint, word_bits, overrides=build_layers(model, spec, word_bits, acc_bits))
    mf.meta = dict(mf.meta, method="ptq", **(meta or {}))
    return mf


def raw_test_images(mf: modelfile.Model) -> tuple[np.ndarray, np.ndarray]:
    """The model's dataset's fixed test split as raw pixels (N, C, H, W) and labels (as ``python -m host infer``)."""
    from host.cli import test_images

    return test_images(mf.preprocessing.dataset)


def torch_inputs(mf: modelfile.Model, raw: np.ndarray) -> np.ndarray:
    """The normalised float32 inputs the runtime computes from ``raw`` (its own preprocessing)."""
    return np.stack([mf.preprocessing.apply(img) for img in raw])


def run_runtime(mf: modelfile.Model, raw: np.ndarray, backend=None) -> dict:
    """Predictions and engine cycles per image of ``raw`` images on a backend (EmulatorBackend by default)."""
    from host.emulator import EmulatorBackend
    from host.runtime import Runtime

    backend = backend if backend is not None else EmulatorBackend("fast")
    rt = Runtime(mf, backend)
    c0 = backend.cycles()
    logits = np.stack([rt.forward(img) for img in raw])
    return {"logits": logits, "predictions": logits.argmax(-1), "cycles_per_image": (backend.cycles() - c0) / max(1, len(raw))}


def sim_backend() -> SimBackend:
    """A SimBackend for PTQ models: a longer simulated read timeout than the default 0.01 s (a PTQ
    layer's runs are long); layers the simulated configuration cannot hold run on the host by the contract."""
    from host.sim_backend import SimBackend

    return SimBackend(timeout=1.0, host_fallback=True)
