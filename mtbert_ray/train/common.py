"""Pieces shared by the per-worker training loops: seeding, batches, evaluation, checkpoints."""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mtbert_ray.data.loader import PadCollate
from mtbert_ray.train.metrics import confusion_matrix, metrics_from_confusion

TRAINING_STATE = "training_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def progress(message: str) -> None:
    """One progress line from a Train worker, shown once in the driver's output.

    Ray Train patches ``print`` in its workers to write to stdout *and* to its logger, and both
    reach the driver (every line twice); the process's own stdout (``sys.__stdout__``) is
    streamed to the driver once.
    """
    print(message, file=sys.__stdout__ or sys.stdout, flush=True)


def world() -> tuple[int, int]:
    """(rank, world size) of this Train worker (0, 1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper."""
    return model.module if hasattr(model, "module") else model


def shuffle_buffer(batch_size: int) -> int:
    return max(1000, 16 * batch_size)


def iterate_batches(
    shard,
    batch_size: int,
    collate: PadCollate,
    device: torch.device,
    shuffle_seed: int | None = None,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of a Ray Data shard (``get_dataset_shard``), padded per batch, on ``device``."""
    kwargs: dict[str, Any] = {"batch_size": batch_size, "collate_fn": collate, "device": device}
    if shuffle_seed is not None:
        kwargs.update(local_shuffle_buffer_size=shuffle_buffer(batch_size), local_shuffle_seed=shuffle_seed)
    yield from shard.iter_torch_batches(**kwargs)


class TimedBatches:
    """Wraps a batch iterator and adds up the seconds spent waiting for batches (input pipeline)."""

    def __init__(self, batches) -> None:
        self._it = iter(batches)
        self.wait_seconds = 0.0

    def __iter__(self) -> "TimedBatches":
        return self

    def __next__(self):
        started = time.perf_counter()
        try:
            return next(self._it)
        finally:
            self.wait_seconds += time.perf_counter() - started


@torch.no_grad()
def evaluate(
    predict: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batches: Iterator[dict[str, torch.Tensor]],
    num_labels: int,
    heads: int = 1,
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Confusion matrices (summed over all workers) of ``heads`` predictors.

    ``predict(batch)`` returns logits [B, C] (one predictor) or [N, B, C] (N = ``heads``).
    """
    cms = torch.zeros(heads, num_labels, num_labels, dtype=torch.long, device=device)
    for batch in batches:
        logits = predict(batch)
        if logits.dim() == 2:
            logits = logits.unsqueeze(0)
        for i in range(heads):
            cms[i] += confusion_matrix(logits[i].argmax(-1), batch["label"], num_labels)
    all_reduce_sum(cms)
    return [cm.cpu() for cm in cms]


def named_metrics(cms: list[torch.Tensor], names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for cm, name in zip(cms, names):
        out.update(metrics_from_confusion(cm, prefix=name))
    return out


def device_for_worker() -> torch.device:
    try:
        import ray.train.torch

        return ray.train.torch.get_device()
    except Exception:  # outside Ray Train
        return torch.device("cpu")


@contextmanager
def checkpoint_dir() -> Iterator[Path]:
    """A temporary local folder to assemble a checkpoint in (Ray uploads it on ``report``)."""
    with tempfile.TemporaryDirectory(prefix="mtbert-ckpt-") as tmp:
        yield Path(tmp)


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    (folder / TRAINING_STATE).write_text(json.dumps(dict(state), indent=2))


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """Training state of a checkpoint; the optimizer state is read with ``weights_only=True``."""
    if optimizer is not None and (folder / OPTIMIZER_FILE).exists():
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    return json.loads((folder / TRAINING_STATE).read_text())


def maybe_inject_fault(stage: str, epoch: int, step: int) -> None:
    """Test hook: ``MTBERT_FAULT=stage:rank:epoch:step[:marker]`` makes that rank exit there, once.

    The optional marker file records that the fault fired, so the restarted run continues.
    The rank waits ``MTBERT_FAULT_DELAY`` seconds (default 5) before exiting: Ray Train's
    controller collects reports at its 2 s health checks, and a worker that dies sooner
    after reporting takes its last checkpoint with it (a real crash comes much later).
    """
    spec = os.environ.get("MTBERT_FAULT")
    if not spec:
        return
    parts = spec.split(":")
    f_stage, f_rank, f_epoch, f_step = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
    marker = Path(parts[4]) if len(parts) > 4 else None
    if (stage, world()[0], epoch, step) != (f_stage, f_rank, f_epoch, f_step):
        return
    if marker is not None:
        if marker.exists():
            return
        marker.write_text("fired")
    import time

    time.sleep(float(os.environ.get("MTBERT_FAULT_DELAY", "5")))
    os._exit(17)

