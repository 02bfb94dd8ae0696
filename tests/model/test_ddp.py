"""Distributed training: 2 CPU processes (gloo) equal one process with the same global batch; resume works.

The tolerance: the processes average their gradients (a gloo all-reduce)
where one process sums over the whole batch, so the float rounding differs
in the last bits, and AdamW carries it a little further each step; after
the 14 steps here the weights agree to 1e-5.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from model.config import from_dict
from model.train import load_checkpoint, train

TINY = {
    "data": {"dataset": "digits", "samples_per_class": 10, "val_per_class": 5, "shift": 1},
    "model": {"image_size": 8, "patch_size": 2, "dim": 16, "depth": 1, "heads": 2, "drop_path": 0.0},
    # 100 training images in global batches of 15: 8 + 7 images per process, and a last batch of 10
    "train": {"fp_epochs": 2, "batch_size": 15, "lr": 0.003, "warmup_epochs": 1},
}
STEPS_PER_EPOCH = 7


def _worker(rank: int, world: int, port: int, root: str) -> None:
    """What torchrun would start: one process of the group, its rank in the environment."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    train(from_dict(TINY), "fp", 0, os.path.join(root, "ddp"), progress=False)
    # interrupted after one epoch, then resumed
    train(from_dict(TINY), "fp", 0, os.path.join(root, "resumed"), progress=False, max_steps=STEPS_PER_EPOCH)
    train(from_dict(TINY), "fp", 0, os.path.join(root, "resumed"), progress=False, resume=True)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(out: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(os.path.join(out, "last.pt"))["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ddp"))
    mp.start_processes(_worker, args=(2, _free_port(), root), nprocs=2, start_method="spawn")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(from_dict(TINY), "fp", 0, os.path.join(root, "single"), progress=False)
    finally:
        torch.set_num_threads(n)
    return root


def test_two_processes_equal_one_with_the_same_global_batch(runs):
    ddp, single = _weights(os.path.join(runs, "ddp")), _weights(os.path.join(runs, "single"))
    for name in single:
        assert torch.allclose(ddp[name], single[name], rtol=0, atol=1e-5), name
    logs = [[json.loads(line) for line in open(os.path.join(runs, d, "log.jsonl"))] for d in ("ddp", "single")]
    assert len(logs[0]) == 2  # written once, by process 0
    assert [r["loss"] for r in logs[0]] == pytest.approx([r["loss"] for r in logs[1]], abs=1e-5)
    metrics = [json.load(open(os.path.join(runs, d, "metrics.json"))) for d in ("ddp", "single")]
    assert metrics[0]["processes"] == 2 and metrics[1]["processes"] == 1
    assert metrics[0]["val_acc"] == metrics[1]["val_acc"] and metrics[0]["test_acc"] == metrics[1]["test_acc"]


def test_a_resumed_distributed_run_equals_the_uninterrupted_one(runs):
    resumed, ddp = _weights(os.path.join(runs, "resumed")), _weights(os.path.join(runs, "ddp"))
    for name in ddp:
        assert torch.equal(resumed[name], ddp[name]), name
