"""Train one model of the family: ``python -m model.train --config C --method M --seed S``.

Methods: ``fp`` (full precision, also the teacher), ``gsb`` (GSB + hard
distillation), ``gsb_nokd`` (GSB, no distillation), ``gsb_ste`` (GSB with
plain STE gradients), ``gsb_ramp`` (GSB with our derived "ramp" gradients),
``bin1`` (one binary base everywhere, XNOR-Net/BWN scales, STE, with
distillation).

Recipe for the quantized methods: initialise from the FP model of the same
config/seed/samples (trained first, automatically, into the sibling folder
``fp`` when ``--teacher`` is not given), then stage 1 (MLP weights binary,
``stage1_fraction`` of the epochs), then stage 2 (everything quantized,
initialised from stage 1's best-on-validation weights).  Each stage: AdamW,
linear warmup then cosine, weight decay on matrices only.  Hard distillation
(DeiT): ``0.5*CE(z_cls, y) + 0.5*CE(z_dist, argmax teacher(x))``; without a
teacher both heads learn ``y``.  Inference averages both heads.  Two optional
terms distil inner tensors too: ``train.kd_hidden`` times the block outputs'
MSE (:func:`hidden_distillation_loss`) and ``train.kd_attn`` times the
attention maps' KL (:func:`attention_distillation_loss`).

The checkpoint kept (``best.pt``) is the one with the best *validation*
accuracy in the final stage; the test split is evaluated once, at the end,
on that checkpoint, in eval (deploy) mode.  ``last.pt`` is written every
epoch; ``--resume`` continues from it (model, optimiser, epoch, RNG states).
Outputs in ``--out``: ``last.pt``, ``best.pt``, ``metrics.json``, ``log.jsonl``.

Distributed: ``torchrun --nproc_per_node=N -m model.train ...`` (or across
machines with torchrun's ``--nnodes``/rendezvous flags; ``--out`` must then
be on a filesystem every machine shares) trains with DistributedDataParallel,
gloo on CPU and NCCL on GPU (the device is ``cuda`` when there is one).
Every process draws the same global batch of ``batch_size`` images and
trains on its share (image ``i`` of the batch goes to process ``i mod N``);
the loss is weighted so that the averaged gradient is the global batch's,
as on one process.  Only process 0 writes checkpoints, logs and metrics.
Two things stay per process, as with BatchNorm without synchronisation: the
quantizers' batch statistics (GSB stages) and the drop-path masks; with
neither (``fp``, ``drop_path: 0``) a run equals a single-process run with
the same global batch up to float rounding.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import pickle
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from .config import Config, load_config, upgrade_checkpoint_config
from .data import Splits, load_splits
from .vit import KD_METHODS, METHODS, Taps, ViT, build_model, method_kind, model_bits


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def augment(x: torch.Tensor, shift: int, flip: bool, gen: torch.Generator) -> torch.Tensor:
    """Random translation by up to ``shift`` pixels (zero padding) and optional h-flip."""
    b, c, h, w = x.shape
    if shift > 0:
        xp = F.pad(x, (shift, shift, shift, shift))
        off = torch.randint(0, 2 * shift + 1, (b, 2), generator=gen)
        x = torch.stack([xp[i, :, off[i, 0]:off[i, 0] + h, off[i, 1]:off[i, 1] + w] for i in range(b)])
    if flip:
        m = torch.rand(b, generator=gen) < 0.5
        x = torch.where(m[:, None, None, None], x.flip(-1), x)
    return x


class Processes:
    """This process's place in a (possibly one-process) training run and its device."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device | None = None) -> None:
        self.rank, self.world = rank, world
        self.device = device or torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process is here (after process 0 wrote a file the others read)."""
        if self.world > 1:
            dist.barrier()

    def sync_buffers(self, model: torch.nn.Module) -> None:
        """Process 0's buffers (the quantizers' running statistics) on every process, before evaluating."""
        if self.world > 1:
            for b in model.buffers():
                dist.broadcast(b, 0)

    def mean(self, value: torch.Tensor) -> float:
        """The mean of ``value`` over the processes."""
        if self.world > 1:
            value = value.detach().clone()
            dist.all_reduce(value)
        return float(value) / self.world


def processes() -> Processes:
    """Join torchrun's process group when launched by it (``WORLD_SIZE`` > 1), else one process.

    gloo on CPU, NCCL with one GPU per process (``LOCAL_RANK``) when CUDA is
    there; a single process trains on ``cuda`` when there is one.
    """
    cuda = torch.cuda.is_available()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes(device=torch.device("cuda" if cuda else "cpu"))
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return Processes(dist.get_rank(), dist.get_world_size(), device)


def local_share(idx: torch.Tensor, procs: Processes) -> tuple[torch.Tensor, float]:
    """This process's positions in a global batch of ``len(idx)`` and the weight of its mean loss.

    The weight ``world * n_local / n_global`` makes the processes' averaged
    gradient the global batch's mean, also when the batch does not split
    evenly.  A process left without an image (a last batch smaller than the
    world) runs one image at weight 0, since every process must take part.
    """
    share = torch.arange(procs.rank, len(idx), procs.world)
    if len(share) == 0:
        return torch.arange(1), 0.0
    return share, procs.world * len(share) / len(idx)


@torch.no_grad()
def evaluate(model: ViT, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, batch: int = 500) -> float:
    """Accuracy (%) of the eval-mode (deploy) forward."""
    was = model.training
    model.eval()
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(y), batch):
        correct += int((model.predict(x[i:i + batch].to(device)).argmax(-1).cpu() == y[i:i + batch]).sum())
    model.train(was)
    return 100.0 * correct / max(len(y), 1)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))


def make_optimizer(model: ViT, lr: float, wd: float) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim == 2 else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)


def distillation_loss(z: torch.Tensor, teacher_logits: torch.Tensor, kd: str = "hard",
                      temperature: float = 1.0) -> torch.Tensor:
    """The distillation head's loss against the teacher's logits (training only).

    ``hard`` (DeiT, the default): ``CE(z, argmax teacher)``.  ``soft`` (Hinton):
    ``T^2 KL(softmax(teacher/T) || softmax(z/T))``, batch mean.
    """
    if kd == "hard":
        return F.cross_entropy(z, teacher_logits.argmax(-1))
    if kd == "soft":
        t = temperature
        return F.kl_div(F.log_softmax(z / t, -1), F.log_softmax(teacher_logits / t, -1), reduction="batchmean",
                        log_target=True) * t * t
    raise ValueError(f"kd must be 'hard' or 'soft', got {kd!r}")


def _one_per_block(student: list[torch.Tensor], teacher: list[torch.Tensor], what: str) -> None:
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{what} distillation needs one tensor per block on both sides, got "
                         f"{len(student)} and {len(teacher)}")


def hidden_distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of the MSE between the student's and the teacher's block
    outputs, each layer-normalised without affine terms, so that the loss
    compares the shape of the residual stream and not its scale (the
    quantized student's stream grows differently from the FP teacher's)."""
    _one_per_block(student, teacher, "hidden-state")

    def norm(t: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(t, t.shape[-1:])
    return sum(F.mse_loss(norm(s), norm(t)) for s, t in zip(student, teacher)) / len(student)


def attention_distillation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over blocks of ``KL(teacher || student)`` between attention rows
    (softmax probabilities before the student's attention quantizer), averaged
    over images, heads and query tokens."""
    _one_per_block(student, teacher, "attention-map")

    def kl(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1).mean()
    return sum(kl(s, t) for s, t in zip(student, teacher)) / len(student)


def inner_taps(cfg: Config) -> Taps:
    """The inner tensors the config's distillation terms compare (none when both weights are 0)."""
    return Taps(states=[] if cfg.train.kd_hidden > 0 else None, maps=[] if cfg.train.kd_attn > 0 else None)


def stage_plan(cfg: Config, method: str, epochs: int | None) -> list[tuple[int, int]]:
    """``[(stage, epochs), ...]``: fp is one stage 0; quantized methods stages 1 and 2."""
    if method == "fp":
        return [(0, epochs or cfg.train.fp_epochs or cfg.train.epochs)]
    total = epochs or cfg.train.epochs
    e1 = max(1, int(round(cfg.train.stage1_fraction * total)))
    return [(1, e1), (2, max(1, total - e1))]


def load_checkpoint(path: str) -> dict:
    """A checkpoint's contents, unpickled with ``weights_only=True``.

    Only tensors, dicts, lists, tuples, strings, numbers and ``None`` load, so a
    hostile ``.pt`` (a pickle whose objects run code on load) is refused
    instead of executed.  Every checkpoint :func:`train` writes holds only those.
    Its config has the current key names (:func:`model.config.upgrade_checkpoint_config`).
    """
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: refused, the checkpoint holds objects other than tensors, "
                         f"containers, strings and numbers ({str(e).splitlines()[0]})") from None
    if isinstance(ck, dict) and isinstance(ck.get("config"), dict):
        ck["config"] = upgrade_checkpoint_config(ck["config"])
    return ck


def load_model(path: str) -> ViT:
    """Rebuild a trained model from a ``best.pt``/``last.pt`` checkpoint (eval mode)."""
    from .config import from_dict

    ck = load_checkpoint(path)
    cfg = from_dict(ck["config"])
    model = build_model(cfg.model, ck["method"])
    model.load_state_dict(ck["model"])
    return model.eval()


def check_image_shape(cfg: Config, shape: tuple[int, ...]) -> None:
    """The dataset's images (C, H, W) are the model's ``in_channels`` x ``image_size`` x ``image_size``, or a ValueError."""
    want = (cfg.model.in_channels, cfg.model.image_size, cfg.model.image_size)
    if tuple(shape) != want:
        where = cfg.data.path or cfg.data.dataset
        raise ValueError(f"{where}: images are (C, H, W) = {tuple(shape)}, but the config's model takes {want} "
                         "(model.in_channels, model.image_size)")


def _fp_dir(out: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(out.rstrip("/"))), "fp")


def train(
    cfg: Config,
    method: str,
    seed: int,
    out: str,
    teacher_path: str | None = None,
    epochs: int | None = None,
    resume: bool = False,
    progress: bool = True,
    max_steps: int | None = None,
) -> dict:
    """Train one run; returns the metrics dict (also written to ``out/metrics.json``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    from tqdm import tqdm

    procs = processes()
    progress = progress and procs.main
    os.makedirs(out, exist_ok=True)
    splits: Splits = load_splits(cfg.data.source(), cfg.data.samples_per_class, cfg.data.val_per_class, seed)
    check_image_shape(cfg, splits.train.x.shape[1:])
    cfg.model.num_classes = splits.num_classes
    set_seed(seed)
    model = build_model(cfg.model, method)
    kind, _ = method_kind(method)
    if procs.world > 1:
        torch.manual_seed(seed + 7919 * procs.rank)  # the same init everywhere, a drop-path stream per process

    teacher = None
    if kind != "fp":
        if teacher_path is None:
            fp_out = _fp_dir(out)
            teacher_path = os.path.join(fp_out, "best.pt")
            if not os.path.exists(os.path.join(fp_out, "metrics.json")):
                print(f"[train] no FP teacher at {fp_out}; training it first", file=sys.stderr)
                train(copy.deepcopy(cfg), "fp", seed, fp_out, progress=progress, max_steps=max_steps)
        teacher = load_model(teacher_path).to(procs.device)
        teacher.requires_grad_(False)
        fp_state = {k: v for k, v in teacher.state_dict().items()}
        missing, unexpected = model.load_state_dict(fp_state, strict=False)
        model.to(procs.device)
        if unexpected:
            raise RuntimeError(f"teacher has parameters the student lacks: {unexpected[:5]}")
        if method not in KD_METHODS:
            teacher = None

    xtr = torch.from_numpy(splits.train.x)
    ytr = torch.from_numpy(splits.train.y)
    gen = torch.Generator().manual_seed(seed + 1000)
    plan = stage_plan(cfg, method, epochs)
    bs = cfg.train.batch_size
    steps_per_epoch = math.ceil(len(ytr) / bs)

    state = {"stage_idx": 0, "epoch": 0, "best_val": -1.0, "step": 0}
    log_path = os.path.join(out, "log.jsonl")
    last_path = os.path.join(out, "last.pt")
    opt = None
    model.to(procs.device)
    if resume and os.path.exists(last_path):
        ck = load_checkpoint(last_path)
        model.set_stage(plan[ck["state"]["stage_idx"]][0], cfg.train.stage1_scope)
        model.load_state_dict(ck["model"])
        state = ck["state"]
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        if procs.world > 1:  # process 0's stream was saved: a fresh drop-path stream per process
            torch.manual_seed(seed + 7919 * procs.rank + 104729 * state["step"])
        opt = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
        opt.load_state_dict(ck["opt"])
        print(f"[train] resumed from {last_path} at stage {state['stage_idx']} epoch {state['epoch']}", file=sys.stderr)
    else:
        if resume:
            print(f"[train] --resume: no {last_path}, starting fresh", file=sys.stderr)
        procs.barrier()  # every process has looked for last.pt before process 0 writes one
        if procs.main and os.path.exists(log_path):
            os.remove(log_path)

    t0 = time.time()
    total_steps_done = 0
    for si in range(state["stage_idx"], len(plan)):
        stage, n_ep = plan[si]
        if opt is None or si != state["stage_idx"]:
            # a new stage starts (or a fresh run): from the previous stage's best weights
            if si > 0 and si != state.get("loaded_stage", -1):
                procs.barrier()
                prev = load_checkpoint(os.path.join(out, f"stage{plan[si - 1][0]}_best.pt"))
                model.set_stage(plan[si - 1][0], cfg.train.stage1_scope)
                model.load_state_dict(prev["model"])
            model.set_stage(stage, cfg.train.stage1_scope)
            opt = make_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
            state.update(stage_idx=si, epoch=0, best_val=-1.0, step=0)
        # a stage fixes which parameters train: one DDP wrapper per stage; stage 1 leaves the
        # quantizers of the layers it keeps in float without gradients
        net = DistributedDataParallel(model, find_unused_parameters=stage == 1) if procs.world > 1 else model
        base_lr = cfg.train.lr if stage == 0 else (cfg.train.quant_lr or cfg.train.lr)
        total = n_ep * steps_per_epoch
        warm = cfg.train.warmup_epochs * steps_per_epoch
        model.train()
        bar = tqdm(range(state["epoch"], n_ep), desc=f"{method} s{seed} stage{stage}", disable=not progress,
                   file=sys.stderr, dynamic_ncols=True)
        for ep in bar:
            perm = torch.randperm(len(ytr), generator=gen)
            tot_loss, nb = 0.0, 0
            for i in range(0, len(ytr), bs):
                idx = perm[i:i + bs]
                # every process augments the whole global batch: the generator stays the same everywhere
                x = augment(xtr[idx], cfg.data.shift, cfg.data.flip, gen)
                share, weight = local_share(idx, procs)
                x, y = x[share].to(procs.device), ytr[idx][share].to(procs.device)
                for g in opt.param_groups:
                    g["lr"] = lr_at(state["step"], total, warm, base_lr)
                taps = inner_taps(cfg) if teacher is not None else None
                z, zd = net(x, taps)
                if zd is None:
                    loss = F.cross_entropy(z, y)
                elif teacher is not None:
                    teacher_taps = inner_taps(cfg)
                    with torch.no_grad():
                        tz = teacher.predict(x, teacher_taps)
                    loss = 0.5 * F.cross_entropy(z, y) + 0.5 * distillation_loss(zd, tz, cfg.train.kd,
                                                                                  cfg.train.kd_temperature)
                    if taps.states is not None:
                        loss = loss + cfg.train.kd_hidden * hidden_distillation_loss(taps.states, teacher_taps.states)
                    if taps.maps is not None:
                        loss = loss + cfg.train.kd_attn * attention_distillation_loss(taps.maps, teacher_taps.maps)
                else:
                    loss = 0.5 * F.cross_entropy(z, y) + 0.5 * F.cross_entropy(zd, y)
                loss = loss * weight
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                state["step"] += 1
                total_steps_done += 1
                tot_loss += procs.mean(loss.detach())
                nb += 1
                if max_steps is not None and total_steps_done >= max_steps:
                    break
            state["epoch"] = ep + 1
            rec = {"stage": stage, "epoch": ep + 1, "loss": tot_loss / max(nb, 1), "time": time.time() - t0}
            if (ep + 1) % cfg.train.eval_every == 0 or ep + 1 == n_ep:
                procs.sync_buffers(model)
                val = evaluate(model, splits.val.x, splits.val.y)
                rec["val_acc"] = val
                if val > state["best_val"]:
                    state["best_val"] = val
                    if procs.main:
                        torch.save({"model": model.state_dict(), "config": cfg.to_dict(), "method": method,
                                    "seed": seed, "stage": stage, "epoch": ep + 1, "val_acc": val},
                                   os.path.join(out, f"stage{stage}_best.pt"))
            bar.set_postfix(loss=f"{rec['loss']:.3f}", val=f"{rec.get('val_acc', float('nan')):.1f}",
                            best=f"{state['best_val']:.1f}")
            state["loaded_stage"] = si
            if procs.main:
                with open(log_path, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": dict(state),
                            "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "config": cfg.to_dict(),
                            "method": method, "seed": seed}, last_path)
            if max_steps is not None and total_steps_done >= max_steps:
                break
        if max_steps is not None and total_steps_done >= max_steps:
            break

    final_stage = plan[-1][0] if max_steps is None else plan[state["stage_idx"]][0]
    procs.barrier()
    best = load_checkpoint(os.path.join(out, f"stage{final_stage}_best.pt"))
    model.set_stage(final_stage, cfg.train.stage1_scope)
    model.load_state_dict(best["model"])
    model.eval()
    metrics = {
        "method": method, "dataset": cfg.data.dataset, "seed": seed,
        "samples_per_class": cfg.data.samples_per_class, "val_per_class": cfg.data.val_per_class,
        "val_acc": evaluate(model, splits.val.x, splits.val.y),
        "test_acc": evaluate(model, splits.test.x, splits.test.y),
        "best_epoch": best["epoch"], "stage": final_stage, "plan": plan,
        "model_bits": model_bits(model), "n_train": len(splits.train), "n_val": len(splits.val),
        "n_test": len(splits.test), "teacher": teacher_path if method in KD_METHODS else None,
        "train_seconds": time.time() - t0, "processes": procs.world, "config": cfg.to_dict(),
    }
    if procs.main:
        torch.save(best, os.path.join(out, "best.pt"))
        with open(os.path.join(out, "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=1)
    procs.barrier()  # the files are there for every process (a student loads its teacher's best.pt next)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m model.train",
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:3]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help="YAML config (configs/digits.yaml, configs/fashion_mnist.yaml)")
    p.add_argument("--method", required=True, choices=METHODS, help="what to train (see above)")
    p.add_argument("--seed", type=int, default=0, help="seeds the splits, the init, the batches (default 0)")
    p.add_argument("--samples-per-class", type=int, default=None,
                   help="training images per class (default: the config's; 0 = all)")
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (total over stages)")
    p.add_argument("--out", required=True, help="output folder (checkpoints, log, metrics.json)")
    p.add_argument("--teacher", default=None,
                   help="FP checkpoint for init and distillation (default: <out>/../fp/best.pt, trained if missing)")
    p.add_argument("--resume", action="store_true", help="continue from <out>/last.pt")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    if a.samples_per_class is not None:
        cfg.data.samples_per_class = a.samples_per_class or None
    m = train(cfg, a.method, a.seed, a.out, a.teacher, a.epochs, a.resume, not a.no_progress)
    if dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({k: m[k] for k in ("method", "dataset", "seed", "val_acc", "test_acc", "model_bits")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
