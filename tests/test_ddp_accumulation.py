"""Gradient accumulation under DDP keeps every rank's copy identical — also when an epoch's micro-batches do not
fill its last step (two gloo processes, torch alone: the loop's ``Optimization`` is the code under test), and the
CUDA device rule: ``use_gpu`` with no visible GPU is an error, never a silent CPU run."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtbert_ray.common.errors import ResourcesError
from mtbert_ray.core.loop import Optimization
from mtbert_ray.core.training import training_device

MICRO_BATCHES = 5  # per rank and epoch, with 2 per step: the fifth is a partly filled step
EPOCHS = 2


class _Step:
    """The part of a loop Step that ``Optimization.micro_step`` calls."""

    def loss(self, module, batch):
        return {"loss": torch.nn.functional.mse_loss(module(batch["x"]), batch["y"])}


def _checksums(module: torch.nn.Module) -> list[float]:
    return [float(p.detach().double().sum()) for p in module.parameters()]


def _worker(rank: int, world: int, port: int, fix: bool, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(module)
    optimization = Optimization(torch.optim.Adam(module.parameters(), lr=0.05), grad_accum_steps=2, world_size=world)
    if not fix:  # the behaviour before: flush() applied each rank's own, never-averaged gradient
        optimization.unsynced = False
        original = optimization.micro_step

        def micro_step(step, train_module, batch):
            terms = original(step, train_module, batch)
            optimization.unsynced = False
            return terms

        optimization.micro_step = micro_step
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data, as a data-parallel shard
    sums = []
    for _ in range(EPOCHS):
        for _ in range(MICRO_BATCHES):
            x = torch.randn(3, 4, generator=generator)
            optimization.micro_step(_Step(), ddp, {"x": x, "y": x.sum(-1, keepdim=True)})
        optimization.flush()
        sums.append(_checksums(module))
    out[rank] = sums
    dist.destroy_process_group()


def _run(fix: bool) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(2, port, fix, out), nprocs=2, join=True)
    return dict(out)


@pytest.mark.slow
def test_ranks_stay_identical_with_a_partly_filled_last_step():
    """2 ranks, ``grad_accum_steps: 2``, 5 micro-batches per epoch: identical parameter checksums on both ranks after
    every epoch; without the end-of-epoch all-reduce they drift apart (the test can fail)."""
    fixed = _run(fix=True)
    assert fixed[0] == fixed[1]
    broken = _run(fix=False)
    assert broken[0] != broken[1]


def test_use_gpu_without_a_visible_gpu_is_an_error_naming_the_node(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ResourcesError, match=rf"resources.use_gpu: no CUDA device is visible on node {socket.gethostname()}"):
        training_device(True)
    assert training_device(False).type == "cpu"
