"""The names metrics and splits travel under, defined once: the epoch loop's reports, ``result.json``, the sweep's
trial table and the analysis build and parse them here, so a renamed split or metric changes in one place.

A reported metric is ``<split prefix><head><metric>``:

- ``val_accuracy`` — the student (one head, ``""``) on validation; ``test_macro_f1`` — on test;
- ``val_teacher1_accuracy`` — teacher 1's head in co-finetuning (``teacher_head(1)``);
- ``val_mean_accuracy`` — co-finetuning's mean over its teachers (``MEAN_HEAD``), which selects its epoch;
- ``teacher_mean_test_accuracy`` — a sweep trial's co-finetuned teachers' mean (``teacher_mean_key``);
- ``best_teacher_test_accuracy`` — its best teacher, chosen on validation (``best_teacher_key``);
- ``val_accuracy_mean`` / ``_std`` / ``_ci`` — the analysis's statistics over a row's seeds (``stat_column``).

Pure names, no imports: the torch-only core uses them too.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any


class Split(str, Enum):
    """The evaluated splits: validation selects, test reports."""

    VALIDATION = "validation"
    TEST = "test"

    @property
    def prefix(self) -> str:
        """The prefix of this split's metrics in reports: ``val_`` or ``test_``."""
        return "val_" if self is Split.VALIDATION else "test_"


#: What every evaluation computes from its confusion matrix (``core.metrics``); ``f1`` only for two classes.
METRICS = ("accuracy", "macro_f1", "mcc", "f1")
BINARY_ONLY = ("f1",)
#: What a files or MIND task reports (a GLUE task: its leaderboard's metrics, ``data.glue_tasks``), main one first.
DEFAULT_METRICS = ("accuracy", "macro_f1")
EXAMPLES = "examples"  # the number of rows an evaluation counted, reported beside its metrics
MEAN_HEAD = "mean_"  # co-finetuning: the mean of a metric over the teachers' heads
#: The label of an unlabelled row (``data.unlabeled``'s transfer text) in shards, caches and batches: no task loss,
#: no correctness weight, and not counted by any evaluation.
NO_LABEL = -1
#: The split of ``data.unlabeled``'s transfer text (label ``NO_LABEL`` throughout): distillation's extra training rows.
UNLABELED = "unlabeled"


def teacher_head(index: int) -> str:
    """The head of teacher ``index`` in co-finetuning's reports and prediction files: ``teacher{index}_``."""
    return f"teacher{index}_"


def metric_key(split: Split | str, metric: str, head: str = "") -> str:
    """``val_accuracy``, ``test_teacher0_mcc``: a metric of one head on one split, as reported."""
    return f"{Split(split).prefix}{head}{metric}"


def best_teacher_key(split: Split | str, metric: str) -> str:
    """A sweep trial's best co-finetuned teacher (chosen on validation): ``best_teacher_test_accuracy``."""
    return f"best_teacher_{metric_key(split, metric)}"


RETENTION = "retention"  # a student's test accuracy ÷ its best teacher's (the teacher chosen on validation)


def teacher_mean_key(split: Split | str, metric: str) -> str:
    """A sweep trial's mean over its co-finetuned teachers: ``teacher_mean_val_accuracy``."""
    return f"teacher_mean_{metric_key(split, metric)}"


def best_key(metric: str) -> str:
    """The best validation value of the selection metric so far in a stage: ``best_val_accuracy``."""
    return f"best_{metric_key(Split.VALIDATION, metric)}"


def stat_column(split: Split | str, metric: str, statistic: str) -> str:
    """An analysis column over a row's seeds: ``test_accuracy_mean`` (statistic: mean, std, ci, …)."""
    return f"{metric_key(split, metric)}_{statistic}"


def scores_from(report: Mapping[str, Any], split: Split | str, head: str = "",
                names: Iterable[str] = (*METRICS, EXAMPLES)) -> dict[str, Any]:
    """The ``names`` of one head on one split found in a report, without their prefix: ``{"accuracy": …}``."""
    return {n: report[metric_key(split, n, head)] for n in names if metric_key(split, n, head) in report}


def computed_metrics(num_labels: int) -> list[str]:
    """The metrics an evaluation of a task of ``num_labels`` classes computes."""
    return [n for n in METRICS if num_labels == 2 or n not in BINARY_ONLY]
