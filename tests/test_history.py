"""The per-epoch metrics history a stage keeps beside its checkpoints (``core/history.py``)."""
from __future__ import annotations

import pickle
from types import SimpleNamespace

from mtbert_ray.core.history import read_history
from mtbert_ray.distributed.callbacks import MetricsHistory


def test_every_report_is_one_line_with_rank_0_metrics_and_the_checkpoint(tmp_path):
    path = tmp_path / "run" / "history.jsonl"
    callback = pickle.loads(pickle.dumps(MetricsHistory(path)))  # Ray ships it to the Train controller
    callback.after_report(None, [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.1}], SimpleNamespace(path="/c/1"))
    callback.after_report(None, [{"epoch": 2, "val_accuracy": 0.75}], None)
    rows = read_history(path)
    assert [(r["epoch"], r["val_accuracy"], r["checkpoint"]) for r in rows] == [(1, 0.5, "/c/1"), (2, 0.75, None)]
    assert rows[0]["time"] <= rows[1]["time"]


def test_a_resumed_run_appends_and_last_per_epoch_keeps_the_latest_attempt(tmp_path):
    path = tmp_path / "history.jsonl"
    callback = MetricsHistory(path)
    for epoch, start, acc in [(1, 0, 0.5), (2, 0, 0.6), (2, 1, 0.7), (3, 1, 0.8)]:  # epoch 2 ran twice
        callback.after_report(None, [{"epoch": epoch, "start_epoch": start, "val_accuracy": acc}], None)
    with open(path, "a") as handle:
        handle.write('{"epoch": 4, "val_acc')  # a write torn by a crash
    assert len(read_history(path)) == 4
    callback.after_report(None, [{"epoch": 4, "start_epoch": 3, "val_accuracy": 0.9}], None)  # the next attempt
    assert len(read_history(path)) == 5
    latest = read_history(path, last_per_epoch=True)
    assert [(r["epoch"], r["val_accuracy"]) for r in latest] == [(1, 0.5), (2, 0.7), (3, 0.8), (4, 0.9)]
