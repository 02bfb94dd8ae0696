"""Run the results matrix and write ``results/*.json``, ``results/table.md``, ``docs/accuracy_vs_bits.png``.

``python -m model.results`` trains, for each dataset config (digits and
Fashion-MNIST), each seed and each method, one run (FP first: it is the
teacher and the initialisation of the quantized runs of the same seed), all
at ``--samples-per-class`` images per class, into
``runs/results/<dataset>/spc<N>/seed<S>/<method>/``.  Finished runs (with a
``metrics.json``) are skipped and unfinished ones resumed, so the command can
be re-run after an interruption.  Accuracies are test accuracy of the
checkpoint chosen on the validation split, in eval (deploy) mode; the table
gives mean +- sample std over seeds.  ``--collect-only`` only rebuilds the
outputs from the finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_CONFIGS = ("configs/digits.yaml", "configs/fashion_mnist.yaml")
DEFAULT_METHODS = ("fp", "gsb", "gsb_nokd", "gsb_ste", "bin1")
LABELS = {
    "fp": "FP (teacher)", "gsb": "GSB + KD", "gsb_nokd": "GSB, no KD", "gsb_ste": "GSB, plain STE",
    "gsb_ramp": "GSB + KD, ramp gradient", "bin1": "1-base binary (XNOR/BWN) + KD",
}


def run_dir(root: str, dataset: str, spc: int, seed: int, method: str) -> str:
    return os.path.join(root, dataset, f"spc{spc}", f"seed{seed}", method)


def run_matrix(configs, methods, seeds, spc, root, epochs=None, progress=False) -> None:
    import torch

    from .config import load_config
    from .train import train

    torch.set_num_threads(1)
    order = ["fp"] + [m for m in methods if m != "fp"]
    for path in configs:
        for seed in seeds:
            for method in order:
                cfg = load_config(path)
                cfg.data.samples_per_class = spc
                out = run_dir(root, cfg.data.dataset, spc, seed, method)
                if os.path.exists(os.path.join(out, "metrics.json")):
                    print(f"[results] done already: {out}", flush=True)
                    continue
                t = time.time()
                m = train(cfg, method, seed, out, epochs=epochs, resume=True, progress=progress)
                print(f"[results] {cfg.data.dataset} seed {seed} {method}: val {m['val_acc']:.2f} "
                      f"test {m['test_acc']:.2f} ({time.time() - t:.0f} s)", flush=True)


def collect(root: str, spc: int) -> dict:
    """``{dataset: {method: {"runs": [...], summary...}}}`` from finished runs."""
    out: dict = {}
    if not os.path.isdir(root):
        return out
    for dataset in sorted(os.listdir(root)):
        base = os.path.join(root, dataset, f"spc{spc}")
        if not os.path.isdir(base):
            continue
        per: dict = {}
        for seed_dir in sorted(os.listdir(base)):
            for method in sorted(os.listdir(os.path.join(base, seed_dir))):
                p = os.path.join(base, seed_dir, method, "metrics.json")
                if os.path.exists(p):
                    with open(p) as f:
                        m = json.load(f)
                    m.pop("config", None)
                    per.setdefault(method, {"runs": []})["runs"].append(m)
        for method, d in per.items():
            test = np.array([r["test_acc"] for r in d["runs"]])
            val = np.array([r["val_acc"] for r in d["runs"]])
            d.update(
                n_seeds=len(test), seeds=[r["seed"] for r in d["runs"]],
                test_mean=float(test.mean()), test_std=float(test.std(ddof=1)) if len(test) > 1 else 0.0,
                val_mean=float(val.mean()), val_std=float(val.std(ddof=1)) if len(val) > 1 else 0.0,
                model_bits=int(d["runs"][0]["model_bits"]),
                train_seconds_mean=float(np.mean([r["train_seconds"] for r in d["runs"]])),
            )
        out[dataset] = per
    return out


def table_md(res: dict, spc: int) -> str:
    lines = [f"Test accuracy (%) at {spc} training images per class, mean ± std over seeds "
             "(checkpoint chosen on the validation split; eval-mode forward with frozen thresholds).", ""]
    for dataset, per in res.items():
        lines += [f"### {dataset}", "", "| method | test acc | val acc | seeds | model size (kbit) |",
                  "|---|---|---|---|---|"]
        order = [m for m in ("fp", "gsb", "gsb_ramp", "gsb_nokd", "gsb_ste", "bin1") if m in per]
        for m in order:
            d = per[m]
            lines.append(f"| {LABELS.get(m, m)} | {d['test_mean']:.2f} ± {d['test_std']:.2f} | "
                         f"{d['val_mean']:.2f} ± {d['val_std']:.2f} | {d['n_seeds']} | {d['model_bits'] / 1000:.1f} |")
        if "gsb" in per and "fp" in per:
            lines.append("")
            lines.append(f"GSB − FP: {per['gsb']['test_mean'] - per['fp']['test_mean']:+.2f} points (target ≥ −2.0)")
        if "gsb" in per and "bin1" in per:
            lines.append(f"GSB − 1-base binary: {per['gsb']['test_mean'] - per['bin1']['test_mean']:+.2f} points (target ≥ +5.0)")
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(len(res), 1), figsize=(5.5 * max(len(res), 1), 4.2), squeeze=False)
    order = ("fp", "gsb", "gsb_ramp", "gsb_nokd", "gsb_ste", "bin1")
    colors = dict(zip(order, ("black", "tab:green", "tab:olive", "tab:orange", "tab:purple", "tab:blue")))
    for ax, (dataset, per) in zip(axes[0], res.items()):
        methods = [m for m in order if m in per] + [m for m in per if m not in order]
        for i, m in enumerate(methods):
            d = per[m]
            jitter = 1.0 + 0.025 * (i - (len(methods) - 1) / 2)  # binary models share one size: spread them
            ax.errorbar(d["model_bits"] / 1000 * jitter, d["test_mean"], yerr=d["test_std"], fmt="o", capsize=3,
                        color=colors.get(m), label=f"{LABELS.get(m, m)} ({d['n_seeds']} seeds)")
        ax.set_xscale("log")
        ax.set_xlabel("model size (kbit, log scale; binary points spread slightly for legibility)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(root: str, spc: int, results_dir: str = "results", plot_path: str = "docs/accuracy_vs_bits.png") -> dict:
    res = collect(root, spc)
    os.makedirs(results_dir, exist_ok=True)
    for dataset, per in res.items():
        with open(os.path.join(results_dir, f"{dataset}_spc{spc}.json"), "w") as f:
            json.dump(per, f, indent=1)
    with open(os.path.join(results_dir, "table.md"), "w") as f:
        f.write(table_md(res, spc) + "\n")
    plot(res, plot_path)
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m model.results", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--samples-per-class", type=int, default=100)
    p.add_argument("--epochs", type=int, default=None, help="override every config's epochs (quick checks)")
    p.add_argument("--root", default="runs/results", help="run folders (default runs/results)")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--plot", default="docs/accuracy_vs_bits.png")
    p.add_argument("--collect-only", action="store_true", help="only rebuild json/table/plot from finished runs")
    p.add_argument("--progress", action="store_true", help="tqdm bars per run")
    a = p.parse_args(argv)
    if not a.collect_only:
        run_matrix(a.configs, a.methods, a.seeds, a.samples_per_class, a.root, a.epochs, a.progress)
    res = write_outputs(a.root, a.samples_per_class, a.results_dir, a.plot)
    print(table_md(res, a.samples_per_class))
    return 0


if __name__ == "__main__":
    sys.exit(main())
