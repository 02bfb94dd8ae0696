"""The PTQ results run: ``python -m host.ptq_results``.

For each dataset: the FP model of seed ``--model-seed`` (reused from
``runs/results/<dataset>/spc100/seed<S>/fp/best.pt``, trained there when
missing), then for each calibration seed (``--calib-seeds``: ``--calib-size``
images drawn from the *training* split):

* min-max, percentile (the percentile picked on the validation split from
  ``PERCENTILES``) and the method (Pearson search + ranking loss + bias
  correction) at W8A8, W6A6, W4A4, and mixed 4/6/8 bits under each budget in
  ``--mp-budgets`` (mean bits per engine weight; the baselines get the same
  per-block bits);
* the ablation at W6A6 and W4A4: similarity only, + ranking loss,
  + bias correction (= the method), and + mixed precision;

each evaluated on the test split (accuracy, and agreement with the FP
model's predictions) by the exact torch quantized forward.  For calibration
seed 0 the method's models are exported to model files, run on the
EmulatorBackend through the host runtime (predictions compared with the
torch forward; digits: the whole test split) and their engine cycles per
image counted next to the GSB model's.  A few images go through the
SimBackend too.  The PTQ method itself is :mod:`model.ptq`; this driver sits
on top of it and of the host runtime.

Writes ``results/ptq_<dataset>.json``, ``results/ptq_table.md`` and
``docs/ptq_accuracy.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

PERCENTILES = (99.0, 99.9, 99.99)
#: The lanes of the engine whose ideal cycles the PTQ tables count: the
#: published figures (README, docs/ptq.md) were measured with 16 lanes of
#: 64-bit words, not with the default configuration's 4 (:data:`hw.config.DEFAULT`).
ENGINE_LANES = 16
CONFIGS = {"digits": "configs/digits.yaml", "fashion_mnist": "configs/fashion_mnist.yaml"}
ROOT = "runs/results"


def fp_checkpoint(dataset: str, seed: int, spc: int = 100, root: str = ROOT) -> str:
    """The FP checkpoint of a dataset/seed, trained (``python -m model.train --method fp``) when missing."""
    from model.config import load_config
    from model.results import run_dir
    from model.train import train

    out = run_dir(root, dataset, spc, seed, "fp")
    path = os.path.join(out, "best.pt")
    if not os.path.exists(os.path.join(out, "metrics.json")):
        cfg = load_config(CONFIGS[dataset])
        cfg.data.samples_per_class = spc
        print(f"[ptq] no FP checkpoint at {out}: training it", flush=True)
        train(cfg, "fp", seed, out, resume=True, progress=False)
    return path


def _mean_std(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def run_runtime(mf, raw: np.ndarray, backend=None) -> dict:
    """Predictions and engine cycles per image of ``raw`` images on a backend (by default an EmulatorBackend of :data:`ENGINE_LANES` lanes)."""
    from host.emulator import EmulatorBackend
    from host.runtime import Runtime

    backend = backend if backend is not None else EmulatorBackend("fast", lanes=ENGINE_LANES)
    rt = Runtime(mf, backend)
    c0 = backend.cycles()
    logits = np.stack([rt.forward(img) for img in raw])
    return {"logits": logits, "predictions": logits.argmax(-1), "cycles_per_image": (backend.cycles() - c0) / max(1, len(raw))}


def sim_backend():
    """A SimBackend for PTQ models: a longer simulated read timeout than the default 0.01 s (a PTQ
    layer's runs are long); layers the simulated configuration cannot hold run on the host by the contract."""
    from host.sim_backend import SimBackend

    return SimBackend(timeout=1.0, host_fallback=True)


def run_dataset(dataset: str, args, log=print) -> dict:
    """Everything for one dataset; returns the JSON-able record."""
    from model.data import load_splits
    from model.ptq import mixed
    from model.ptq.quant import QModel, build_layers, weight_storage_bits
    from model.ptq.search import SearchConfig, baseline_spec, calibration_indices, capture, search_model
    from model.train import load_checkpoint, load_model

    ck = fp_checkpoint(dataset, args.model_seed)
    model = load_model(ck)
    ck_meta = load_checkpoint(ck)
    dcfg = ck_meta["config"]["data"]
    splits = load_splits(dataset, dcfg["samples_per_class"], dcfg["val_per_class"], args.model_seed)
    fp = QModel(model)
    fp_val, fp_test = fp.predict(splits.val.x), fp.predict(splits.test.x)
    rec: dict = {
        "dataset": dataset, "checkpoint": ck, "model_seed": args.model_seed, "calib_seeds": list(args.calib_seeds),
        "calib_size": args.calib_size, "n_val": len(splits.val.y), "n_test": len(splits.test.y),
        "fp": {"val_acc": 100 * float(np.mean(fp_val == splits.val.y)), "test_acc": 100 * float(np.mean(fp_test == splits.test.y))},
        "runs": [], "acc_bits": args.acc_bits, "sequential": not args.independent,
    }
    log(f"[ptq] {dataset}: FP val {rec['fp']['val_acc']:.2f} test {rec['fp']['test_acc']:.2f}")

    def evaluate(spec) -> dict:
        q = QModel(model, build_layers(model, spec, acc_bits=args.acc_bits))
        pv, pt = q.predict(splits.val.x), q.predict(splits.test.x)
        return {"val_acc": 100 * float(np.mean(pv == splits.val.y)), "test_acc": 100 * float(np.mean(pt == splits.test.y)),
                "agree": 100 * float(np.mean(pt == fp_test)), "weight_kbit": weight_storage_bits(model, spec) / 1000}

    seq = not args.independent
    full = SearchConfig(sequential=seq)
    variants = {"sim": SearchConfig(rank=False, bias_correction=False, sequential=seq),
                "sim_rank": SearchConfig(bias_correction=False, sequential=seq), "ours": full}
    for cs in args.calib_seeds:
        t0 = time.time()
        calib_x = splits.train.x[calibration_indices(len(splits.train.y), args.calib_size, cs)]
        cap = capture(model, calib_x)
        cache: dict = {}
        run: dict = {"calib_seed": cs, "settings": {}}
        specs: dict = {}
        for bits in args.bits:
            res = {}
            for kind in ("minmax",):
                res[kind] = evaluate(baseline_spec(model, cap, bits, kind))
            pct = {p: evaluate(baseline_spec(model, cap, bits, "percentile", p)) for p in PERCENTILES}
            best_p = max(PERCENTILES, key=lambda p: (pct[p]["val_acc"], -abs(p - 99.9)))
            res["percentile"] = dict(pct[best_p], pct=best_p)
            for vname, vcfg in variants.items():
                if vname != "ours" and bits not in args.ablation_bits:
                    continue
                spec, _ = search_model(model, calib_x, bits, vcfg, cap, cache=cache, acc_bits=args.acc_bits)
                res[vname] = evaluate(spec)
                if vname == "ours":
                    specs[bits] = spec
            run["settings"][f"W{bits}A{bits}"] = res
            log(f"[ptq] {dataset} calib {cs} W{bits}A{bits}: " + ", ".join(f"{k} {v['test_acc']:.2f}" for k, v in res.items()))
        if set(args.mp_bits) <= set(specs):
            sens = mixed.sensitivities(model, calib_x, {b: specs[b] for b in args.mp_bits}, cap)
            run["sensitivity"] = sens
            for budget in args.mp_budgets:
                assign = mixed.assign_bits(model, sens["omega"], budget)
                bits_map = mixed.layer_bits(assign)
                res = {"minmax": evaluate(baseline_spec(model, cap, bits_map, "minmax"))}
                pct = {p: evaluate(baseline_spec(model, cap, bits_map, "percentile", p)) for p in PERCENTILES}
                best_p = max(PERCENTILES, key=lambda p: (pct[p]["val_acc"], -abs(p - 99.9)))
                res["percentile"] = dict(pct[best_p], pct=best_p)
                spec = (search_model(model, calib_x, bits_map, full, cap, acc_bits=args.acc_bits)[0] if seq
                        else mixed.compose(specs, bits_map))
                res["ours"] = evaluate(spec)
                res["assignment"] = assign
                res["mean_bits"] = mixed.mean_weight_bits(model, bits_map)
                run["settings"][f"MP{budget:g}"] = res
                specs[f"MP{budget:g}"] = spec
                log(f"[ptq] {dataset} calib {cs} MP<={budget:g} ({res['mean_bits']:.2f} bits, "
                    f"{[assign[k] for k in assign]}): " + ", ".join(f"{k} {res[k]['test_acc']:.2f}" for k in ("minmax", "percentile", "ours")))
        run["seconds"] = time.time() - t0
        if cs == args.calib_seeds[0] and args.engine_images != 0:
            run["engine"] = engine_check(ck, model, specs, splits, dataset, args, log)
        rec["runs"].append(run)
    rec["gsb_cycles"] = gsb_cycles(dataset, args.model_seed, log)
    return rec


def engine_check(ck, model, specs: dict, splits, dataset: str, args, log) -> dict:
    """Export each of the method's models, run test images on the EmulatorBackend, compare with torch."""
    import torch

    from host.cli import test_images
    from model import modelfile
    from model.ptq.export import export_ptq, torch_inputs
    from model.ptq.quant import QModel, build_layers

    out = {}
    os.makedirs(args.model_dir, exist_ok=True)
    for key, spec in specs.items():
        name = f"W{key}A{key}" if isinstance(key, int) else key
        path = os.path.join(args.model_dir, f"ptq-{dataset}-{name}.gsbf")
        modelfile.save(export_ptq(ck, model, spec, acc_bits=args.acc_bits, meta={"setting": name}), path)
        mf = modelfile.load(path)
        raw, labels = test_images(mf.preprocessing.dataset)
        n = len(raw) if args.engine_images < 0 or (dataset == "digits" and args.engine_images_digits_all) else min(args.engine_images, len(raw))
        raw, labels = raw[:n], labels[:n]
        t = time.time()
        r = run_runtime(mf, raw)
        sec = time.time() - t
        q = QModel(model, build_layers(model, spec, acc_bits=args.acc_bits))
        lt = q.logits(torch.from_numpy(torch_inputs(mf, raw))).numpy()
        entry = {"file": path, "images": int(n), "predictions_equal": int(np.sum(r["predictions"] == lt.argmax(-1))),
                 "max_abs_logit_diff": float(np.abs(r["logits"] - lt).max()), "cycles_per_image": r["cycles_per_image"],
                 "emulator_accuracy": 100 * float(np.mean(r["predictions"] == labels)), "seconds_per_image": sec / max(n, 1),
                 "file_bytes": os.path.getsize(path)}
        if args.sim_images > 0:
            sb = sim_backend()
            rs = run_runtime(mf, raw[:args.sim_images], sb)
            entry["sim"] = {"images": args.sim_images, "predictions_equal": int(np.sum(rs["predictions"] == lt[:args.sim_images].argmax(-1))),
                            "cycles_per_image": rs["cycles_per_image"], "host_layers": sorted(sb.host_layers)}
        out[name] = entry
        log(f"[ptq] {dataset} {name} on the EmulatorBackend: {entry['predictions_equal']}/{n} predictions equal to torch, "
            f"{entry['cycles_per_image']:.0f} cycles/image" + (f", SimBackend {entry['sim']}" if "sim" in entry else ""))
    return out


def gsb_cycles(dataset: str, seed: int, log) -> dict | None:
    """EmulatorBackend cycles per image of the GSB model of the same dataset and seed (if trained)."""
    from host.cli import test_images
    from model import modelfile
    from model.export import export_checkpoint
    from model.results import run_dir

    path = os.path.join(run_dir(ROOT, dataset, 100, seed, "gsb"), "best.pt")
    demo = "build/demo/gsb-digits.gsbf"
    if os.path.exists(path):
        mf, src = export_checkpoint(path), path
    elif dataset == "digits" and os.path.exists(demo):
        mf, src = modelfile.load(demo), demo
    else:
        log(f"[ptq] no GSB model for {dataset}: train it with python -m model.train --method gsb (cycles not compared)")
        return None
    raw, _ = test_images(mf.preprocessing.dataset)
    r = run_runtime(mf, raw[:2])
    return {"source": src, "cycles_per_image": r["cycles_per_image"]}


# ------------------------------------------------------------------ outputs

SETTING_ORDER = ("W8A8", "W6A6", "W4A4")
LABELS = {"minmax": "min-max", "percentile": "percentile", "sim": "similarity only", "sim_rank": "+ ranking loss",
          "ours": "+ bias correction (= ours)"}


def _settings(rec: dict) -> list[str]:
    keys = list(rec["runs"][0]["settings"])
    return [k for k in SETTING_ORDER if k in keys] + [k for k in keys if k.startswith("MP")]


def _stat(rec: dict, setting: str, method: str, field: str = "test_acc") -> tuple[float, float] | None:
    vals = [r["settings"][setting][method][field] for r in rec["runs"] if method in r["settings"].get(setting, {})]
    return _mean_std(vals) if vals else None


def _fmt(ms) -> str:
    return "–" if ms is None else f"{ms[0]:.2f} ± {ms[1]:.2f}"


def _setting_label(rec: dict, s: str) -> str:
    if not s.startswith("MP"):
        return s
    bits = [r["settings"][s]["mean_bits"] for r in rec["runs"]]
    return f"MP 4/6/8, ≤ {s[2:]} bits (mean {np.mean(bits):.2f})"


def table_md(records: list[dict]) -> str:
    lines = ["# PTQ results (`python -m host.ptq_results`)", "",
             "Test accuracy (%) of the exact quantized forward (the engine's integers), mean ± std over "
             f"{len(records[0]['calib_seeds'])} calibration seeds ({records[0]['calib_size']} training images each), "
             "FP model of seed " f"{records[0]['model_seed']}. *agree*: % of test images predicted as the FP model does. "
             "Percentile: the best of " f"{', '.join(map(str, PERCENTILES))} on validation. "
             "Patch embedding and heads stay float (host).", ""]
    for rec in records:
        fp = rec["fp"]["test_acc"]
        lines += [f"## {rec['dataset']} (FP test accuracy {fp:.2f}, {rec['n_test']} test images)", "",
                  "| setting | min-max | percentile | ours | ours − FP | agree: min-max | agree: ours |", "|---|---|---|---|---|---|---|"]
        for s in _settings(rec):
            ours = _stat(rec, s, "ours")
            lines.append(f"| {_setting_label(rec, s)} | {_fmt(_stat(rec, s, 'minmax'))} | {_fmt(_stat(rec, s, 'percentile'))} | "
                         f"{_fmt(ours)} | {ours[0] - fp:+.2f} | {_fmt(_stat(rec, s, 'minmax', 'agree'))} | {_fmt(_stat(rec, s, 'ours', 'agree'))} |")
        lines += ["", f"Ablation ({rec['dataset']}): cumulative rows; test accuracy, agreement with FP.", "",
                  "| row | setting | test acc | agree |", "|---|---|---|---|"]
        mp = [s for s in _settings(rec) if s.startswith("MP")]
        for s in [s for s in ("W4A4", "W6A6") if _stat(rec, s, "sim")]:
            for m in ("minmax", "percentile", "sim", "sim_rank", "ours"):
                lines.append(f"| {LABELS[m]} | {s} | {_fmt(_stat(rec, s, m))} | {_fmt(_stat(rec, s, m, 'agree'))} |")
            if s == "W4A4":
                for k in mp:
                    lines.append(f"| + mixed precision | {_setting_label(rec, k)} | {_fmt(_stat(rec, k, 'ours'))} | "
                                 f"{_fmt(_stat(rec, k, 'ours', 'agree'))} |")
        eng = rec["runs"][0].get("engine")
        if eng:
            gsb = rec.get("gsb_cycles")
            lines += ["", f"Engine ({rec['dataset']}, calibration seed {rec['runs'][0]['calib_seed']}): the exported model files on the "
                      f"EmulatorBackend (ideal cycles, {ENGINE_LANES} lanes, 64-bit words).", "",
                      "| model | cycles / image | × GSB | emulator = torch predictions | max logit diff | SimBackend (equal, layers on host) | file (kB) |",
                      "|---|---|---|---|---|---|---|"]
            if gsb:
                lines.append(f"| GSB (`{gsb['source']}`) | {gsb['cycles_per_image']:.0f} | 1.0 | – | – | – | – |")
            for name, e in eng.items():
                ratio = f"{e['cycles_per_image'] / gsb['cycles_per_image']:.1f}" if gsb else "–"
                sim = e.get("sim")
                sim_s = f"{sim['predictions_equal']}/{sim['images']}, {len(sim['host_layers'])} of 24" if sim else "–"
                lines.append(f"| PTQ {name} | {e['cycles_per_image']:.0f} | {ratio} | {e['predictions_equal']}/{e['images']} | "
                             f"{e['max_abs_logit_diff']:.1e} | {sim_s} | {e['file_bytes'] / 1000:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(5.5 * len(records), 4), squeeze=False)
    for ax, rec in zip(axes[0], records):
        settings = _settings(rec)
        xs = np.arange(len(settings))
        for off, m, mk in ((-0.2, "minmax", "s"), (0.0, "percentile", "^"), (0.2, "ours", "o")):
            st = [_stat(rec, s, m) for s in settings]
            ax.errorbar(xs + off, [v[0] for v in st], yerr=[v[1] for v in st], fmt=mk, capsize=3,
                        label="ours (similarity + ranking + bias corr.)" if m == "ours" else LABELS[m])
        ax.axhline(rec["fp"]["test_acc"], color="k", ls="--", lw=1, label="FP")
        ax.set_xticks(xs, [s if not s.startswith("MP") else f"MP≤{s[2:]}" for s in settings])
        ax.set_title(rec["dataset"])
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m host.ptq_results", description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist"], choices=sorted(CONFIGS))
    ap.add_argument("--model-seed", type=int, default=0)
    ap.add_argument("--calib-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--calib-size", type=int, default=100)
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    ap.add_argument("--ablation-bits", type=int, nargs="+", default=[6, 4])
    ap.add_argument("--mp-bits", type=int, nargs="+", default=[4, 6, 8])
    ap.add_argument("--mp-budgets", type=float, nargs="+", default=[4.5, 5.0])
    ap.add_argument("--acc-bits", type=int, default=30, help="fit each layer's coefficients to this accumulator (0: the contract's 18 bits)")
    ap.add_argument("--independent", action="store_true", help="search every layer on the FP model's inputs (default: sequential, chosen on validation)")
    ap.add_argument("--engine-images", type=int, default=200, help="test images per model file on the EmulatorBackend (-1: all, 0: skip)")
    ap.add_argument("--engine-images-digits-all", type=int, default=1, help="digits: run the whole test split on the emulator")
    ap.add_argument("--sim-images", type=int, default=3)
    ap.add_argument("--model-dir", default="build/ptq")
    ap.add_argument("--out", default="results")
    ap.add_argument("--plot", default="docs/ptq_accuracy.png")
    ap.add_argument("--collect-only", action="store_true", help="only rebuild the table and the plot from results/ptq_*.json")
    args = ap.parse_args(argv)
    if args.collect_only:
        records = []
        for ds in args.datasets:
            with open(os.path.join(args.out, f"ptq_{ds}.json")) as f:
                records.append(json.load(f))
        md = table_md(records)
        with open(os.path.join(args.out, "ptq_table.md"), "w") as f:
            f.write(md)
        plot(records, args.plot)
        print(md)
        return 0
    args.acc_bits = args.acc_bits or None

    import torch

    torch.set_num_threads(1)
    t0 = time.time()
    records = []
    os.makedirs(args.out, exist_ok=True)
    for ds in args.datasets:
        rec = run_dataset(ds, args, log=lambda s: print(s, flush=True))
        rec["seconds"] = time.time() - t0
        with open(os.path.join(args.out, f"ptq_{ds}.json"), "w") as f:
            json.dump(rec, f, indent=1, default=float)
        records.append(rec)
    md = table_md(records)
    with open(os.path.join(args.out, "ptq_table.md"), "w") as f:
        f.write(md)
    plot(records, args.plot)
    print(md)
    print(f"[ptq] wrote {args.out}/ptq_*.json, {args.out}/ptq_table.md, {args.plot} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
