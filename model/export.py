"""Export a trained torch ViT (``model.vit``) to the packed model file.

The host-side parts (tokens, position embedding, LayerNorms, the 8-bit patch
embedding and heads) become float32 tensors and float layers, with the
weights exactly as the torch model uses them (fake-quantized when 8-bit).
Every binary layer of a quantized model (``gsb``, ``bin1`` and their
variants, at the final training stage) becomes an engine layer: its weight
signs as bipolar planes with their scale, and its input quantizer's frozen
deploy parameters (``deploy_params``) as a :class:`~model.quantizers.Quantizer`.
``Q K^T`` and ``A V`` become engine matmuls of the Q/K and attention-map/V
quantizers. A full-precision model exports with float layers only.

A GSB-family model also carries its integer-only program (:mod:`model.intvit`).

Usage: ``python -m model.export CHECKPOINT OUT.gsbf [--no-integer]``.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from model.config import Config
from model.deploy import engine_linear, quantizer
from model.golden import DEFAULT_WORD_BITS
from model.layers import EngineMatmul, FloatLinear, FloatMatmul, Layer
from model.modelfile import Architecture, Model, Preprocessing, save
from model.vit import GELU_CLIP, Int8Linear, ViT, deploy_spec
from model.gsb import fake_quant_int8


def _f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


def _float_linear(lin: torch.nn.Linear) -> FloatLinear:
    w = fake_quant_int8(lin.weight) if isinstance(lin, Int8Linear) and bool(lin.int8) else lin.weight
    return FloatLinear(_f32(w), None if lin.bias is None else _f32(lin.bias))


def architecture(model: ViT) -> Architecture:
    """The file's architecture record of a torch ViT."""
    cfg = model.cfg
    return Architecture(
        image_size=cfg.image_size, in_channels=cfg.in_channels, patch_size=cfg.patch_size, dim=cfg.dim, depth=cfg.depth,
        heads=cfg.heads, mlp_hidden=cfg.mlp_hidden, num_classes=cfg.num_classes, distillation_token=bool(cfg.distillation_token),
        mlp_clip=GELU_CLIP if model.kind != "fp" else None, ln_eps=float(model.norm.eps),
    )


@torch.no_grad()
def export_model(
    model: ViT,
    preprocessing: Preprocessing,
    word_bits: int = DEFAULT_WORD_BITS,
    meta: dict | None = None,
    overrides: dict[str, Layer] | None = None,
) -> Model:
    """The :class:`~model.modelfile.Model` of a trained torch ViT.

    ``overrides`` replaces layers by name (e.g. ``blocks.0.attn.qkv``): other
    compression methods (PTQ, low rank) export an FP model with their own
    engine layers and reuse everything else.
    """
    arch = architecture(model)
    tensors = {"cls_token": _f32(model.cls_token[0]), "pos_embed": _f32(model.pos_embed[0]),
               "norm.weight": _f32(model.norm.weight), "norm.bias": _f32(model.norm.bias)}
    if model.dist_token is not None:
        tensors["dist_token"] = _f32(model.dist_token[0])
    layers: dict[str, Layer] = {"patch_embed": _float_linear(model.patch_embed), "head": _float_linear(model.head)}
    if model.head_dist is not None:
        layers["head_dist"] = _float_linear(model.head_dist)
    quantized = model.kind != "fp"
    if quantized and int(model.stage) != 2:
        raise ValueError(f"only a fully quantized model (stage 2) exports to the engine, this one is at stage {int(model.stage)}")
    spec = deploy_spec(model) if quantized else None
    inv_sqrt = 1.0 / math.sqrt(arch.head_dim)
    for i, blk in enumerate(model.blocks):
        p = f"blocks.{i}"
        for norm in ("norm1", "norm2"):
            tensors[f"{p}.{norm}.weight"] = _f32(getattr(blk, norm).weight)
            tensors[f"{p}.{norm}.bias"] = _f32(getattr(blk, norm).bias)
        linears = {"attn.qkv": blk.attn.qkv, "attn.proj": blk.attn.proj, "mlp.fc1": blk.mlp.fc1, "mlp.fc2": blk.mlp.fc2}
        if not quantized:
            layers.update({f"{p}.{name}": _float_linear(lin) for name, lin in linears.items()})
            layers[f"{p}.attn.qk"] = FloatMatmul(inv_sqrt)
            layers[f"{p}.attn.av"] = FloatMatmul(1.0)
            continue
        b = spec["blocks"][i]
        for name in linears:
            layers[f"{p}.{name}"] = engine_linear(b[name.split(".")[1]], word_bits)
        layers[f"{p}.attn.qk"] = EngineMatmul(quantizer(b["q"]), quantizer(b["k"]), inv_sqrt)
        layers[f"{p}.attn.av"] = EngineMatmul(quantizer(b["attn"]), quantizer(b["v"]))
    unknown = sorted(set(overrides or {}) - set(layers))
    if unknown:
        raise ValueError(f"overrides name layers the model does not have: {unknown}")
    layers.update(overrides or {})
    return Model(arch, preprocessing, tensors, layers, word_bits, dict(meta or {}, method=model.method))


def _checkpoint_config(path: str) -> tuple[Config, int]:
    """A ``python -m model.train`` checkpoint's config and seed (loaded with ``weights_only=True``)."""
    from model.config import from_dict
    from model.train import load_checkpoint

    ck = load_checkpoint(path)
    return from_dict(ck["config"]), int(ck["seed"])


def checkpoint_preprocessing(path: str) -> tuple[Preprocessing, list[str] | None]:
    """The input preprocessing of a ``python -m model.train`` checkpoint, and its class names (a folder's).

    The divisor is the data's own top raw pixel value and mean/std are the
    training split's statistics, one of each per channel (the integer
    program folds them into its 8-bit patch embedding, one product per channel).  ``dataset``
    names a built-in dataset, or is the path of the file or folder.
    """
    from model.data import load_splits

    cfg, seed = _checkpoint_config(path)
    splits = load_splits(cfg.data.source(), cfg.data.samples_per_class, cfg.data.val_per_class, seed)
    pre = Preprocessing(float(splits.input_divisor), splits.mean, splits.std, cfg.data.path or cfg.data.dataset)
    return pre, splits.classes


def calibration_images(path: str) -> np.ndarray:
    """The raw training images of a checkpoint's own training split (what the integer program calibrates on).

    The integer program takes integer raw pixels: a dataset whose raw values
    are not integers raises (export it with ``integer=False``).
    """
    from model.data import load_raw, split_indices

    cfg, seed = _checkpoint_config(path)
    pool = load_raw(cfg.data.source())
    train, _ = split_indices(pool.ytr, cfg.data.samples_per_class, cfg.data.val_per_class, seed)
    raw = pool.xtr[train]
    if not np.array_equal(raw, np.rint(raw)):
        raise ValueError(f"{cfg.data.path or cfg.data.dataset}: raw pixels are not integers, which the integer program "
                         "needs (store them on an integer scale, e.g. 0..255 with data.scale 255, or export with --no-integer)")
    return raw.astype(np.int64)


def export_checkpoint(path: str, word_bits: int = DEFAULT_WORD_BITS, overrides: dict[str, Layer] | None = None,
                      integer: bool = True) -> Model:
    """Export a ``python -m model.train`` checkpoint, with its dataset's preprocessing.

    A GSB-family model (``gsb``, ``bin1`` and their variants) also gets its
    integer program (:mod:`model.intvit`), calibrated on its training split,
    unless ``integer`` is false or ``overrides`` replace layers.
    """
    from model.intvit import attach, compile_program
    from model.train import load_model

    torch_model = load_model(path)
    pre, classes = checkpoint_preprocessing(path)
    meta = {"checkpoint": str(path), **({"classes": classes} if classes else {})}
    model = export_model(torch_model, pre, word_bits, meta, overrides)
    if integer and torch_model.kind != "fp" and not overrides:
        attach(model, compile_program(model, calibration_images(path)))
    return model


def main(argv: list[str] | None = None) -> int:
    """``python -m model.export``: a training checkpoint to a model file."""
    parser = argparse.ArgumentParser(prog="python -m model.export", description="Export a trained checkpoint to a packed .gsbf model file.")
    parser.add_argument("checkpoint", help="a checkpoint written by python -m model.train (best.pt)")
    parser.add_argument("out", help="the model file to write (.gsbf)")
    parser.add_argument("--word-bits", type=int, default=DEFAULT_WORD_BITS, help="packing word width (default 64)")
    parser.add_argument("--no-integer", action="store_true",
                        help="do not compile the integer-only program (by default a GSB-family model carries one)")
    args = parser.parse_args(argv)
    model = export_checkpoint(args.checkpoint, args.word_bits, integer=not args.no_integer)
    save(model, args.out)
    print(f"wrote {args.out}" + (" with its integer program" if model.integer is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
