"""The packed model file: one zip holding a JSON manifest and ``.npy`` arrays.

Layout of ``model.gsbf`` (a zip archive, members stored uncompressed)::

    manifest.json          format, version, word_bits, architecture,
                           preprocessing, layers, and every array's
                           shape, dtype and sha256
    manifest.sha256        hex digest of manifest.json
    arrays/<name>.npy      one array per entry of manifest["arrays"]

Version 2 adds the optional ``integer`` section: the model's integer program
(:mod:`model.intvit`), its parameters in the manifest and its arrays named
``integer.<name>``.  Version 1 files still load, without one.

:func:`load` validates everything and raises :class:`ModelFileError`, whose
message names the file and the field, for any file that is not exactly what
:func:`save` wrote: a truncated, corrupted or mismatched file never loads to a
different model.  ``docs/model-file.md`` documents every field.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from model import golden
from model.golden import Encoding, Operand, PackedPlane
from model.layers import EngineLinear, EngineMatmul, FactoredLinear, FloatLinear, FloatMatmul, Layer, WeightGroup
from model.quantizers import RULE_PARAMS, QuantGroup, Quantizer

FORMAT_NAME = "gsbflow-model"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  #: version 1 has no integer section
MANIFEST = "manifest.json"
MANIFEST_DIGEST = "manifest.sha256"

# Bounds :func:`load` checks before it allocates or decompresses anything, so a
# hostile file costs at most about MAX_ARCHIVE_BYTES of memory and fails fast.
MAX_ARCHIVE_BYTES = 256 << 20  # all members together, uncompressed, as the zip directory declares them
MAX_MANIFEST_BYTES = 4 << 20
MAX_MEMBERS = 4096
MAX_JSON_DEPTH = 32
MAX_JSON_INT = 2**53
MAX_ARRAY_DIMS = 8
#: Every manifest float is 0 or of magnitude in [MIN_ABS_FLOAT, MAX_ABS_FLOAT] (float32 holds it, and its
#: products with activations stay finite); float32 arrays stay within MAX_ABS_FLOAT.
MIN_ABS_FLOAT, MAX_ABS_FLOAT = 1e-30, 1e30
#: Upper bounds of the architecture's sizes, and of its sequence length.
ARCHITECTURE_LIMITS = {"image_size": 1024, "in_channels": 64, "patch_size": 1024, "dim": 8192, "depth": 256,
                       "heads": 256, "mlp_hidden": 32768, "num_classes": 100_000}
MAX_TOKENS = 4096


class ModelFileError(ValueError):
    """A model file is missing, unreadable, corrupt or inconsistent.

    ``path`` is the file, ``field`` the manifest field or array at fault.
    """

    def __init__(self, path: str | os.PathLike, field: str, message: str):
        self.path, self.field = os.fspath(path), field
        super().__init__(f"{self.path}: {field}: {message}")


@dataclass(frozen=True)
class Architecture:
    """The ViT family's shape parameters."""

    image_size: int
    in_channels: int
    patch_size: int
    dim: int
    depth: int
    heads: int
    mlp_hidden: int
    num_classes: int
    distillation_token: bool = True
    mlp_clip: float | None = None
    ln_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "patch_size", "dim", "depth", "heads", "mlp_hidden", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"patch_size {self.patch_size} must divide image_size {self.image_size}")
        if self.dim % self.heads:
            raise ValueError(f"heads {self.heads} must divide dim {self.dim}")
        if not isinstance(self.distillation_token, bool):
            raise ValueError(f"distillation_token must be a bool, got {self.distillation_token!r}")
        if self.mlp_clip is not None and not (isinstance(self.mlp_clip, float) and self.mlp_clip > 0):
            raise ValueError(f"mlp_clip must be null or a positive float, got {self.mlp_clip!r}")
        if not (isinstance(self.ln_eps, float) and self.ln_eps > 0):
            raise ValueError(f"ln_eps must be a positive float, got {self.ln_eps!r}")

    @property
    def num_patches(self) -> int:
        """Patches per image."""
        return (self.image_size // self.patch_size) ** 2

    @property
    def tokens(self) -> int:
        """Sequence length: patches plus the cls (and distillation) token."""
        return self.num_patches + 1 + int(self.distillation_token)

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.dim // self.heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every host-side float tensor the model needs, with its shape."""
        shapes: dict[str, tuple[int, ...]] = {"cls_token": (1, self.dim), "pos_embed": (self.tokens, self.dim)}
        if self.distillation_token:
            shapes["dist_token"] = (1, self.dim)
        for i in range(self.depth):
            for norm in ("norm1", "norm2"):
                shapes[f"blocks.{i}.{norm}.weight"] = shapes[f"blocks.{i}.{norm}.bias"] = (self.dim,)
        shapes["norm.weight"] = shapes["norm.bias"] = (self.dim,)
        return shapes

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """Every linear layer, with its (out, in) shape."""
        d = self.dim
        shapes = {"patch_embed": (d, self.in_channels * self.patch_size**2)}
        for i in range(self.depth):
            shapes[f"blocks.{i}.attn.qkv"] = (3 * d, d)
            shapes[f"blocks.{i}.attn.proj"] = (d, d)
            shapes[f"blocks.{i}.mlp.fc1"] = (self.mlp_hidden, d)
            shapes[f"blocks.{i}.mlp.fc2"] = (d, self.mlp_hidden)
        shapes["head"] = (self.num_classes, d)
        if self.distillation_token:
            shapes["head_dist"] = (self.num_classes, d)
        return shapes

    def matmul_inputs(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Every activation x activation product, with the shapes its x and y quantizers see."""
        t, d, h = self.tokens, self.dim, self.heads
        shapes = {}
        for i in range(self.depth):
            shapes[f"blocks.{i}.attn.qk"] = ((t, d), (t, d))          # Q, K before the head split
            shapes[f"blocks.{i}.attn.av"] = ((h, t, t), (t, d))       # attention map, V
        return shapes


@dataclass(frozen=True)
class Preprocessing:
    """``x = (raw / input_divisor - mean) / std``, per image, each step in float32.

    ``mean`` and ``std`` hold one value per input channel (or one for all
    channels); a float is taken as one value.  The same float32 operations
    as the training data pipeline (``model.data``), so raw pixels (0..16 for
    digits, 0..255 for Fashion-MNIST) give the torch model's exact inputs.
    """

    input_divisor: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    dataset: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.input_divisor, float) and np.isfinite(self.input_divisor)) or self.input_divisor == 0.0:
            raise ValueError(f"input_divisor must be a finite, non-zero float, got {self.input_divisor!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            values = (value,) if isinstance(value, float) else value
            if isinstance(values, (str, bytes)) or not isinstance(values, (tuple, list)) or not values or not all(
                    isinstance(v, float) and np.isfinite(v) for v in values):
                raise ValueError(f"{name} must be a finite float or a non-empty list of them (one per channel), got {value!r}")
            object.__setattr__(self, name, tuple(values))
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean and std must have as many values, got {len(self.mean)} and {len(self.std)}")
        if 0.0 in self.std:
            raise ValueError("std must not be 0")
        if not isinstance(self.dataset, str):
            raise ValueError(f"dataset must be a str, got {self.dataset!r}")

    def channel_values(self, channels: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` as arrays of one value per channel (float32: as ``apply`` uses them)."""
        if len(self.mean) not in (1, channels):
            raise ValueError(f"mean and std have {len(self.mean)} values, for {channels} channels")
        return np.resize(np.array(self.mean, dtype), channels), np.resize(np.array(self.std, dtype), channels)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Preprocess raw pixel values (..., C, H, W) to the model's float32 input."""
        mean, std = self.channel_values(raw.shape[-3])
        x = raw.astype(np.float32) / np.float32(self.input_divisor)
        return (x - mean[:, None, None]) / std[:, None, None]


@dataclass(frozen=True)
class IntegerSection:
    """The stored integer program of a model (validated by :func:`model.intvit.validate`)."""

    params: dict[str, int]
    arrays: dict[str, np.ndarray]


@dataclass
class Model:
    """An exported model: architecture, host tensors and layers, and optionally its integer program."""

    architecture: Architecture
    preprocessing: Preprocessing
    tensors: dict[str, np.ndarray]
    layers: dict[str, Layer]
    word_bits: int = golden.DEFAULT_WORD_BITS
    meta: dict[str, Any] = field(default_factory=dict)
    integer: IntegerSection | None = None

    def engine_layers(self) -> dict[str, Layer]:
        """The layers a Backend computes."""
        return {k: v for k, v in self.layers.items() if isinstance(v, (EngineLinear, EngineMatmul))
                or (isinstance(v, FactoredLinear) and any(isinstance(s, EngineLinear) for s in v.stages))}


# --------------------------------------------------------------------------
# writing


def _quantizer_to_json(q: Quantizer, offset_name: str, arrays: dict[str, np.ndarray]) -> dict:
    if q.offset is not None:
        arrays[offset_name] = q.offset
    return {
        "groups": [{"rule": g.rule, "encoding": str(g.encoding), "scale": g.scale, "params": dict(g.params)} for g in q.groups],
        "offset": offset_name if q.offset is not None else None,
    }


def _planes_to_arrays(name: str, op: Operand, arrays: dict[str, np.ndarray]) -> None:
    for part in ("sign", "mask"):
        stack = [getattr(p, part) for p in op.planes]
        if stack[0] is not None:
            arrays[f"{name}.{part}"] = np.stack(stack)


def _layer_to_json(name: str, layer: Layer, arrays: dict[str, np.ndarray]) -> dict:
    if isinstance(layer, EngineLinear):
        weights = []
        for g, w in enumerate(layer.weights):
            _planes_to_arrays(f"{name}.weight{g}", w.operand, arrays)
            weights.append({"encoding": str(w.operand.encoding), "scale": w.scale})
        if layer.bias is not None:
            arrays[f"{name}.bias"] = layer.bias
        return {"kind": "engine_linear", "input": _quantizer_to_json(layer.input, f"{name}.input.offset", arrays),
                "weights": weights, "bias": layer.bias is not None, "coef_bits": layer.coef_bits}
    if isinstance(layer, FloatLinear):
        arrays[f"{name}.weight"] = layer.weight
        if layer.bias is not None:
            arrays[f"{name}.bias"] = layer.bias
        return {"kind": "float_linear", "bias": layer.bias is not None}
    if isinstance(layer, FactoredLinear):
        return {"kind": "factored_linear", "ranks": [s.out_features for s in layer.stages[:-1]],
                "stages": [_layer_to_json(f"{name}.stage{j}", s, arrays) for j, s in enumerate(layer.stages)]}
    if isinstance(layer, EngineMatmul):
        return {"kind": "engine_matmul", "x": _quantizer_to_json(layer.x, f"{name}.x.offset", arrays),
                "y": _quantizer_to_json(layer.y, f"{name}.y.offset", arrays),
                "out_scale": layer.out_scale, "coef_bits": layer.coef_bits}
    return {"kind": "float_matmul", "out_scale": layer.out_scale}


def to_manifest(model: Model) -> tuple[dict, dict[str, np.ndarray]]:
    """The manifest (without array digests) and the arrays of a model."""
    arrays: dict[str, np.ndarray] = dict(model.tensors)
    layers = {name: _layer_to_json(name, layer, arrays) for name, layer in model.layers.items()}
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "word_bits": model.word_bits,
        "architecture": dict(model.architecture.__dict__),
        "preprocessing": dict(model.preprocessing.__dict__),
        "meta": model.meta,
        "layers": layers,
    }
    if model.integer is not None:
        manifest["integer"] = {"params": dict(model.integer.params)}
        arrays.update({f"integer.{name}": a for name, a in model.integer.arrays.items()})
    return manifest, arrays


def _array_entry(a: np.ndarray) -> dict:
    return {"shape": list(a.shape), "dtype": a.dtype.str, "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}


def check_widths(model: Model) -> None:
    """Raise ValueError, naming the layer, unless every engine layer's sums are computed exactly (at most 62 bits)."""
    for name, layer in model.layers.items():
        stages = layer.stages if isinstance(layer, FactoredLinear) else (layer,)
        for stage in stages:
            try:
                if isinstance(stage, EngineLinear):
                    stage.accumulator_bits
                elif isinstance(stage, EngineMatmul):
                    stage.accumulator_bits(model.architecture.tokens)
            except ValueError as exc:
                raise ValueError(f"layer {name}: {exc}") from None


def save(model: Model, path: str | os.PathLike) -> None:
    """Write ``model`` to ``path``; the result loads back to an identical model.

    A layer whose sums would not be computed exactly is refused here, at
    export, as :func:`load` would refuse the file.
    """
    check_widths(model)
    manifest, arrays = to_manifest(model)
    manifest["arrays"] = {name: _array_entry(a) for name, a in sorted(arrays.items())}
    text = json.dumps(manifest, indent=1, sort_keys=True).encode()
    tmp = f"{os.fspath(path)}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(MANIFEST, text)
        zf.writestr(MANIFEST_DIGEST, hashlib.sha256(text).hexdigest())
        for name, a in sorted(arrays.items()):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(a), allow_pickle=False)
            zf.writestr(f"arrays/{name}.npy", buf.getvalue())
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# reading and validation


class _Reader:
    """Typed access to manifest fields that names the field in every error."""

    def __init__(self, path: str | os.PathLike):
        self.path = path

    def fail(self, where: str, message: str) -> ModelFileError:
        return ModelFileError(self.path, where, message)

    def get(self, obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected an object, got {type(obj).__name__}")
        if key not in obj:
            raise self.fail(f"{where}.{key}".lstrip("."), "missing")
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise self.fail(f"{where}.{key}".lstrip("."), f"expected {kind}, got a bool")
        if not isinstance(value, kinds):
            raise self.fail(f"{where}.{key}".lstrip("."), f"expected {kind}, got {type(value).__name__}")
        return value

    def keys(self, obj: dict, allowed: set[str], where: str) -> None:
        extra = set(obj) - allowed
        if extra:
            raise self.fail(where, f"unknown fields {sorted(extra)}")

    def build(self, where: str, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except (TypeError, ValueError) as exc:
            raise self.fail(where, str(exc)) from None


def _check_directory(r: _Reader, infos: list[zipfile.ZipInfo]) -> None:
    """Member count, names and declared uncompressed sizes, from the zip directory alone."""
    if len(infos) > MAX_MEMBERS:
        raise r.fail("file", f"{len(infos)} members, more than {MAX_MEMBERS}")
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        raise r.fail("file", "duplicate members")
    total = 0
    for info in infos:
        limit = MAX_MANIFEST_BYTES if info.filename == MANIFEST else MAX_ARCHIVE_BYTES - total
        if info.file_size > limit:
            raise r.fail(info.filename, f"declares {info.file_size} bytes uncompressed, more than the {limit} allowed")
        total += info.file_size


def _read_member(r: _Reader, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's data, never more than the directory declares (zipfile checks the CRC at the end)."""
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)
    if len(data) != info.file_size:
        raise r.fail(info.filename, f"holds {len(data)} bytes, the zip directory declares {info.file_size}")
    return data


def _check_values(r: _Reader, value: Any, where: str, depth: int = 0) -> None:
    """Nesting depth and every number of the parsed manifest in range, each fault named by its field."""
    if depth > MAX_JSON_DEPTH:
        raise r.fail(where, f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_values(r, item, f"{where}.{key}".lstrip("."), depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_values(r, item, f"{where}[{i}]", depth + 1)
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_JSON_INT:
        raise r.fail(where, f"an integer of {value.bit_length()} bits, beyond +-2^53")
    elif isinstance(value, float) and not (value == 0.0 or MIN_ABS_FLOAT <= abs(value) <= MAX_ABS_FLOAT):
        raise r.fail(where, f"{value!r} is not 0 or of magnitude in [{MIN_ABS_FLOAT:g}, {MAX_ABS_FLOAT:g}]")


def _read_members(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    r = _Reader(path)
    if not os.path.isfile(path):
        raise r.fail("file", "no such file")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            _check_directory(r, infos)
            members = {info.filename: _read_member(r, zf, info) for info in infos}
    except ModelFileError:
        raise
    except Exception as exc:  # zipfile, zlib and OS errors of a damaged archive
        raise r.fail("file", f"not a readable model archive ({type(exc).__name__}: {exc})") from None
    for required in (MANIFEST, MANIFEST_DIGEST):
        if required not in members:
            raise r.fail(required, "missing from the archive")
    text = members.pop(MANIFEST)
    if members.pop(MANIFEST_DIGEST) != hashlib.sha256(text).hexdigest().encode():
        raise r.fail(MANIFEST_DIGEST, "does not match manifest.json (the file is corrupt)")
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as exc:  # also undecodable text, huge integer literals, deep nesting
        raise r.fail(MANIFEST, f"not valid JSON ({type(exc).__name__}: {exc})") from None
    _check_values(r, manifest, "")
    return manifest, members


def _read_shape(r: _Reader, entry: dict, where: str) -> tuple[list[int], int]:
    """An array entry's shape and element count, each dimension and the count checked without overflow."""
    shape = r.get(entry, "shape", list, where)
    if len(shape) > MAX_ARRAY_DIMS:
        raise r.fail(f"{where}.shape", f"{len(shape)} dimensions, more than {MAX_ARRAY_DIMS}")
    count = 1
    for i, dim in enumerate(shape):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 0:
            raise r.fail(f"{where}.shape[{i}]", f"expected a non-negative int, got {dim!r}")
        count *= dim
    if count > MAX_ARCHIVE_BYTES:
        raise r.fail(f"{where}.shape", f"{count} elements, more than the archive may hold")
    return shape, count


def _read_arrays(r: _Reader, manifest: dict, members: dict[str, bytes]) -> dict[str, np.ndarray]:
    entries = r.get(manifest, "arrays", dict, "")
    expected = {f"arrays/{name}.npy" for name in entries}
    if set(members) != expected:
        extra, missing = sorted(set(members) - expected), sorted(expected - set(members))
        raise r.fail("arrays", f"archive members do not match the manifest (extra {extra}, missing {missing})")
    arrays = {}
    for name, entry in entries.items():
        where = f"arrays.{name}"
        shape, count = _read_shape(r, entry, where)
        dtype = r.get(entry, "dtype", str, where)
        digest = r.get(entry, "sha256", str, where)
        data = members[f"arrays/{name}.npy"]
        try:
            buf = io.BytesIO(data)
            version = np.lib.format.read_magic(buf)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            header = read_header(buf)  # (shape, fortran_order, dtype)
        except Exception as exc:
            raise r.fail(where, f"not a valid .npy array ({exc})") from None
        if list(header[0]) != shape or header[2].str != dtype or header[1]:
            raise r.fail(where, f"array header {header[0]}/{header[2].str} does not match the manifest {shape}/{dtype}")
        if header[2].kind not in "biuf":
            raise r.fail(f"{where}.dtype", f"{dtype} is not a plain numeric dtype")
        body = data[buf.tell():]
        if len(body) != count * header[2].itemsize:
            raise r.fail(where, "array data has the wrong length (truncated?)")
        if hashlib.sha256(body).hexdigest() != digest:
            raise r.fail(where, "sha256 of the array data does not match the manifest (the file is corrupt)")
        arrays[name] = np.frombuffer(body, dtype=header[2]).reshape(shape).copy()
    return arrays


def _sane_floats(a: np.ndarray) -> bool:
    """All finite and within +-MAX_ABS_FLOAT (NaN compares false)."""
    return bool(np.all(np.abs(a) <= MAX_ABS_FLOAT))


def _take(r: _Reader, arrays: dict[str, np.ndarray], used: set[str], name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    if name not in arrays:
        raise r.fail(f"arrays.{name}", "missing")
    a = arrays[name]
    if a.dtype != np.dtype(dtype) or a.shape != tuple(shape):
        raise r.fail(f"arrays.{name}", f"expected {np.dtype(dtype)} {tuple(shape)}, got {a.dtype} {a.shape}")
    if np.issubdtype(a.dtype, np.floating) and not _sane_floats(a):
        raise r.fail(f"arrays.{name}", f"holds non-finite values or values beyond +-{MAX_ABS_FLOAT:g}")
    used.add(name)
    return a


def _read_quantizer(r: _Reader, obj: dict, where: str, arrays: dict, used: set, input_shape: tuple[int, ...]) -> Quantizer:
    r.keys(obj, {"groups", "offset"}, where)
    groups = []
    raw_groups = r.get(obj, "groups", list, where)
    if not raw_groups:
        raise r.fail(f"{where}.groups", "must hold at least one group")
    for i, g in enumerate(raw_groups):
        gw = f"{where}.groups[{i}]"
        r.keys(g, {"rule", "encoding", "scale", "params"}, gw)
        rule = r.get(g, "rule", str, gw)
        if rule not in RULE_PARAMS:
            raise r.fail(f"{gw}.rule", f"unknown rule {rule!r}")
        enc = r.build(f"{gw}.encoding", lambda: Encoding.parse(r.get(g, "encoding", str, gw)))
        scale = r.get(g, "scale", float, gw)
        params = r.get(g, "params", dict, gw)
        for k in params:
            r.get(params, k, float, f"{gw}.params")
        groups.append(r.build(gw, lambda: QuantGroup(rule, enc, scale, dict(params))))
    offset_name = r.get(obj, "offset", (str, type(None)), where)
    offset = None
    if offset_name is not None:
        if offset_name not in arrays:
            raise r.fail(f"{where}.offset", f"names a missing array {offset_name!r}")
        offset = arrays[offset_name]
        used.add(offset_name)
        if offset.dtype != np.float32 or not _sane_floats(offset):
            raise r.fail(f"arrays.{offset_name}", f"must be float32, finite and within +-{MAX_ABS_FLOAT:g}")
        try:
            if np.broadcast_shapes(offset.shape, input_shape) != input_shape:
                raise ValueError
        except ValueError:
            raise r.fail(f"arrays.{offset_name}", f"shape {offset.shape} does not broadcast to the input {input_shape}") from None
    return r.build(where, lambda: Quantizer(tuple(groups), offset))


def _read_planes(r: _Reader, arrays: dict, used: set, name: str, enc: Encoding, rows: int, n: int, word_bits: int) -> Operand:
    shape = (len(enc.plane_weights), rows, golden.words_for(n, word_bits))
    kind = enc.plane_kind
    parts = {}
    for part, present in (("sign", kind.has_sign), ("mask", kind.has_mask)):
        if present:
            words = _take(r, arrays, used, f"{name}.{part}", shape, golden.word_dtype(word_bits))
            tail = golden.valid_mask(n, word_bits)
            if np.any(words & ~tail):
                raise r.fail(f"arrays.{name}.{part}", "padding bits past n are not zero")
            parts[part] = words
        elif f"{name}.{part}" in arrays:
            raise r.fail(f"arrays.{name}.{part}", f"not expected for encoding {enc}")
    planes = tuple(
        PackedPlane(kind, w, parts["sign"][k] if "sign" in parts else None, parts["mask"][k] if "mask" in parts else None)
        for k, w in enumerate(enc.plane_weights)
    )
    return Operand(enc, n, word_bits, planes)


def _read_linear(r: _Reader, name: str, where: str, kind: str, obj: dict, shape: tuple[int, int], arrays: dict, used: set,
                 word_bits: int) -> Layer:
    """An ``engine_linear`` or ``float_linear`` of shape (out, in) whose arrays are named ``<name>.*``."""
    out_f, in_f = shape
    bias = _take(r, arrays, used, f"{name}.bias", (out_f,), np.float32) if r.get(obj, "bias", bool, where) else None
    if kind == "float_linear":
        r.keys(obj, {"kind", "bias"}, where)
        return FloatLinear(_take(r, arrays, used, f"{name}.weight", (out_f, in_f), np.float32), bias)
    r.keys(obj, {"kind", "input", "weights", "bias", "coef_bits"}, where)
    quant = _read_quantizer(r, r.get(obj, "input", dict, where), f"{where}.input", arrays, used, (in_f,))
    groups = []
    raw = r.get(obj, "weights", list, where)
    if not raw:
        raise r.fail(f"{where}.weights", "must hold at least one group")
    for g, w in enumerate(raw):
        gw = f"{where}.weights[{g}]"
        r.keys(w, {"encoding", "scale"}, gw)
        enc = r.build(f"{gw}.encoding", lambda: Encoding.parse(r.get(w, "encoding", str, gw)))
        scale = r.get(w, "scale", float, gw)
        if not np.isfinite(scale):
            raise r.fail(f"{gw}.scale", "must be finite")
        groups.append(WeightGroup(_read_planes(r, arrays, used, f"{name}.weight{g}", enc, out_f, in_f, word_bits), scale))
    coef_bits = r.get(obj, "coef_bits", int, where)
    layer = r.build(where, lambda: EngineLinear(quant, tuple(groups), bias, coef_bits))
    r.build(f"{where}.coef_bits", lambda: layer.accumulator_bits)  # the scales must fit the format
    return layer


def _read_factored(r: _Reader, name: str, where: str, obj: dict, shape: tuple[int, int], arrays: dict, used: set,
                   word_bits: int) -> FactoredLinear:
    """A ``factored_linear``: ``ranks`` (the widths between stages) and ``stages`` (linear layers)."""
    r.keys(obj, {"kind", "ranks", "stages"}, where)
    ranks = r.get(obj, "ranks", list, where)
    if not ranks:
        raise r.fail(f"{where}.ranks", "must hold at least one width (a factored linear has two stages or more)")
    for i, width in enumerate(ranks):
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise r.fail(f"{where}.ranks[{i}]", f"expected a positive int, got {width!r}")
    stages = r.get(obj, "stages", list, where)
    if len(stages) != len(ranks) + 1:
        raise r.fail(f"{where}.stages", f"expected {len(ranks) + 1} stages for {len(ranks)} ranks, got {len(stages)}")
    dims = [shape[1], *ranks, shape[0]]
    layers = []
    for j, stage in enumerate(stages):
        sw = f"{where}.stages[{j}]"
        kind = r.get(stage, "kind", str, sw)
        if kind not in ("engine_linear", "float_linear"):
            raise r.fail(f"{sw}.kind", f"a stage must be engine_linear or float_linear, got {kind!r}")
        layers.append(_read_linear(r, f"{name}.stage{j}", sw, kind, stage, (dims[j + 1], dims[j]), arrays, used, word_bits))
    return r.build(where, lambda: FactoredLinear(tuple(layers)))


def _read_layer(r: _Reader, name: str, obj: dict, arch: Architecture, arrays: dict, used: set, word_bits: int) -> Layer:
    where = f"layers.{name}"
    kind = r.get(obj, "kind", str, where)
    linear = arch.linear_shapes().get(name)
    matmul = arch.matmul_inputs().get(name)
    if kind in ("engine_linear", "float_linear", "factored_linear"):
        if linear is None:
            raise r.fail(f"{where}.kind", f"{kind} is not allowed for this layer")
        if kind == "factored_linear":
            return _read_factored(r, name, where, obj, linear, arrays, used, word_bits)
        return _read_linear(r, name, where, kind, obj, linear, arrays, used, word_bits)
    if kind in ("engine_matmul", "float_matmul"):
        if matmul is None:
            raise r.fail(f"{where}.kind", f"{kind} is not allowed for this layer")
        out_scale = r.get(obj, "out_scale", float, where)
        if not np.isfinite(out_scale):
            raise r.fail(f"{where}.out_scale", "must be finite")
        if kind == "float_matmul":
            r.keys(obj, {"kind", "out_scale"}, where)
            return FloatMatmul(out_scale)
        r.keys(obj, {"kind", "x", "y", "out_scale", "coef_bits"}, where)
        x = _read_quantizer(r, r.get(obj, "x", dict, where), f"{where}.x", arrays, used, matmul[0])
        y = _read_quantizer(r, r.get(obj, "y", dict, where), f"{where}.y", arrays, used, matmul[1])
        coef_bits = r.get(obj, "coef_bits", int, where)
        layer = EngineMatmul(x, y, out_scale, coef_bits)
        r.build(f"{where}.coef_bits", lambda: layer.accumulator_bits(arch.tokens))
        return layer
    raise r.fail(f"{where}.kind", f"unknown layer kind {kind!r}")


def _read_dataclass(r: _Reader, cls: type, obj: dict, where: str) -> Any:
    """Build ``cls`` from exactly its fields: a file never falls back to a default."""
    names = set(cls.__dataclass_fields__)
    r.keys(obj, names, where)
    missing = sorted(names - set(obj))
    if missing:
        raise r.fail(f"{where}.{missing[0]}", "missing")
    return r.build(where, lambda: cls(**obj))


def _read_architecture(r: _Reader, obj: dict) -> Architecture:
    """The architecture, its sizes range-checked before anything is built from them."""
    if isinstance(obj, dict):
        for name, limit in ARCHITECTURE_LIMITS.items():
            value = obj.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value > limit:
                raise r.fail(f"architecture.{name}", f"{value} is more than {limit}")
    arch = _read_dataclass(r, Architecture, obj, "architecture")
    if arch.tokens > MAX_TOKENS:
        raise r.fail("architecture.image_size", f"image_size/patch_size give {arch.tokens} tokens, more than {MAX_TOKENS}")
    return arch


def load(path: str | os.PathLike) -> Model:
    """Read and validate a model file; raises :class:`ModelFileError` on any fault."""
    manifest, members = _read_members(path)
    r = _Reader(path)
    r.keys(manifest, {"format", "version", "word_bits", "architecture", "preprocessing", "meta", "layers", "arrays", "integer"},
           "manifest")
    if r.get(manifest, "format", str, "") != FORMAT_NAME:
        raise r.fail("format", f"expected {FORMAT_NAME!r}, got {manifest['format']!r}")
    version = r.get(manifest, "version", int, "")
    if version not in READABLE_VERSIONS:
        raise r.fail("version", f"this gsbflow reads versions {', '.join(map(str, READABLE_VERSIONS))}, the file has {version}"
                     + (": a newer gsbflow wrote it" if version > FORMAT_VERSION else ""))
    if version == 1 and "integer" in manifest:
        raise r.fail("integer", "a version 1 file has no integer section")
    word_bits = r.build("word_bits", lambda: golden.check_word_bits(r.get(manifest, "word_bits", int, "")))
    arch = _read_architecture(r, r.get(manifest, "architecture", dict, ""))
    pre = _read_dataclass(r, Preprocessing, r.get(manifest, "preprocessing", dict, ""), "preprocessing")
    r.build("preprocessing.mean", lambda: pre.channel_values(arch.in_channels))
    meta = r.get(manifest, "meta", dict, "")
    arrays = _read_arrays(r, manifest, members)
    used: set[str] = set()
    tensors = {name: _take(r, arrays, used, name, shape, np.float32) for name, shape in arch.tensor_shapes().items()}
    layer_objs = r.get(manifest, "layers", dict, "")
    required = set(arch.linear_shapes()) | set(arch.matmul_inputs())
    if set(layer_objs) != required:
        raise r.fail("layers", f"expected exactly {sorted(required)}, got {sorted(layer_objs)}")
    layers = {name: _read_layer(r, name, layer_objs[name], arch, arrays, used, word_bits) for name in sorted(layer_objs)}
    model = Model(arch, pre, tensors, layers, word_bits, meta)
    if "integer" in manifest:
        model.integer = _read_integer(r, r.get(manifest, "integer", dict, ""), model, arrays, used)
    unused = sorted(set(arrays) - used)
    if unused:
        raise r.fail("arrays", f"arrays not used by any layer: {unused}")
    return model


def _read_integer(r: _Reader, obj: dict, model: Model, arrays: dict[str, np.ndarray], used: set) -> IntegerSection:
    """The integer section, checked field by field against :func:`model.intvit.schema` and its bounds."""
    from model import intvit  # intvit builds on this module's Model

    r.keys(obj, {"params"}, "integer")
    params = r.get(obj, "params", dict, "integer")
    names = [n for n in arrays if n.startswith("integer.")]
    section = {n[len("integer."):]: arrays[n] for n in names}
    try:
        intvit.validate(model, params, section)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise r.fail("integer", str(exc)) from None
    used.update(names)
    return IntegerSection(dict(params), section)
