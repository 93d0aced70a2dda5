"""Ray Train callbacks of the orchestration layer (the epoch loop and its history need no Ray)."""
from __future__ import annotations

import os
from typing import Any

import ray.train

from mtbert_ray.core.history import HistoryWriter


class MetricsHistory(ray.train.UserCallback):
    """``HistoryWriter`` as a Ray Train callback: rank 0's metrics of every ``ray.train.report``."""

    def __init__(self, path: str | os.PathLike, tensorboard_dir: str | os.PathLike | None = None, tag: str = "") -> None:
        self.writer = HistoryWriter(path, tensorboard_dir, tag)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if metrics:
            self.writer.append(metrics[0], getattr(checkpoint, "path", None))
