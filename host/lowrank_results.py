"""Low-rank results: accuracy against weights removed, and the int8 low-rank model on the engine.

``python -m host.lowrank_results`` does, per dataset (digits, Fashion-MNIST)
and seed, on the FP checkpoint ``runs/results/<dataset>/spc100/seed<S>/fp/best.pt``
(trained first, with ``configs/<dataset>.yaml``, when missing):

1. calibration: the compressed layers' inputs on the training split;
2. for each budget (fraction of the block linears' weights removed) and each
   method: compress (:func:`model.lowrank.compensate.compress`), accuracy on
   validation and test.  Methods: ``weight_uniform`` and ``weight_greedy``
   (plain weight SVD, same kept fraction per layer / the greedy allocation on
   the weight error), ``activation`` (activation-aware SVD, greedy ranks, no
   compensation), ``activation_comp`` (the method: activation-aware SVD,
   greedy ranks, error compensation);
3. the combination: the method at the largest budget whose *validation*
   accuracy is within 1 point of the FP model's, quantized to int8
   (:func:`model.lowrank.quant.quantize`), exported to a model file, run on
   the EmulatorBackend on test images (the whole digits test set; the first
   ``--runtime-images`` of Fashion-MNIST's) and compared with its torch
   forward; plus the on-chip weight bits.

Writes ``results/lowrank_<dataset>.json``, ``results/lowrank_table.md`` and
``docs/lowrank_accuracy.png``; ``--collect-only`` rebuilds the table and the
plot from the JSON files.  The method itself is :mod:`model.lowrank`; this
driver sits on top of it and of the host runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DATASETS = ("digits", "fashion_mnist")
BUDGETS = (0.3, 0.5, 0.6, 0.7, 0.8, 0.9)
METHODS = {
    "weight_uniform": ("Weight SVD, uniform ranks", dict(method="weight", compensate=False, allocation="uniform")),
    "weight_greedy": ("Weight SVD, greedy ranks", dict(method="weight", compensate=False, allocation="greedy")),
    "activation": ("Activation-aware SVD, greedy ranks", dict(method="activation", compensate=False)),
    "activation_comp": ("Activation-aware + error compensation (method)", dict(method="activation", compensate=True)),
}
BASELINES = ("weight_uniform", "weight_greedy")
METHOD = "activation_comp"
ROOT = "runs/results"


def fp_checkpoint(dataset: str, seed: int, spc: int = 100, root: str = ROOT, log=print) -> str:
    """The FP checkpoint of a dataset and seed; trained (``configs/<dataset>.yaml``) when missing."""
    out = os.path.join(root, dataset, f"spc{spc}", f"seed{seed}", "fp")
    path = os.path.join(out, "best.pt")
    if not os.path.exists(os.path.join(out, "metrics.json")):
        from model.config import load_config
        from model.train import train

        log(f"[lowrank] no FP model at {out}: training it")
        cfg = load_config(os.path.join("configs", f"{dataset}.yaml"))
        cfg.data.samples_per_class = spc
        train(cfg, "fp", seed, out, resume=True, progress=False)
    return path


def run_seed(dataset: str, seed: int, args, log=print) -> dict:
    """Every budget and method for one FP model, and the int8 combination."""
    from model.config import from_dict
    from model.data import load_splits
    from model.lowrank.compensate import LowRankConfig, calibrate, compress
    from model.train import evaluate, load_checkpoint, load_model

    ck = fp_checkpoint(dataset, seed, log=log)
    fp = load_model(ck)
    cfg = from_dict(load_checkpoint(ck)["config"])
    splits = load_splits(cfg.data.dataset, cfg.data.samples_per_class, cfg.data.val_per_class, seed)
    calib = calibrate(fp, splits.train.x)
    rec = {"dataset": dataset, "seed": seed, "checkpoint": ck,
           "fp": {"val_acc": evaluate(fp, splits.val.x, splits.val.y), "test_acc": evaluate(fp, splits.test.x, splits.test.y)},
           "runs": []}
    log(f"[lowrank] {dataset} seed {seed}: FP val {rec['fp']['val_acc']:.2f} test {rec['fp']['test_acc']:.2f}")
    models = {}
    for budget in args.budgets:
        for key, (_, kw) in METHODS.items():
            t = time.time()
            lcfg = LowRankConfig(removed=budget, residual_rank=args.residual_rank, steps=args.steps, **kw)
            model, info = compress(fp, calib, lcfg, splits.train.x)
            run = {"method": key, "budget": budget, "removed": info["removed"], "params": info["params"],
                   "dense_params": info["dense_params"], "ranks": info["ranks"],
                   "val_acc": evaluate(model, splits.val.x, splits.val.y),
                   "test_acc": evaluate(model, splits.test.x, splits.test.y), "seconds": time.time() - t}
            rec["runs"].append(run)
            if key == METHOD:
                models[budget] = model
            log(f"[lowrank] {dataset} s{seed} {budget:.2f} {key:16s} val {run['val_acc']:6.2f} test {run['test_acc']:6.2f} "
                f"({run['seconds']:.0f} s)")
    rec["combination"] = combination(dataset, seed, ck, fp, models, rec, splits, args, log)
    return rec


def combination(dataset, seed, ck, fp, models, rec, splits, args, log) -> dict:
    """The int8 low-rank model at the validation-chosen budget: accuracy, engine equality, on-chip bits."""
    import torch

    from host.emulator import EmulatorBackend
    from host.runtime import Runtime
    from model import modelfile
    from model.data import load_raw
    from model.export import export_checkpoint
    from model.lowrank.compensate import LowRankConfig, calibrate, compress
    from model.lowrank.quant import UP5K_BITS, onchip_bits, quantize
    from model.train import evaluate

    ok = [r for r in rec["runs"] if r["method"] == METHOD and r["val_acc"] >= rec["fp"]["val_acc"] - 1.0]
    budget = max((r["budget"] for r in ok), default=min(args.budgets))
    qmodel, layers = quantize(models[budget], splits.train.x)
    # the uncompressed model with the same int8 quantizer, for reference
    dense, _ = compress(fp, calibrate(fp, splits.train.x), LowRankConfig(removed=0.0, compensate=False))
    qdense, dense_layers = quantize(dense, splits.train.x)
    out = {"budget": budget, "removed": next(r["removed"] for r in ok if r["budget"] == budget) if ok else None,
           "int8_val_acc": evaluate(qmodel, splits.val.x, splits.val.y),
           "int8_test_acc": evaluate(qmodel, splits.test.x, splits.test.y),
           "int8_dense_test_acc": evaluate(qdense, splits.test.x, splits.test.y),
           "onchip": onchip_bits(layers), "onchip_int8_dense": onchip_bits(dense_layers)}
    shapes = [tuple(fp.get_submodule(n).weight.shape) for n in layers]
    linear_weights = sum(a * b for a, b in shapes)
    out["fp_block_linear_weights"] = linear_weights
    out["fp32_bits"] = 32 * linear_weights
    out["int8_bits"] = 8 * linear_weights
    out["up5k_bits"] = UP5K_BITS
    out["fits_up5k"] = out["onchip"]["total_bits"] <= UP5K_BITS
    host_linear = sum(m.weight.numel() for m in (fp.patch_embed, fp.head) + ((fp.head_dist,) if fp.head_dist is not None else ()))
    out["host_linear_weights"] = int(host_linear)
    # export, reload, run on the emulator, compare with the torch forward
    mf = export_checkpoint(ck, overrides=layers)
    path = os.path.join(args.model_dir, f"lowrank_int8_{dataset}_seed{seed}.gsbf")
    os.makedirs(args.model_dir, exist_ok=True)
    modelfile.save(mf, path)
    mf = modelfile.load(path)
    pool = load_raw(dataset)
    yte = pool.yte
    n = len(yte) if dataset == "digits" else min(args.runtime_images, len(yte))
    raw = pool.xte[:n].astype(np.int64)
    t = time.time()
    runtime = Runtime(mf, EmulatorBackend("fast")).predict(raw)
    with torch.no_grad():
        torch_pred = qmodel.predict(torch.from_numpy(splits.test.x[:n])).argmax(-1).numpy()
    out.update(model_file=path, runtime_images=int(n), runtime_equal=int((runtime == torch_pred).sum()),
               runtime_acc=float(100.0 * (runtime == yte[:n]).mean()), runtime_seconds=time.time() - t)
    log(f"[lowrank] {dataset} s{seed} int8 at {budget:.2f}: test {out['int8_test_acc']:.2f} (dense int8 "
        f"{out['int8_dense_test_acc']:.2f}); emulator = torch on {out['runtime_equal']}/{n}; on-chip "
        f"{out['onchip']['total_bits']} bits (fits UP5K: {out['fits_up5k']})")
    return out


# ------------------------------------------------------------------ collection


def _ms(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summary(records: list[dict]) -> dict:
    """Per method and budget: mean/std of test and validation accuracy and removed fraction over seeds."""
    out: dict = {}
    for rec in records:
        for r in rec["runs"]:
            d = out.setdefault(r["method"], {}).setdefault(r["budget"], {"test": [], "val": [], "removed": [], "drop": []})
            d["test"].append(r["test_acc"])
            d["val"].append(r["val_acc"])
            d["removed"].append(r["removed"])
            d["drop"].append(rec["fp"]["test_acc"] - r["test_acc"])
    return out


def table_md(by_dataset: dict[str, list[dict]]) -> str:
    lines = ["Test accuracy (%) of the FP models with their block linear layers (qkv, proj, fc1, fc2) compressed to "
             "low rank, mean ± std over seeds; ranks and budgets chosen on calibration/validation data only. "
             "\"removed\" is the fraction of those layers' weights removed (patch embedding and heads, 1.2 % of "
             "the linear weights on digits and 3.3 % on Fashion-MNIST, are not compressed). Written by `python -m host.lowrank_results`.", ""]
    for dataset, records in by_dataset.items():
        fp_t = _ms([r["fp"]["test_acc"] for r in records])
        s = summary(records)
        budgets = sorted(next(iter(s.values())))
        lines += [f"### {dataset} (FP: {fp_t[0]:.2f} ± {fp_t[1]:.2f}, {len(records)} seeds)", "",
                  "| removed | " + " | ".join(METHODS[m][0] for m in METHODS) + " |",
                  "|---|" + "---|" * len(METHODS)]
        for b in budgets:
            cells = []
            for m in METHODS:
                mean, std = _ms(s[m][b]["test"])
                cells.append(f"{mean:.2f} ± {std:.2f}")
            lines.append(f"| {np.mean(s[METHOD][b]['removed']):.0%} | " + " | ".join(cells) + " |")
        ok = [b for b in budgets if np.mean(s[METHOD][b]["drop"]) < 1.0]
        best = max(ok) if ok else None
        wins = [b for b in budgets if _ms(s[METHOD][b]["test"])[0] > max(_ms(s[m][b]["test"])[0] for m in BASELINES)]
        best_txt = "none" if best is None else f"{best:.0%} removed (drop {np.mean(s[METHOD][best]['drop']):.2f})"
        lines += ["", f"- Largest budget with a mean test drop under 1 point (method): {best_txt}",
                  f"- Method beats the better plain-SVD baseline (mean test) at {len(wins)} of {len(budgets)} budgets"
                  + ("" if len(wins) == len(budgets) else f" (not at {', '.join(f'{b:.0%}' for b in budgets if b not in wins)})"), ""]
    lines += ["### Combination: int8 low-rank model on the engine", "",
              "The method at the largest budget whose validation accuracy is within 1 point of FP, factors and "
              "activations quantized to symmetric per-tensor int8 (min-max), exported (`factored_linear` layers) and "
              "run on the EmulatorBackend. On-chip bits: engine weight planes + 32-bit scales of the block linears "
              "(unpadded; patch embedding and heads are host-side floats in every variant).", "",
              "| dataset | seed | removed | FP test | int8 low-rank test | int8 dense test | emulator = torch | "
              "on-chip bits | FP32 linears | INT8 linears | fits UP5K (1.1 Mbit) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for dataset, records in by_dataset.items():
        for rec in records:
            c = rec["combination"]
            lines.append(f"| {dataset} | {rec['seed']} | {c['removed']:.0%} | {rec['fp']['test_acc']:.2f} | "
                         f"{c['int8_test_acc']:.2f} | {c['int8_dense_test_acc']:.2f} | {c['runtime_equal']}/{c['runtime_images']} | "
                         f"{c['onchip']['total_bits']:,} | {c['fp32_bits']:,} | {c['onchip_int8_dense']['total_bits']:,} | "
                         f"{'yes' if c['fits_up5k'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(by_dataset: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(by_dataset), figsize=(5.5 * len(by_dataset), 4.2), squeeze=False)
    styles = {"weight_uniform": ("tab:gray", "s--"), "weight_greedy": ("tab:brown", "v:"),
              "activation": ("tab:blue", "o--"), "activation_comp": ("tab:red", "o-")}
    for ax, (dataset, records) in zip(axes[0], by_dataset.items()):
        s = summary(records)
        fp_mean = np.mean([r["fp"]["test_acc"] for r in records])
        for m, (label, _) in METHODS.items():
            budgets = sorted(s[m])
            x = [np.mean(s[m][b]["removed"]) * 100 for b in budgets]
            ms = [_ms(s[m][b]["test"]) for b in budgets]
            color, fmt = styles[m]
            ax.errorbar(x, [v[0] for v in ms], yerr=[v[1] for v in ms], fmt=fmt, color=color, label=label, capsize=3)
        ax.axhline(fp_mean, color="k", lw=1, label="FP")
        ax.axhline(fp_mean - 1, color="k", lw=1, ls=":", label="FP − 1 point")
        ax.set_title(f"{dataset} ({len(records)} seeds)")
        ax.set_xlabel("block linear weights removed (%)")
        ax.set_ylabel("test accuracy (%)")
        low = min(np.mean(s[m][b]["test"]) for m in ("weight_uniform", METHOD) for b in s[m])
        ax.set_ylim(max(0.0, low - 5), fp_mean + 4)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(datasets, results_dir: str, plot_path: str) -> str:
    by_dataset = {}
    for d in datasets:
        p = os.path.join(results_dir, f"lowrank_{d}.json")
        if os.path.exists(p):
            with open(p) as f:
                by_dataset[d] = json.load(f)["records"]
    text = table_md(by_dataset)
    with open(os.path.join(results_dir, "lowrank_table.md"), "w") as f:
        f.write(text)
    plot(by_dataset, plot_path)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m host.lowrank_results", description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--residual-rank", type=int, default=4)
    parser.add_argument("--steps", type=int, default=200, help="Adam steps of the error compensation, per layer")
    parser.add_argument("--runtime-images", type=int, default=300, help="Fashion-MNIST test images run on the emulator")
    parser.add_argument("--results-dir", default="results")
    parser.add_argument("--model-dir", default="runs/lowrank")
    parser.add_argument("--plot", default="docs/lowrank_accuracy.png")
    parser.add_argument("--collect-only", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    os.makedirs(args.results_dir, exist_ok=True)
    if not args.collect_only:
        for dataset in args.datasets:
            t = time.time()
            records = [run_seed(dataset, s, args, log=lambda m: print(m, flush=True)) for s in args.seeds]
            with open(os.path.join(args.results_dir, f"lowrank_{dataset}.json"), "w") as f:
                json.dump({"dataset": dataset, "budgets": args.budgets, "residual_rank": args.residual_rank,
                           "steps": args.steps, "seconds": time.time() - t, "records": records}, f, indent=1)
    print(write_outputs(args.datasets, args.results_dir, args.plot))
    return 0


if __name__ == "__main__":
    sys.exit(main())
