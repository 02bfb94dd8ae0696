"""Export a PTQ model to the packed model file.

The FP checkpoint exports with :func:`model.export.export_checkpoint`, its
engine layers replaced by the PTQ spec's (:func:`model.ptq.quant.build_layers`):
each weight is one ``int<b>`` group of b unipolar planes (two's complement
weights), each input quantizer one ``int<b>``/``uint<b>`` group, so the engine
runs every product bit-serially as ``b_x * b_w`` plane products.  Patch
embedding and heads stay float layers on the host.  Running the file on the
host runtime's backends is the results driver's part (:mod:`host.ptq_results`).
"""

from __future__ import annotations

import numpy as np

from model import modelfile
from model.golden import DEFAULT_WORD_BITS
from model.ptq.quant import DEFAULT_ACC_BITS, QSpec, build_layers


def export_ptq(checkpoint: str, model, spec: QSpec, word_bits: int = DEFAULT_WORD_BITS,
               acc_bits: int | None = DEFAULT_ACC_BITS, meta: dict | None = None) -> modelfile.Model:
    """The :class:`~model.modelfile.Model` of FP ``checkpoint`` quantized by ``spec``."""
    from model.export import export_checkpoint

    mf = export_checkpoint(checkpoint, word_bits, overrides=build_layers(model, spec, word_bits, acc_bits))
    mf.meta = dict(mf.meta, method="ptq", **(meta or {}))
    return mf


def torch_inputs(mf: modelfile.Model, raw: np.ndarray) -> np.ndarray:
    """The normalised float32 inputs the runtime computes from ``raw`` (its own preprocessing)."""
    return np.stack([mf.preprocessing.apply(img) for img in raw])
