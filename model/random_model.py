"""A ViT-shaped model with random planes, shaped like an exported GSB model.

It exercises every part of the flow before a trained model exists: int8
patch embedding, bipolar linear layers with per-channel input offsets, an
unsigned fc2 input, binary Q K^T and the attention-map x Value product with
three unipolar levels against bipolar + two ternary Value groups.
"""

from __future__ import annotations

import numpy as np

from model.data import DIGITS_TOP
from model.golden import DEFAULT_WORD_BITS, Encoding, Operand
from model.layers import EngineLinear, EngineMatmul, FloatLinear, WeightGroup
from model.modelfile import Architecture, Model, Preprocessing
from model.quantizers import QuantGroup, Quantizer

TINY = Architecture(image_size=8, in_channels=1, patch_size=2, dim=32, depth=2, heads=2, mlp_hidden=64, num_classes=10, mlp_clip=10.0)


def _bipolar_weights(rng: np.random.Generator, out_f: int, in_f: int, word_bits: int) -> tuple[WeightGroup]:
    w = rng.normal(size=(out_f, in_f))
    codes = np.where(w - w.mean() >= 0, 1, -1)
    return (WeightGroup(Operand.from_values(codes, "bipolar", word_bits), float(np.abs(w).mean() / np.sqrt(in_f))),)


def _sign_input(rng: np.random.Generator, n: int, scale: float = 1.0) -> Quantizer:
    offset = (0.1 * rng.normal(size=n)).astype(np.float32)
    return Quantizer((QuantGroup("sign", Encoding("bipolar"), scale),), offset)


def random_model(arch: Architecture = TINY, seed: int = 0, word_bits: int = DEFAULT_WORD_BITS) -> Model:
    """A model of ``arch`` with random planes, scales, offsets and float tensors."""
    rng = np.random.default_rng(seed)
    d, t, h = arch.dim, arch.tokens, arch.heads
    tensors = {name: (0.5 * rng.normal(size=shape)).astype(np.float32) for name, shape in arch.tensor_shapes().items()}
    for name in tensors:
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
            tensors[name] = (1.0 + 0.1 * rng.normal(size=d)).astype(np.float32)
    layers = {}
    pe_out, pe_in = arch.linear_shapes()["patch_embed"]
    pe_codes = rng.integers(-128, 128, size=(pe_out, pe_in))
    layers["patch_embed"] = EngineLinear(
        Quantizer((QuantGroup("int", Encoding("int", 8), 1.0 / 64, {"step": 1.0 / 64}),)),
        (WeightGroup(Operand.from_values(pe_codes, "int8", word_bits), 1.0 / 128 / np.sqrt(pe_in)),),
        (0.1 * rng.normal(size=pe_out)).astype(np.float32),
    )
    for i in range(arch.depth):
        p = f"blocks.{i}"
        for name, (out_f, in_f) in (("attn.qkv", (3 * d, d)), ("attn.proj", (d, d)), ("mlp.fc1", (arch.mlp_hidden, d))):
            layers[f"{p}.{name}"] = EngineLinear(_sign_input(rng, in_f), _bipolar_weights(rng, out_f, in_f, word_bits),
                                                 (0.1 * rng.normal(size=out_f)).astype(np.float32))
        alpha = 0.8
        layers[f"{p}.mlp.fc2"] = EngineLinear(
            Quantizer((QuantGroup("step", Encoding("unipolar"), alpha, {"threshold": alpha / 2}),)),
            _bipolar_weights(rng, d, arch.mlp_hidden, word_bits), (0.1 * rng.normal(size=d)).astype(np.float32),
        )
        layers[f"{p}.attn.qk"] = EngineMatmul(_sign_input(rng, d), _sign_input(rng, d), out_scale=1.0 / np.sqrt(arch.head_dim))
        attn_levels = Quantizer(
            (QuantGroup("step", Encoding("unipolar"), 1.0 / t, {"threshold": 0.5 / t}),
             QuantGroup("step", Encoding("unipolar"), 0.2, {"threshold": 0.3}),
             QuantGroup("step", Encoding("unipolar"), 0.3, {"threshold": 0.6})),
            (0.01 * rng.normal(size=(h, t, t))).astype(np.float32),
        )
        value_groups = Quantizer(
            (QuantGroup("sign", Encoding("bipolar"), 0.5),
             QuantGroup("ternary", Encoding("ternary"), 0.3, {"lo": -0.7, "hi": 0.7}),
             QuantGroup("ternary", Encoding("ternary"), 0.2, {"lo": -0.9, "hi": 0.9})),
            (0.05 * rng.normal(size=d)).astype(np.float32),
        )
        layers[f"{p}.attn.av"] = EngineMatmul(attn_levels, value_groups)
    for name in ("head", "head_dist") if arch.distillation_token else ("head",):
        layers[name] = FloatLinear((rng.normal(size=(arch.num_classes, d)) / np.sqrt(d)).astype(np.float32),
                                   (0.1 * rng.normal(size=arch.num_classes)).astype(np.float32))
    pre = Preprocessing(input_divisor=DIGITS_TOP, mean=0.3, std=0.4, dataset="digits")
    return Model(arch, pre, tensors, layers, word_bits, {"source": f"random_model(seed={seed})"})


def random_integer_model(arch: Architecture = TINY, seed: int = 0, word_bits: int = DEFAULT_WORD_BITS) -> Model:
    """:func:`random_model` shaped like a GSB-family export (8-bit float patch embedding and heads), with its integer program.

    The program is calibrated on random raw images (0..16), so it holds
    every kind of step of :mod:`model.intvit` without a trained model.
    """
    from model.intvit import attach, compile_program

    model = random_model(arch, seed, word_bits)
    rng = np.random.default_rng(seed + 1)
    names = ["patch_embed"] + (["head", "head_dist"] if arch.distillation_token else ["head"])
    for name in names:
        out_f, in_f = arch.linear_shapes()[name]
        scale = 0.02 if name == "patch_embed" else 0.01
        codes = rng.integers(-127, 128, size=(out_f, in_f))
        codes[0, 0] = 127  # the largest |code| fixes the scale, as fake_quant_int8 does
        model.layers[name] = FloatLinear((codes * np.float32(scale)).astype(np.float32),
                                         (0.1 * rng.normal(size=out_f)).astype(np.float32))
    calibration = rng.integers(0, 17, size=(32, arch.in_channels, arch.image_size, arch.image_size))
    return attach(model, compile_program(model, calibration))


def _int_quantizer(bits: int, step: float, signed: bool = True) -> Quantizer:
    enc = Encoding("int" if signed else "uint", bits)
    return Quantizer((QuantGroup(enc.name, enc, step, {"step": step}),))


def random_multibit_program(seed: int = 8, arch: Architecture = TINY) -> "IntegerProgram":
    """:func:`random_integer_model` with PTQ-style quantizers, compiled: int4 inputs, Q, K and V, a uint3 attention map."""
    from model.intvit import IntegerProgram, compile_program  # noqa: F401 - IntegerProgram names the return type

    model = random_integer_model(arch, seed=seed)
    model.integer = None
    for i in range(arch.depth):
        p = f"blocks.{i}"
        for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            old = model.layers[f"{p}.{name}"]
            model.layers[f"{p}.{name}"] = EngineLinear(_int_quantizer(4, 0.25), old.weights, old.bias)
        model.layers[f"{p}.attn.qk"] = EngineMatmul(_int_quantizer(4, 0.3), _int_quantizer(4, 0.3), 0.25)
        model.layers[f"{p}.attn.av"] = EngineMatmul(_int_quantizer(3, 1 / 14, signed=False), _int_quantizer(4, 0.2))
    calibration = np.random.default_rng(seed + 1).integers(0, 17, size=(16, arch.in_channels, arch.image_size, arch.image_size))
    return compile_program(model, calibration)
