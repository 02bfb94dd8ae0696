"""The model file: round trips, field-naming errors, and a seeded fuzz of damaged files."""

from __future__ import annotations

import hashlib
import io
import json
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from model import modelfile
from model.modelfile import Architecture, ModelFileError
from model.random_model import random_model

SMALL = Architecture(image_size=4, in_channels=1, patch_size=2, dim=8, depth=1, heads=2, mlp_hidden=16, num_classes=3)


def same_model(a: modelfile.Model, b: modelfile.Model) -> bool:
    (ma, aa), (mb, ab) = modelfile.to_manifest(a), modelfile.to_manifest(b)
    return ma == mb and aa.keys() == ab.keys() and all(
        aa[k].dtype == ab[k].dtype and np.array_equal(aa[k], ab[k]) for k in aa
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple[modelfile.Model, bytes]:
    model = random_model(SMALL, seed=5)
    path = tmp_path_factory.mktemp("m") / "small.gsbf"
    modelfile.save(model, path)
    return model, path.read_bytes()


def test_round_trip_is_identical(tmp_path):
    for seed, word_bits in ((0, 64), (1, 32), (2, 8)):
        model = random_model(seed=seed, word_bits=word_bits)
        modelfile.save(model, tmp_path / "m.gsbf")
        assert same_model(modelfile.load(tmp_path / "m.gsbf"), model)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ModelFileError, match=r"nope\.gsbf: file: no such file"):
        modelfile.load(tmp_path / "nope.gsbf")


def rewrite(data: bytes, edit, raw=lambda text: text) -> bytes:
    """Apply ``edit`` to the manifest, then ``raw`` to its JSON text, and re-sign it, as a careless tool would."""
    src = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(src.read(modelfile.MANIFEST))
    edit(manifest)
    text = raw(json.dumps(manifest)).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name == modelfile.MANIFEST:
                dst.writestr(name, text)
            elif name == modelfile.MANIFEST_DIGEST:
                dst.writestr(name, hashlib.sha256(text).hexdigest())
            else:
                dst.writestr(name, src.read(name))
    return out.getvalue()


def _set(path: list, value):
    def edit(m):
        for key in path[:-1]:
            m = m[key]
        m[path[-1]] = value
    return edit


def _delete(path: list):
    def edit(m):
        for key in path[:-1]:
            m = m[key]
        del m[path[-1]]
    return edit


BAD_FIELDS = [
    (_set(["version"], 99), "version"),
    (_set(["format"], "onnx"), "format"),
    (_set(["word_bits"], 48), "word_bits"),
    (_set(["architecture", "dim"], 9), "architecture"),
    (_set(["architecture", "heads"], 0), "architecture"),
    (_delete(["preprocessing", "std"]), "preprocessing"),
    (_set(["preprocessing", "std"], 0.0), "preprocessing"),
    (_set(["layers", "blocks.0.attn.qkv", "kind"], "conv"), "layers.blocks.0.attn.qkv.kind"),
    (_set(["layers", "blocks.0.attn.qkv", "weights", 0, "encoding"], "ternary"), "arrays.blocks.0.attn.qkv.weight0.mask"),
    (_set(["layers", "blocks.0.attn.qkv", "weights", 0, "encoding"], "int9x"), "layers.blocks.0.attn.qkv.weights[0].encoding"),
    (_set(["layers", "blocks.0.attn.qkv", "weights", 0, "scale"], "big"), "layers.blocks.0.attn.qkv.weights[0].scale"),
    (_set(["layers", "blocks.0.attn.qkv", "input", "groups", 0, "rule"], "step"), "layers.blocks.0.attn.qkv.input.groups[0]"),
    (_set(["layers", "blocks.0.attn.av", "y", "groups", 1, "params"], {"lo": 1.0, "hi": -1.0}), "layers.blocks.0.attn.av.y.groups[1]"),
    (_set(["layers", "blocks.0.attn.qk", "coef_bits"], 1), "layers.blocks.0.attn.qk"),
    (_delete(["layers", "head"]), "layers"),
    (_set(["layers", "blocks.0.mlp.fc1", "bias"], False), "arrays"),
    (_set(["arrays", "pos_embed", "shape"], [5, 8]), "arrays.pos_embed"),
    (_set(["arrays", "pos_embed", "sha256"], "0" * 64), "arrays.pos_embed"),
    (_set(["layers", "blocks.0.attn.qkv", "extra"], 1), "layers.blocks.0.attn.qkv"),
]


@pytest.mark.parametrize("edit,field", BAD_FIELDS)
def test_inconsistent_manifest_names_the_field(saved, tmp_path, edit, field):
    path = tmp_path / "bad.gsbf"
    path.write_bytes(rewrite(saved[1], edit))
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert info.value.field.startswith(field), str(info.value)
    assert str(path) in str(info.value)


def test_nonzero_padding_is_rejected(saved, tmp_path):
    model = random_model(SMALL, seed=5)
    plane = model.layers["blocks.0.attn.qkv"].weights[0].operand.planes[0]
    plane.sign[0, -1] |= np.uint64(1) << np.uint64(63)  # n = 8: bit 63 is padding
    modelfile.save(model, tmp_path / "pad.gsbf")
    with pytest.raises(ModelFileError, match="padding bits"):
        modelfile.load(tmp_path / "pad.gsbf")


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One seeded damage: flipped bits, overwritten bytes, truncation, chunk swaps, insertions, member reorder."""
    kind = rng.choice(["flip", "bytes", "truncate", "swap", "insert", "delete", "reorder"])
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(int(rng.integers(1, 4))):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
    elif kind == "bytes":
        i = int(rng.integers(len(buf)))
        buf[i:i + 8] = rng.integers(0, 256, size=len(buf[i:i + 8]), dtype=np.uint8).tobytes()
    elif kind == "truncate":
        buf = buf[: int(rng.integers(len(buf)))]
    elif kind == "swap":
        size = int(rng.integers(1, 200))
        i, j = sorted(int(v) for v in rng.integers(0, len(buf) - size, size=2))
        if j - i >= size:
            buf[i:i + size], buf[j:j + size] = buf[j:j + size], buf[i:i + size]
    elif kind == "insert":
        i = int(rng.integers(len(buf)))
        buf[i:i] = rng.integers(0, 256, size=int(rng.integers(1, 16)), dtype=np.uint8).tobytes()
    elif kind == "delete":
        i = int(rng.integers(len(buf)))
        del buf[i:i + int(rng.integers(1, 16))]
    else:  # reorder the archive's members: the same content, so it must load identically
        src = zipfile.ZipFile(io.BytesIO(data))
        names = src.namelist()
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as dst:
            for k in rng.permutation(len(names)):
                dst.writestr(names[k], src.read(names[k]))
        buf = bytearray(out.getvalue())
    return str(kind), bytes(buf)


def fuzz(model: modelfile.Model, data: bytes, path: Path, seed: int, count: int) -> dict[str, int]:
    """Load ``count`` seeded damages of ``data``: each must load to ``model`` or raise a ModelFileError naming the file.

    Returns how often each kind of damage ended as ``<kind>:error`` or ``<kind>:identical``.
    """
    rng = np.random.default_rng(seed)
    outcomes: dict[str, int] = {}
    for _ in range(count):
        kind, damaged = mutate(data, rng)
        path.write_bytes(damaged)
        try:
            loaded = modelfile.load(path)
        except ModelFileError as exc:
            assert str(path) in str(exc)
            outcome = "error"
        else:
            assert same_model(loaded, model), f"{kind} damage loaded to a different model"
            outcome = "identical"
        outcomes[f"{kind}:{outcome}"] = outcomes.get(f"{kind}:{outcome}", 0) + 1
    return outcomes


def test_fuzzed_files_load_identically_or_raise_model_file_error(saved, tmp_path):
    outcomes = fuzz(*saved, tmp_path / "fuzz.gsbf", 20261124, 1200)
    assert outcomes.get("reorder:identical", 0) > 0
    assert sum(v for k, v in outcomes.items() if k.endswith(":error")) > 800


# ---------------------------------------------------------------- crafted hostile files


def _nested(depth: int):
    def edit(m):
        m["meta"]["deep"] = "DEEP"
    return edit, lambda text: text.replace('"DEEP"', "[" * depth + "]" * depth)


HUGE_INT = "9" * 5000  # past Python's int-from-string limit: json.loads raises a plain ValueError on it
HOSTILE = [
    (_set(["architecture", "depth"], 10**12), "architecture.depth"),
    (_set(["architecture", "dim"], 2**40), "architecture.dim"),
    (_set(["architecture", "mlp_hidden"], -3), "architecture"),
    (_set(["architecture", "image_size"], 1024), "architecture.image_size"),  # 2^18 tokens
    (_set(["word_bits"], "HUGE"), modelfile.MANIFEST),
    (_set(["meta", "seed"], 10**30), "meta.seed"),
    (_set(["layers", "blocks.0.attn.qkv", "coef_bits"], 2**80), "layers.blocks.0.attn.qkv.coef_bits"),
    (_set(["layers", "blocks.0.attn.qkv", "weights", 0, "scale"], 1e300), "layers.blocks.0.attn.qkv.weights[0].scale"),
    (_set(["layers", "blocks.0.attn.qkv", "weights", 0, "scale"], 1e-300), "layers.blocks.0.attn.qkv.weights[0].scale"),
    (_set(["layers", "blocks.0.attn.qk", "out_scale"], float("nan")), "layers.blocks.0.attn.qk.out_scale"),
    (_set(["layers", "blocks.0.attn.qkv", "input", "groups", 0, "scale"], float("inf")),
     "layers.blocks.0.attn.qkv.input.groups[0].scale"),
    (_set(["layers", "blocks.0.attn.av", "y", "groups", 1, "params"], {"lo": -1e200, "hi": 1e200}),
     "layers.blocks.0.attn.av.y.groups[1].params.lo"),
    (_set(["preprocessing", "mean"], float("-inf")), "preprocessing.mean"),
    (_set(["preprocessing", "std"], 1e-200), "preprocessing.std"),
    (_nested(40), "meta.deep"),
    (_nested(100_000), modelfile.MANIFEST),
]


@pytest.mark.parametrize("edit,field", HOSTILE)
def test_hostile_manifest_fails_fast_naming_the_field(saved, tmp_path, edit, field):
    """Absurd sizes, negative or overflowing shapes, deep nesting, huge integers, absurd or non-finite constants."""
    edit, raw = edit if isinstance(edit, tuple) else (edit, lambda text: text.replace('"HUGE"', HUGE_INT))
    path = tmp_path / "hostile.gsbf"
    path.write_bytes(rewrite(saved[1], edit, raw))
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert time.perf_counter() - t0 < 1.0
    assert info.value.field.startswith(field), str(info.value)
    assert str(path) in str(info.value)


def _with_member(data: bytes, name: str, write) -> bytes:
    """``data`` plus a member ``name`` whose content ``write(file)`` streams, deflated."""
    out = io.BytesIO(data)
    with zipfile.ZipFile(out, "a", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(name, "w") as f:
            write(f)
    return out.getvalue()


def test_decompression_bomb_is_refused_from_the_zip_directory(saved, tmp_path):
    """A member that inflates past the archive limit is refused before any of it is decompressed."""
    zeros = bytes(1 << 20)
    size = modelfile.MAX_ARCHIVE_BYTES // len(zeros) + 1

    def write(f):
        for _ in range(size):
            f.write(zeros)

    path = tmp_path / "bomb.gsbf"
    path.write_bytes(_with_member(saved[1], "arrays/bomb.npy", write))
    assert path.stat().st_size < modelfile.MAX_ARCHIVE_BYTES // 100
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="bomb.npy") as info:
            modelfile.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.field == "arrays/bomb.npy" and peak < 16 << 20


def test_member_larger_than_its_directory_entry_is_refused(saved, tmp_path):
    """The zip directory understates a member's size: the read stops at the declared size and fails."""
    path = tmp_path / "liar.gsbf"
    data = bytearray(_with_member(saved[1], "arrays/liar.npy", lambda f: f.write(bytes(1 << 16))))
    entry = bytes(data).rindex(b"PK\x01\x02")  # the liar's central directory entry
    data[entry + 24:entry + 28] = (1).to_bytes(4, "little")  # uncompressed size: 1 byte
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert str(path) in str(info.value)


def _swap_array(data: bytes, name: str, shape: tuple[int, ...], descr: str, body: bytes) -> bytes:
    """``data`` with array ``name`` replaced by a hand-written .npy (header ``shape``/``descr``, then ``body``),
    its manifest entry agreeing, as a hostile tool would write it."""
    npy = io.BytesIO()
    np.lib.format.write_array_header_1_0(npy, {"descr": descr, "fortran_order": False, "shape": shape})
    npy.write(body)
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        for member in src.namelist():
            dst.writestr(member, npy.getvalue() if member == f"arrays/{name}.npy" else src.read(member))
    entry = {"shape": list(shape), "dtype": descr, "sha256": hashlib.sha256(body).hexdigest()}
    return rewrite(out.getvalue(), _set(["arrays", name], entry))


HOSTILE_ARRAYS = [
    ((-6, -8), "<f4", bytes(192), "arrays.pos_embed.shape[0]"),       # numpy reads a negative shape
    ((2**32,) * 4, "<f4", b"", "arrays.pos_embed.shape"),             # 2^128 elements: 0 in int64
    ((18, 8), "|O", bytes(18 * 8 * 8), "arrays.pos_embed.dtype"),      # an object (pickle) array
]


@pytest.mark.parametrize("shape,descr,body,field", HOSTILE_ARRAYS)
def test_hostile_array_header_is_refused(saved, tmp_path, shape, descr, body, field):
    path = tmp_path / "array.gsbf"
    path.write_bytes(_swap_array(saved[1], "pos_embed", shape, descr, body))
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert info.value.field.startswith(field), str(info.value)


def test_oversized_manifest_is_refused(saved, tmp_path):
    path = tmp_path / "big.gsbf"
    path.write_bytes(rewrite(saved[1], _set(["meta", "pad"], "x" * modelfile.MAX_MANIFEST_BYTES)))
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert info.value.field == modelfile.MANIFEST and "bytes" in str(info.value)


# ---------------------------------------------------------------- factored_linear


def factored_model(seed: int = 6, word_bits: int = 64) -> modelfile.Model:
    """SMALL with blocks.0.attn.qkv as an int8 engine stage (8 -> 3) then a float stage (3 -> 24) with the bias."""
    from model.golden import Encoding, Operand
    from model.layers import EngineLinear, FactoredLinear, FloatLinear, WeightGroup
    from model.quantizers import QuantGroup, Quantizer

    model = random_model(SMALL, seed=seed, word_bits=word_bits)
    rng = np.random.default_rng(seed)
    out_f, in_f = SMALL.linear_shapes()["blocks.0.attn.qkv"]
    first = EngineLinear(Quantizer((QuantGroup("int", Encoding("int", 8), 0.03125, {"step": 0.03125}),)),
                         (WeightGroup(Operand.from_values(rng.integers(-128, 128, size=(3, in_f)), "int8", word_bits), 0.0078125),))
    second = FloatLinear(rng.normal(size=(out_f, 3)).astype(np.float32), rng.normal(size=out_f).astype(np.float32))
    model.layers["blocks.0.attn.qkv"] = FactoredLinear((first, second))
    return model


@pytest.fixture(scope="module")
def saved_factored(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("f") / "factored.gsbf"
    modelfile.save(factored_model(), path)
    return path.read_bytes()


def test_factored_linear_round_trip(tmp_path):
    for seed, word_bits in ((6, 64), (7, 8)):
        model = factored_model(seed, word_bits)
        modelfile.save(model, tmp_path / "f.gsbf")
        back = modelfile.load(tmp_path / "f.gsbf")
        assert same_model(back, model)
        layer = back.layers["blocks.0.attn.qkv"]
        assert (layer.in_features, layer.out_features) == (8, 24) and [s.out_features for s in layer.stages] == [3, 24]
        assert "blocks.0.attn.qkv" in back.engine_layers()


def test_factored_linear_rejects_bad_chains():
    from model.layers import FactoredLinear, FloatLinear

    a, b = FloatLinear(np.zeros((3, 8), np.float32)), FloatLinear(np.zeros((24, 4), np.float32))
    with pytest.raises(ValueError, match="stage 1 takes 4 inputs"):
        FactoredLinear((a, b))
    with pytest.raises(ValueError, match="at least two stages"):
        FactoredLinear((a,))


Q = ["layers", "blocks.0.attn.qkv"]
BAD_FACTORED = [
    (_set(Q + ["ranks"], [0]), "layers.blocks.0.attn.qkv.ranks[0]"),
    (_set(Q + ["ranks"], [3, 3]), "layers.blocks.0.attn.qkv.stages"),
    (_set(Q + ["ranks"], []), "layers.blocks.0.attn.qkv.ranks"),
    (_set(Q + ["ranks"], [4]), "arrays.blocks.0.attn.qkv.stage0.weight0.mask"),
    (_delete(Q + ["ranks"]), "layers.blocks.0.attn.qkv.ranks"),
    (_set(Q + ["stages", 1, "kind"], "factored_linear"), "layers.blocks.0.attn.qkv.stages[1].kind"),
    (_set(Q + ["stages", 0, "coef_bits"], 1), "layers.blocks.0.attn.qkv.stages[0].coef_bits"),
    (_set(Q + ["stages", 0, "weights", 0, "scale"], "x"), "layers.blocks.0.attn.qkv.stages[0].weights[0].scale"),
    (_set(Q + ["stages", 1, "bias"], False), "arrays"),
    (_set(Q + ["extra"], 1), "layers.blocks.0.attn.qkv"),
    (_set(["layers", "blocks.0.attn.qk", "kind"], "factored_linear"), "layers.blocks.0.attn.qk.kind"),
    (_set(["arrays", "blocks.0.attn.qkv.stage1.weight", "shape"], [24, 4]), "arrays.blocks.0.attn.qkv.stage1.weight"),
]


@pytest.mark.parametrize("edit,field", BAD_FACTORED)
def test_inconsistent_factored_linear_names_the_field(saved_factored, tmp_path, edit, field):
    path = tmp_path / "bad.gsbf"
    path.write_bytes(rewrite(saved_factored, edit))
    with pytest.raises(ModelFileError) as info:
        modelfile.load(path)
    assert info.value.field.startswith(field), str(info.value)


def test_fuzzed_factored_files_load_identically_or_raise_model_file_error(saved_factored, tmp_path):
    fuzz(factored_model(), saved_factored, tmp_path / "fuzz.gsbf", 11, 200)


# ---------------------------------------------------------------- the integer section (version 2)


@pytest.fixture(scope="module")
def saved_integer(tmp_path_factory) -> tuple[modelfile.Model, bytes]:
    from model.random_model import random_integer_model

    model = random_integer_model(seed=7)
    path = tmp_path_factory.mktemp("i") / "integer.gsbf"
    modelfile.save(model, path)
    return model, path.read_bytes()


def test_integer_section_round_trip(saved_integer, tmp_path):
    model, data = saved_integer
    (tmp_path / "m.gsbf").write_bytes(data)
    loaded = modelfile.load(tmp_path / "m.gsbf")
    assert loaded.integer is not None and same_model(loaded, model)
    assert json.loads(zipfile.ZipFile(io.BytesIO(data)).read(modelfile.MANIFEST))["version"] == 2


def _without_integer(data: bytes, version: int) -> bytes:
    """The file as version ``version`` without its integer section (what gsbflow 1 wrote)."""
    src = zipfile.ZipFile(io.BytesIO(data))
    manifest = json.loads(src.read(modelfile.MANIFEST))
    manifest["version"] = version
    del manifest["integer"]
    manifest["arrays"] = {k: v for k, v in manifest["arrays"].items() if not k.startswith("integer.")}
    text = json.dumps(manifest).encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        dst.writestr(modelfile.MANIFEST, text)
        dst.writestr(modelfile.MANIFEST_DIGEST, hashlib.sha256(text).hexdigest())
        for name in src.namelist():
            if name.startswith("arrays/") and not name.startswith("arrays/integer."):
                dst.writestr(name, src.read(name))
    return out.getvalue()


def test_version_1_files_load_without_an_integer_program(saved_integer, tmp_path):
    path = tmp_path / "v1.gsbf"
    path.write_bytes(_without_integer(saved_integer[1], 1))
    loaded = modelfile.load(path)
    assert loaded.integer is None
    from model import intvit

    with pytest.raises(ValueError, match="no integer program"):
        intvit.program(loaded)


INTEGER_FIELDS = [
    (_set(["version"], 1), "integer", "version 1 file has no integer section"),
    (_set(["version"], 3), "version", "a newer gsbflow"),
    (_set(["integer", "params", "residual_bits"], 40), "integer", "params.residual_bits"),
    (_set(["integer", "params", "residual_frac"], "12"), "integer", "expected an int"),
    (_set(["integer", "params", "pixel_max"], 255), "integer", "params.pixel_max"),
    (_set(["integer", "params", "blocks.0.attn.v_groups"], 10 ** 30), "integer", "v_groups"),
    (_set(["integer", "params", "surprise"], 1), "integer", "unknown"),
    (_delete(["integer", "params", "pixel_max"]), "integer", "missing"),
    (_set(["integer", "extra"], {}), "integer", "unknown fields"),
    (_set(["integer"], []), "integer", "expected"),
]


@pytest.mark.parametrize("edit,field,message", INTEGER_FIELDS)
def test_inconsistent_integer_section_names_the_field(saved_integer, tmp_path, edit, field, message):
    path = tmp_path / "bad.gsbf"
    path.write_bytes(rewrite(saved_integer[1], edit))
    with pytest.raises(ModelFileError, match=message) as info:
        modelfile.load(path)
    assert info.value.field.startswith(field) and str(path) in str(info.value)


@pytest.mark.parametrize("name, change, message", [
    ("blocks.0.attn.q.hi", lambda a: a[:, :1], r"expected int64 \(32, 2\)"),
    ("tokens", lambda a: a.astype(np.int32), "expected int64"),
    ("blocks.1.attn.levels", lambda a: a + (1 << 30), "values outside"),
    ("norm.gain", lambda a: np.full_like(a, 32767), "norm output can reach"),
])
def test_integer_arrays_are_validated(saved_integer, tmp_path, name, change, message):
    model, _ = saved_integer
    arrays = dict(model.integer.arrays, **{name: change(model.integer.arrays[name])})
    bad = modelfile.Model(model.architecture, model.preprocessing, model.tensors, model.layers, model.word_bits, model.meta,
                          modelfile.IntegerSection(model.integer.params, arrays))
    modelfile.save(bad, tmp_path / "bad.gsbf")
    with pytest.raises(ModelFileError, match=message) as info:
        modelfile.load(tmp_path / "bad.gsbf")
    assert info.value.field == "integer"


def test_fuzzed_integer_files_load_identically_or_raise_model_file_error(saved_integer, tmp_path):
    outcomes = fuzz(*saved_integer, tmp_path / "fuzz.gsbf", 20261201, 300)
    assert sum(v for k, v in outcomes.items() if k.endswith(":error")) > 200


def test_sums_past_62_bits_are_refused_at_export_and_at_load(tmp_path, monkeypatch):
    """int16 x int16 over n = 8 with a 32-bit coefficient format needs more than 62 bits: refused, not wrapped."""
    from model.golden import Encoding, Operand
    from model.layers import EngineLinear, WeightGroup
    from model.quantizers import QuantGroup, Quantizer

    model = factored_model()
    layer = model.layers["blocks.0.attn.qkv"]
    wide = EngineLinear(Quantizer((QuantGroup("int", Encoding("int", 16), 1.0, {"step": 1.0}),)),
                        (WeightGroup(Operand.from_values(np.full((3, 8), -32768), "int16"), 1.0),), None, 32)
    model.layers["blocks.0.attn.qkv"] = type(layer)((wide, layer.stages[1]))
    with pytest.raises(ValueError, match=r"layer blocks.0.attn.qkv: .*accumulator"):
        modelfile.save(model, tmp_path / "wide.gsbf")
    monkeypatch.setattr(modelfile, "check_widths", lambda model: None)  # as a careless writer would
    modelfile.save(model, tmp_path / "wide.gsbf")
    with pytest.raises(ModelFileError, match="accumulator") as info:
        modelfile.load(tmp_path / "wide.gsbf")
    assert info.value.field.startswith("layers.blocks.0.attn.qkv.stages[0]")


def test_mean_and_std_per_channel(tmp_path):
    from dataclasses import replace

    pre = modelfile.Preprocessing(255.0, (0.1, 0.5, 0.9), (0.2, 0.4, 0.8), "rgb")
    raw = np.full((3, 2, 2), 51.0, np.float32)
    assert np.allclose(pre.apply(raw)[:, 0, 0], [(0.2 - 0.1) / 0.2, (0.2 - 0.5) / 0.4, (0.2 - 0.9) / 0.8], atol=1e-6)
    assert modelfile.Preprocessing(1.0, 0.5, 2.0).mean == (0.5,)  # a single float (version 1) is every channel's
    with pytest.raises(ValueError, match="as many values"):
        modelfile.Preprocessing(1.0, (0.1, 0.2), (1.0,))
    model = random_model(SMALL, seed=5)
    model.preprocessing = replace(model.preprocessing, mean=(0.1, 0.2), std=(1.0, 1.0))  # SMALL has 1 channel
    modelfile.save(model, tmp_path / "m.gsbf")
    with pytest.raises(ModelFileError, match="2 values, for 1 channels") as info:
        modelfile.load(tmp_path / "m.gsbf")
    assert info.value.field == "preprocessing.mean"
