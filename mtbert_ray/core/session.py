"""Where the epoch loop runs, as the loop sees it: ``StageSession``.

The loop (``core.loop``) asks its session for its rank, device, the batches of each split, the latest checkpoint to
resume from, the module to train (DDP-wrapped or not) and ``report(metrics, checkpoint)``. The implementations — Ray
Train workers, or the calling process fed by Ray Data — are in ``mtbert_ray.distributed.sessions``; a user's own loop
(or ``tools.device_check``) can implement it with plain PyTorch.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbert_ray.core.collate import PadCollate

SCORE = "selection_score"  # reported by the loop: the selection metric on improving epochs, else NO_SCORE
NO_SCORE = -1e30


@dataclass
class StageRun:
    """A finished Train stage: the checkpoint selected on validation and the metrics it was reported with."""

    best_checkpoint: Path
    best_metrics: dict[str, Any]
    storage: Path  # <storage_path>/<name>


class StageSession:
    """What the epoch loop needs from where it runs."""

    rank: int = 0
    world_size: int = 1

    def device(self, use_gpu: bool) -> torch.device:
        raise NotImplementedError

    def batches(self, split: str, batch_size: int, collate: PadCollate, device: torch.device,
                shuffle: tuple[int, int] | None = None) -> Iterable[dict[str, torch.Tensor]]:
        """Padded batches of this rank's share of ``split`` on ``device``; ``shuffle=(seed, epoch)``: the training
        order of that epoch (seeded, the same on a resumed run)."""
        raise NotImplementedError

    def has_dataset(self, split: str) -> bool:
        raise NotImplementedError

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module the loop trains: DDP-wrapped on Ray Train workers, itself in process."""
        return module

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        raise NotImplementedError
