"""Per-report metrics of a stage, kept as JSON lines beside its checkpoints (and as TensorBoard scalars).

Ray Train keeps only the metrics of the checkpoints it retains (best and latest); the history
keeps every epoch's report so learning curves, per-epoch timings and resumed attempts can be
read back later (``read_history``). ``HistoryWriter`` appends one report; in-process stages call it
directly, Ray Train stages through ``train.ray_callbacks.MetricsHistory`` (a ``ray.train.UserCallback``
in the Train controller, which writes to the run's storage path). Needs no Ray.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"
TENSORBOARD_DIR = "tensorboard"


class HistoryWriter:
    """Appends a report's metrics as one JSON line to ``path``; numeric metrics also as TensorBoard scalars
    under ``tensorboard_dir`` (tensorboardX, when installed), keyed by epoch.

    Each line also holds ``time`` (seconds since the epoch) and ``checkpoint`` (its path or null).
    A resumed run appends to the same file, so an epoch that ran twice appears twice; readers that
    want one row per epoch keep the last (``read_history(..., last_per_epoch=True)``).
    """

    def __init__(self, path: str | os.PathLike, tensorboard_dir: str | os.PathLike | None = None, tag: str = "") -> None:
        self.path = str(path)
        self.tensorboard_dir = str(tensorboard_dir) if tensorboard_dir else None
        self.tag = tag
        self._writer = None  # opened on the first report, where the writer runs (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_writer": None}

    def append(self, metrics: Mapping[str, Any], checkpoint_path: str | None) -> None:
        row = {**metrics, "time": time.time(), "checkpoint": checkpoint_path}
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(row, default=str) + "\n"
        if _ends_mid_line(path):
            line = "\n" + line  # a line torn by a crash stays a line of its own
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
        if self.tensorboard_dir:
            if self._writer is None:
                self._writer = tensorboard_writer(self.tensorboard_dir)
            if self._writer is not None:
                add_scalars(self._writer, metrics, self.tag)


def tensorboard_writer(folder: str | os.PathLike):
    """tensorboardX's ``SummaryWriter`` for ``folder`` (None without tensorboardX, which Ray Tune installs)."""
    try:  # deferred: tensorboardX is optional (Ray Tune installs it)
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(folder), flush_secs=5)


def add_scalars(writer, metrics: Mapping[str, Any], tag: str = "") -> None:
    """Numeric metrics of one report as TensorBoard scalars at step ``metrics['epoch']``, flushed."""
    step = int(metrics.get("epoch", 0))
    for key, value in metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("epoch", "start_epoch"):
            writer.add_scalar(f"{tag}/{key}" if tag else key, value, step)
    writer.flush()


def history_to_tensorboard(history: str | os.PathLike, folder: str | os.PathLike, tag: str) -> int:
    """A stage's ``history.jsonl`` (one row per epoch) as TensorBoard scalars in ``folder``; returns the rows written."""
    rows = read_history(history, last_per_epoch=True) if Path(history).is_file() else []
    writer = tensorboard_writer(folder) if rows else None
    if writer is None:
        return 0
    for row in rows:
        add_scalars(writer, row, tag)
    writer.close()
    return len(rows)


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
