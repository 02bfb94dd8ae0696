"""The whole-model design's budget: cycles, images/s and on-chip memory, by arithmetic.

``python -m bench.whole_model [--model FILE.gsbf]`` (default: the digits demo
model of ``make demo``, trained first if missing) works out what the
whole-model gateware would need for that model's integer program
(:mod:`model.intvit`):

* **cycles per image** of each kind of step: the engine's products
  (:func:`hw.cycles.product_cycles` at each board preset's lanes and word
  width) and the integer units as built (``hw/layernorm.py``, with the
  serial divider on the iCEBreaker, which has no multipliers to spare, and
  the reciprocal one on the ULX3S,
  ``hw/multithreshold.py``'s pipelined unit, ``hw/softmax.py``,
  ``hw/requantize.py``, ``hw/argmax.py``, ``hw/transpose.py``: each unit's own cycle count, with
  no stalls), one unit of each kind and every step after the one before,
  which is what the units give without a sequencer that overlaps them;
* the **images/s** this gives at each board's clock, against the issue's
  targets (300 on the iCEBreaker, 1,000 on the ULX3S), and what it would
  be with the thresholds and requantize *streamed*: taking each value as
  LayerNorm or the engine hands it over, as a sequencer that chains the
  units would run them (:data:`STREAMED`; an estimate of a schedule not
  built);
* the **on-chip stores**: every table as the units read it (entries times
  the word width they need) and the activations of one image, against each
  board's block RAM and SPRAM.

No gateware is built or simulated.  Prints the tables and writes
``bench/out/whole_model.json``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench import write_report
from model.intvit import INT8
from hw.argmax import Argmax
from hw.boards import board
from hw.config import preset
from hw.cycles import product_cycles
from hw.layernorm import LayerNorm
from hw.requantize import Requantize
from hw.softmax import SoftmaxLevels
from model import intvit
from model.golden import Encoding, words_for
from model.layers import EngineLinear, EngineMatmul
from model.modelfile import load

OUT = Path(__file__).resolve().parent / "out" / "whole_model.json"
#: The issue's end-to-end targets, images/s.
TARGETS = {"icebreaker": 300, "ulx3s": 1000}
#: LayerNorm's divider per board (hw.layernorm.LayerNorm.DIVIDERS): the UP5K's 8 SB_MAC16 are the engine's.
DIVIDER = {"icebreaker": "serial", "ulx3s": "reciprocal"}
#: The steps a chaining sequencer would hide behind their producers (one value a cycle each).
STREAMED = ("multithreshold", "requantize")
#: On-chip memory per board, bits: block RAM and single-port SPRAM.
MEMORY_BITS = {"icebreaker": {"bram": 30 * 4096, "spram": 4 * 256 * 1024},
               "ulx3s": {"bram": 208 * 18 * 1024, "spram": 0}}


@dataclass(frozen=True)
class Product:
    """One engine product kind of the program: ``count`` products of ``rows_x`` by ``rows_y``, length ``n``."""

    name: str
    x: tuple[Encoding, ...]
    y: tuple[Encoding, ...]
    rows_x: int
    rows_y: int
    n: int
    count: int = 1

    def cycles(self, word_bits: int, lanes: int) -> int:
        return self.count * product_cycles(self.x, self.y, self.rows_x, self.rows_y, self.n, word_bits, lanes)


def products(prog: intvit.IntegerProgram) -> list[Product]:
    """Every engine product of one image, in program order."""
    arch = prog.model.architecture
    t, out = arch.tokens, []
    for name in intvit.linear_names(arch, prog.head_names):
        x_enc, weights, _ = prog.engine_layer(name)
        layer = prog.model.layers.get(name)
        y_enc = [w.operand.encoding for w in layer.weights] if isinstance(layer, EngineLinear) else [INT8]
        codes = weights[0]
        rows_x = arch.num_patches if name.startswith("patch_embed") else 1 if name in prog.head_names else t
        out.append(Product(name, tuple(x_enc), tuple(y_enc), rows_x, codes.shape[0], codes.shape[1]))
    for i in range(arch.depth):
        for part, rows_y, n in (("qk", t, arch.head_dim), ("av", arch.head_dim, t)):
            name = f"blocks.{i}.attn.{part}"
            x_enc, y_enc, _ = prog.engine_layer(name)
            out.append(Product(name, tuple(x_enc), tuple(y_enc), t, rows_y, n, arch.heads))
    return out


def quantizer_inputs(prog: intvit.IntegerProgram) -> dict[str, tuple[int, int]]:
    """Each quantizer of the program: ``(values per image, input width in bits)``."""
    arch, layers = prog.model.architecture, prog.model.layers
    t, d = arch.tokens, arch.dim
    out = {}
    for i in range(arch.depth):
        pre = f"blocks.{i}"
        qkv, fc1, av = layers[f"{pre}.attn.qkv"], layers[f"{pre}.mlp.fc1"], layers[f"{pre}.attn.av"]
        norm = intvit.NORM_BITS + 1
        out[f"{pre}.attn.qkv.in"] = (t * d, norm)
        for part in ["q", "k"] + [f"v{g}" for g in range(prog.params[f"{pre}.attn.v_groups"])]:
            out[f"{pre}.attn.{part}"] = (t * d, qkv.accumulator_bits)
        assert isinstance(av, EngineMatmul)
        out[f"{pre}.attn.proj.in"] = (t * d, av.accumulator_bits(t))
        out[f"{pre}.mlp.fc1.in"] = (t * d, norm)
        out[f"{pre}.mlp.fc2.in"] = (t * arch.mlp_hidden, fc1.accumulator_bits)
    return out


def unit_cycles(prog: intvit.IntegerProgram, divider: str = "serial", word_bits: int = 16) -> dict[str, int]:
    """Cycles per image of the non-product steps, one unit of each kind, one step after another
    (LayerNorm with ``divider``; the reciprocal pipeline's drain counted once a token). The packing of
    codes into entries runs behind the thresholds at their rate and is not counted, except V's
    transpose (:class:`hw.transpose.TransposePacker`), whose columns go out after the last token's
    codes: ``2 + words`` cycles a column of ``word_bits``-bit words."""
    arch = prog.model.architecture
    t, d = arch.tokens, arch.dim
    norm = LayerNorm(d, intvit.RESIDUAL_BITS, intvit.NORM_BITS, divider=divider)
    drain = norm.PIPELINE if divider == "reciprocal" else 0
    counts = tuple(intvit.level_counts(prog.model.layers["blocks.0.attn.av"]))
    softmax = SoftmaxLevels(intvit.RESIDUAL_BITS, t, len(prog.arrays["exp_table"]), counts)
    # the pipelined MultiThreshold takes a value a cycle after its 4-cycle latency
    thresholds = sum(values + 4 for values, _ in quantizer_inputs(prog).values())
    requantized = (arch.in_channels * arch.num_patches * d                    # the patch embedding's channels
                   + arch.depth * (2 * t * d + arch.heads * t * t)          # residual adds, scores
                   + len(prog.head_names) * arch.num_classes)
    return {
        "layernorm": (2 * t * arch.depth + len(prog.head_names)) * (norm.cycles_per_token + drain),
        "multithreshold": thresholds,
        "softmax": arch.depth * arch.heads * t * softmax.row_cycles(t),
        # the residual adds' requantizer (its y an engine accumulator): one a cycle, after its pipeline's latency
        "requantize": requantized + Requantize(prog.model.layers["blocks.0.attn.proj"].accumulator_bits,
                                               intvit.RESIDUAL_BITS, 26, intvit.RESIDUAL_BITS).latency,
        "argmax": arch.num_classes * Argmax.cycles_per_value,
        "transpose": sum(prog.params[f"blocks.{i}.attn.v_groups"] for i in range(arch.depth))
        * d * (2 + words_for(t, word_bits)),
    }


def _signed_bits(lo: int, hi: int) -> int:
    return max(abs(lo) - 1 if lo < 0 else lo, hi if hi >= 0 else -hi - 1).bit_length() + 1


def stores(prog: intvit.IntegerProgram) -> list[dict]:
    """The on-chip stores of one model: name, kind (weights, table or activations), entries, bits each."""
    arch, a, p = prog.model.architecture, prog.arrays, prog.params
    t, d = arch.tokens, arch.dim
    rows: list[dict] = []

    def add(name: str, kind: str, entries: int, bits: int) -> None:
        rows.append({"store": name, "kind": kind, "entries": int(entries), "bits": int(bits),
                     "kbit": round(entries * bits / 1024, 1)})

    for product in products(prog):
        if product.name.startswith("blocks.") and product.name.endswith((".qk", ".av")):
            continue
        planes = sum(len(e.plane_weights) for e in product.y)
        add(f"{product.name} weights", "weights", product.rows_y * product.n, 8 if product.y == (INT8,) else planes)
    for name, (_, in_bits) in quantizer_inputs(prog).items():
        # hi and lo per level, clamped to one past the input's range (hw.multithreshold.threshold_words)
        add(f"{name} thresholds", "table", a[f"{name}.hi"].size, 2 * (in_bits + 1))
    norms = [key[:-len(".gain")] for key in a if key.endswith(".gain")]
    for name in norms:
        add(f"{name} gain, bias", "table", d, 2 * intvit.NORM_BITS)
    for key in a:
        if key.endswith(".attn.levels"):
            add(key, "table", a[key].size, intvit.ATTN_FRAC_BITS + 1)
        elif key.endswith(".bias") and not key.startswith(tuple(norms)):
            add(key, "table", a[key].size, _signed_bits(int(a[key].min()), int(a[key].max())))
    add("exp_table", "table", a["exp_table"].size, p["exp_frac"] + 1)
    add("tokens", "table", a["tokens"].size, intvit.RESIDUAL_BITS)
    by_name = {pr.name: pr for pr in products(prog)}

    def planes(encodings: tuple[Encoding, ...]) -> int:
        return sum(len(e.plane_weights) for e in encodings)
    linear_in = max(planes(by_name[f"blocks.0.{n}"].x) * by_name[f"blocks.0.{n}"].n
                    for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    qk, av = by_name["blocks.0.attn.qk"], by_name["blocks.0.attn.av"]
    add("residual stream", "activations", t * d, intvit.RESIDUAL_BITS)
    add("a linear layer's input planes", "activations", t, linear_in)
    add("q, k, v planes", "activations", t * d, planes(qk.x) + planes(qk.y) + planes(av.y))
    add("attention planes", "activations", arch.heads * t * t, planes(av.x))
    return rows


def budget(prog: intvit.IntegerProgram, boards: list[str]) -> dict:
    """Cycles, images/s and memory of ``prog`` on each board (its preset's engine, its clock)."""
    table = stores(prog)
    total_bits = sum(r["entries"] * r["bits"] for r in table)
    result = {"model": {"dim": prog.model.architecture.dim, "depth": prog.model.architecture.depth,
                        "tokens": prog.model.architecture.tokens},
              "stores": table, "store_kbit": round(total_bits / 1024, 1), "boards": []}
    for name in boards:
        b = board(name)
        config = preset(b.config)
        engine = sum(pr.cycles(config.word_bits, config.lanes) for pr in products(prog))
        units = unit_cycles(prog, DIVIDER[name], config.word_bits)
        cycles = engine + sum(units.values())
        streamed = cycles - sum(units[step] for step in STREAMED)
        memory = MEMORY_BITS[name]
        result["boards"].append({
            "board": name, "config": b.config, "clock_mhz": b.freq_hz / 1e6, "layernorm_divider": DIVIDER[name],
            "unit_cycles": units, "engine_cycles": engine,
            "cycles": cycles, "images_per_s": round(b.freq_hz / cycles, 1), "target": TARGETS[name],
            "streamed_cycles": streamed, "streamed_images_per_s": round(b.freq_hz / streamed, 1),
            "engine_images_per_s": round(b.freq_hz / engine, 1),
            "memory_kbit": {k: v // 1024 for k, v in memory.items()},
            "stores_fit_bits": total_bits <= sum(memory.values()),
        })
    return result


def _print(result: dict) -> None:
    m = result["model"]
    print(f"model: dim {m['dim']}, depth {m['depth']}, {m['tokens']} tokens")
    boards = result["boards"]
    print(f"\n{'cycles an image (one unit each, in turn)':40s}" + "".join(f"{b['board']:>12s}" for b in boards))
    for step in boards[0]["unit_cycles"]:
        label = step + (" (" + "/".join(b["layernorm_divider"] for b in boards) + ")" if step == "layernorm" else "")
        print(f"{label:40s}" + "".join(f"{b['unit_cycles'][step]:12,d}" for b in boards))
    print(f"{'engine (' + '/'.join(b['config'] for b in boards) + ')':40s}" + "".join(f"{b['engine_cycles']:12,d}" for b in boards))
    print(f"\n{'board':12s} {'clock MHz':>10s} {'cycles/image':>13s} {'images/s':>9s} {'streamed':>9s} "
          f"{'engine alone':>13s} {'target':>7s}")
    for b in result["boards"]:
        print(f"{b['board']:12s} {b['clock_mhz']:10.2f} {b['cycles']:13,d} {b['images_per_s']:9.1f} "
              f"{b['streamed_images_per_s']:9.1f} {b['engine_images_per_s']:13.1f} {b['target']:7d}")
    kinds: dict[str, float] = {}
    for r in result["stores"]:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + r["kbit"]
    print(f"\non-chip stores: {result['store_kbit']:,.1f} kbit (" + ", ".join(f"{k} {v:,.1f}" for k, v in kinds.items()) + ")")
    for r in sorted(result["stores"], key=lambda r: -r["kbit"])[:8]:
        print(f"  {r['store']:44s} {r['entries']:7d} x {r['bits']:2d} bits {r['kbit']:8.1f} kbit")
    for b in result["boards"]:
        mem = ", ".join(f"{k} {v:,d}" for k, v in b["memory_kbit"].items() if v)
        print(f"{b['board']}: {mem} kbit on chip; the stores {'fit' if b['stores_fit_bits'] else 'do not fit'} by size")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.whole_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None,
                   help="a packed model file (.gsbf) with an integer program (default: the digits demo model)")
    p.add_argument("--boards", nargs="*", default=sorted(TARGETS), choices=sorted(TARGETS))
    p.add_argument("--out", type=Path, default=OUT, help="JSON result file")
    a = p.parse_args(argv)
    if a.model is None:
        from model.demo import demo_model
        a.model = demo_model(Path("build/demo"), True)
    result = budget(intvit.program(load(str(a.model))), a.boards)
    _print(result)
    write_report(result, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
