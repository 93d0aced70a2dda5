"""The one vocabulary of metric and split names (``mtbert_ray.common.metric_names``): the strings stored results already
hold, and no module that builds them by hand."""
from __future__ import annotations

import re

from mtbert_ray.common.metric_names import (
    MEAN_HEAD,
    Split,
    best_key,
    computed_metrics,
    metric_key,
    scores_from,
    stat_column,
    teacher_head,
    teacher_mean_key,
)
from tests.conftest import REPO


def test_the_names_stored_results_use():
    assert metric_key(Split.VALIDATION, "accuracy") == "val_accuracy" and metric_key("test", "mcc") == "test_mcc"
    assert metric_key(Split.TEST, "macro_f1", teacher_head(1)) == "test_teacher1_macro_f1"
    assert metric_key(Split.VALIDATION, "accuracy", MEAN_HEAD) == "val_mean_accuracy"
    assert teacher_mean_key(Split.TEST, "accuracy") == "teacher_mean_test_accuracy"
    assert best_key("accuracy") == "best_val_accuracy" and stat_column(Split.TEST, "f1", "ci") == "test_f1_ci"
    assert computed_metrics(2) == ["accuracy", "macro_f1", "mcc", "f1"] and computed_metrics(3) == ["accuracy", "macro_f1", "mcc"]


def test_scores_of_one_head_on_one_split():
    report = {"val_accuracy": 0.8, "val_examples": 10, "test_accuracy": 0.7, "val_teacher0_accuracy": 0.9}
    assert scores_from(report, Split.VALIDATION) == {"accuracy": 0.8, "examples": 10}
    assert scores_from(report, Split.VALIDATION, teacher_head(0)) == {"accuracy": 0.9}
    assert scores_from(report, "test") == {"accuracy": 0.7}


def test_no_module_builds_a_metric_name_by_hand():
    pattern = re.compile(r"""["'](val|test)_(accuracy|macro_f1|mcc|f1|teacher|mean)|f["'](val|test|best_val)_|["']teacher_mean_|f["']teacher\{""")
    offenders = [f"{path.relative_to(REPO)}:{n}" for path in sorted((REPO / "mtbert_ray").rglob("*.py"))
                 if path.name != "metric_names.py"
                 for n, line in enumerate(path.read_text().splitlines(), start=1) if pattern.search(line)]
    assert offenders == [], "build metric names with mtbert_ray.common.metric_names"
