"""Where a stage's epoch loop runs: Ray Train workers (``TorchTrainer``) or the calling process.

- ``RayTrainSession`` — inside ``TorchTrainer`` workers: ``ray.train.get_dataset_shard``,
  ``get_checkpoint``, ``report``; Ray keeps the best and the latest checkpoint, restarts workers
  (``max_failures``) and waits for resources (``worker_start_timeout_s``).
- ``InProcessSession`` — the same loop in the calling process (``resources.execution``; auto for one
  worker without a GPU), with no worker group to start: checkpoints are written to the same
  storage path with the same retention (best by the selection score, and the latest), a rerun
  resumes from the latest, every report goes to the history (and to Tune inside a trial).
  Ray Train 2.60's own local mode (``ScalingConfig(num_workers=0)``) keeps only the last report in
  memory — no persisted checkpoints, callbacks or resume — so it cannot replace this.

Both read their splits as Ray datasets (``distributed.loader``); ``distributed.train.run_stage`` picks one.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from mtbert_ray.core.collate import PadCollate
from mtbert_ray.core.history import HistoryWriter
from mtbert_ray.core.session import NO_SCORE, SCORE, StageRun, StageSession
from mtbert_ray.core.training import training_device
from mtbert_ray.distributed.loader import batches_of
from mtbert_ray.store.files import atomic_write_text

CHECKPOINT_INDEX = "checkpoints.json"


class RayTrainSession(StageSession):
    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def device(self, use_gpu: bool) -> torch.device:
        return ray.train.torch.get_device()

    def batches(self, split: str, batch_size: int, collate: PadCollate, device: torch.device,
                shuffle: tuple[int, int] | None = None):
        return batches_of(ray.train.get_dataset_shard(split), batch_size, collate, device, shuffle)

    def has_dataset(self, split: str) -> bool:
        try:
            return ray.train.get_dataset_shard(split) is not None
        except (KeyError, ValueError, AssertionError):
            return False

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(module)  # every trainable parameter is used in forward: no unused-parameter search

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None)


class InProcessSession(StageSession):
    """The loop in this process; checkpoints in ``<storage_path>/<name>/checkpoint_<epoch>`` (best + latest kept)."""

    def __init__(self, run_folder: Path, datasets: Mapping[str, Any], history: HistoryWriter,
                 on_report: Sequence[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.run_folder = run_folder
        self.datasets = dict(datasets)
        self.history = history
        self.on_report = list(on_report)

    def device(self, use_gpu: bool) -> torch.device:
        return training_device(use_gpu)

    def batches(self, split: str, batch_size: int, collate: PadCollate, device: torch.device,
                shuffle: tuple[int, int] | None = None):
        return batches_of(self.datasets[split], batch_size, collate, device, shuffle)

    def has_dataset(self, split: str) -> bool:
        return split in self.datasets

    # ---- checkpoints ----------------------------------------------------------------------------
    def index(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.run_folder / CHECKPOINT_INDEX).read_text())
        except (OSError, ValueError):
            return []

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        entries = self.index()
        yield (self.run_folder / entries[-1]["name"]) if entries else None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        path = None
        if checkpoint is not None:
            name = f"checkpoint_{int(metrics.get('epoch', 0)):06d}"
            tmp = self.run_folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copytree(checkpoint, tmp)
            final = self.run_folder / name
            if final.exists():  # the same epoch ran again after a crash: the new one replaces it
                shutil.rmtree(final)
            os.rename(tmp, final)
            entries = [e for e in self.index() if e["name"] != name]
            entries.append({"name": name, "metrics": metrics})
            best = max(entries, key=lambda e: e["metrics"].get(SCORE, NO_SCORE))
            keep = {best["name"], entries[-1]["name"]}
            for entry in entries:
                if entry["name"] not in keep:
                    shutil.rmtree(self.run_folder / entry["name"], ignore_errors=True)
            atomic_write_text(self.run_folder / CHECKPOINT_INDEX,
                              json.dumps([e for e in entries if e["name"] in keep], indent=2, default=float))
            path = str(final)
        self.history.append(metrics, path)
        for callback in self.on_report:
            callback(metrics)

    def result(self) -> StageRun:
        entries = self.index()
        if not entries:
            raise RuntimeError(f"{self.run_folder}: the stage reported no checkpoint")
        best = max(entries, key=lambda e: e["metrics"].get(SCORE, NO_SCORE))
        return StageRun(self.run_folder / best["name"], dict(best["metrics"]), self.run_folder)


