"""Pieces shared by the stages' per-worker code: seeding, precision, batches, evaluation, checkpoint files."""
from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mtbert_ray.common.errors import ResourcesError
from mtbert_ray.core.metrics import confusion_matrix

TRAINING_STATE = "training_state.json"
OPTIMIZER_FILE = "optimizer.pt"
SCALER_FILE = "grad_scaler.pt"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int, epoch: int) -> int:
    """Seed of one rank's epoch (dropout masks): distinct per rank and epoch, reproducible on resume."""
    return (seed * 1_000_003 + rank * 10_007 + epoch * 101) % (2**31)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for bf16 / fp16 on the device's type; a no-op for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def training_device(use_gpu: bool) -> torch.device:
    """The device a stage in this process runs on: CUDA when ``use_gpu`` (a one-line error naming the node when no CUDA
    device is visible — never a silent fall-back to the CPU), else the CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ResourcesError(
            f"resources.use_gpu: no CUDA device is visible on node {socket.gethostname()} (torch {torch.__version__}, "
            f"CUDA build {torch.version.cuda or 'none'}); check the node's driver and CUDA_VISIBLE_DEVICES, "
            "or set resources.use_gpu: false")
    return torch.device("cuda", torch.cuda.current_device())


def configure_device(device: torch.device, threads: float | None) -> None:
    """TF32 matmuls on GPUs that have them; on a CPU worker, torch threads = its CPUs."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif threads:
        torch.set_num_threads(max(1, int(threads)))


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
def confusion_matrices(
    predict: Callable[[dict[str, torch.Tensor]], torch.Tensor],
    batches: Iterator[dict[str, torch.Tensor]],
    num_labels: int,
    heads: int = 1,
    device: torch.device | None = None,
    on_predictions: Callable[[dict[str, torch.Tensor], torch.Tensor], None] | None = None,
) -> list[torch.Tensor]:
    """Confusion matrices (summed over all workers) of ``heads`` predictors.

    ``predict(batch)`` returns logits [N, B, C] (N = ``heads``). Unlabelled rows (label −1) are
    not counted; ``on_predictions(batch, logits)`` sees every batch (e.g. to write predictions).
    """
    cms = torch.zeros(heads, num_labels, num_labels, dtype=torch.long, device=device)
    for batch in batches:
        logits = predict(batch)
        if on_predictions is not None:
            on_predictions(batch, logits)
        labelled = batch["label"] >= 0
        if bool(labelled.any()):
            for i in range(heads):
                cms[i] += confusion_matrix(logits[i].argmax(-1)[labelled], batch["label"][labelled], num_labels)
    all_reduce_sum(cms)
    return [cm.cpu() for cm in cms]


@contextlib.contextmanager
def checkpoint_dir() -> Iterator[Path]:
    """A temporary local folder to assemble a checkpoint in (copied to storage on ``report``)."""
    with tempfile.TemporaryDirectory(prefix="mtbert-ckpt-") as tmp:
        yield Path(tmp)


def save_training_state(folder: Path, optimizer: torch.optim.Optimizer, state: Mapping[str, Any],
                        scaler: Any | None = None) -> None:
    torch.save(optimizer.state_dict(), folder / OPTIMIZER_FILE)
    if scaler is not None and scaler.is_enabled():
        torch.save(scaler.state_dict(), folder / SCALER_FILE)
    (folder / TRAINING_STATE).write_text(json.dumps(dict(state), indent=2, default=float))


def read_training_state(folder: Path) -> dict[str, Any]:
    return json.loads((folder / TRAINING_STATE).read_text())


def load_training_state(folder: Path, optimizer: torch.optim.Optimizer | None, scaler: Any | None = None) -> dict[str, Any]:
    """Training state of a checkpoint. The optimizer state is read with ``weights_only=True`` and lands on
    each parameter's device (``Optimizer.load_state_dict`` casts it): build the optimizer on the model
    *after* the model is on its device."""
    if optimizer is not None and (folder / OPTIMIZER_FILE).exists():
        optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True, map_location="cpu"))
    if scaler is not None and (folder / SCALER_FILE).exists():
        scaler.load_state_dict(torch.load(folder / SCALER_FILE, weights_only=True))
    return read_training_state(folder)


def maybe_inject_fault(stage: str, epoch: int, step: int, rank: int = 0) -> None:
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
    if (stage, rank, epoch, step) != (f_stage, f_rank, f_epoch, f_step):
        return
    if marker is not None:
        if marker.exists():
            return
        marker.write_text("fired")
    time.sleep(float(os.environ.get("MTBERT_FAULT_DELAY", "5")))
    os._exit(17)
