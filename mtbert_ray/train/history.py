"""Per-report metrics of a Ray Train stage, kept as JSON lines beside its checkpoints.

Ray Train keeps only the metrics of the checkpoints it retains (best and latest); the history
keeps every epoch's report so learning curves, per-epoch timings and resumed attempts can be
read back later (``read_history``). It is a ``ray.train.UserCallback``: it runs in the Train
controller, which writes to the run's storage path.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import ray.train

HISTORY_FILE = "history.jsonl"


class MetricsHistory(ray.train.UserCallback):
    """Appends rank 0's metrics of every ``ray.train.report`` as one JSON line to ``path``.

    Each line also holds ``time`` (seconds since the epoch) and ``checkpoint`` (its path or null).
    A resumed run appends to the same file, so an epoch that ran twice appears twice; readers that
    want one row per epoch keep the last (``read_history(..., last_per_epoch=True)``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        row = {**metrics[0], "time": time.time(), "checkpoint": getattr(checkpoint, "path", None)}
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, default=str) + "\n"
        if _ends_mid_line(path):
            line = "\n" + line  # a line torn by a crash stays a line of its own
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)


def _ends_mid_line(path: Path) -> bool:
    """Whether the file's last byte is not a newline (False for a missing or empty file)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def read_history(path: str | os.PathLike, last_per_epoch: bool = False) -> list[dict[str, Any]]:
    """The rows of a history file in order (a torn last line, from a crash mid-write, is skipped);
    with ``last_per_epoch`` one row per ``epoch`` value, the latest attempt's, ordered by epoch."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    if last_per_epoch:
        by_epoch = {row["epoch"]: row for row in rows if "epoch" in row}
        rows = [by_epoch[e] for e in sorted(by_epoch)]
    return rows
