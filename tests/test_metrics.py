"""The evaluation metrics (GLUE's per task) against references written out here, and the analysis statistics."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtbert_ray.core.metrics import confusion_matrix, f1_positive, matthews_corrcoef, metrics_from_confusion
from mtbert_ray.study.analysis import Study, comparison_table, mean_interval, study_table, t_critical


def _reference_mcc_binary(y, p):
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(y, p) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(y, p) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(y, p) if a == 1 and b == 0)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def _reference_mcc(y, p, classes):
    """Gorodkin's R_K written with sums over samples (the definition scikit-learn follows)."""
    n = len(y)
    c = sum(1 for a, b in zip(y, p) if a == b)
    t = [sum(1 for a in y if a == k) for k in range(classes)]
    q = [sum(1 for b in p if b == k) for k in range(classes)]
    num = c * n - sum(tk * qk for tk, qk in zip(t, q))
    den = math.sqrt((n * n - sum(qk * qk for qk in q)) * (n * n - sum(tk * tk for tk in t)))
    return num / den if den else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_mcc_and_f1_match_their_definitions(seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (57,), generator=g)
    p = torch.where(torch.rand(57, generator=g) < 0.7, y, 1 - y)
    cm = confusion_matrix(p, y, 2)
    assert matthews_corrcoef(cm) == pytest.approx(_reference_mcc_binary(y.tolist(), p.tolist()), abs=1e-12)
    tp = int(((p == 1) & (y == 1)).sum())
    precision, recall = tp / int((p == 1).sum()), tp / int((y == 1).sum())
    assert f1_positive(cm) == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-12)


def test_multiclass_mcc_and_the_metric_set():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 3, (100,), generator=g)
    p = torch.where(torch.rand(100, generator=g) < 0.6, y, torch.randint(0, 3, (100,), generator=g))
    cm = confusion_matrix(p, y, 3)
    assert matthews_corrcoef(cm) == pytest.approx(_reference_mcc(y.tolist(), p.tolist(), 3), abs=1e-12)
    three = metrics_from_confusion(cm, prefix="val_")
    assert set(three) == {"val_accuracy", "val_macro_f1", "val_mcc", "val_examples"}, "F1 of class 1 only for two classes"
    assert "f1" in metrics_from_confusion(confusion_matrix(p % 2, y % 2, 2))
    constant = confusion_matrix(torch.zeros(10, dtype=torch.long), torch.tensor([0, 1] * 5), 2)
    assert matthews_corrcoef(constant) == 0.0 and f1_positive(constant) == 0.0  # undefined → 0, as scikit-learn


def test_t_critical_values_and_interval():
    assert t_critical(1) == 12.706 and t_critical(4) == 2.776 and t_critical(30) == 2.042
    assert t_critical(60) == pytest.approx(2.000, abs=1e-3) and t_critical(120) == pytest.approx(1.980, abs=1e-3)
    mean, std, half = mean_interval([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0) and half == pytest.approx(4.303 / math.sqrt(3))
    assert mean_interval([5.0]) == (5.0, None, None)


def _study(rows, row_key="variant", comparisons=None):
    trials = pd.DataFrame(rows)
    for column in ("stopped_early", "errored"):
        if column not in trials:
            trials[column] = False
    from mtbert_ray.study.record import SweepRecord

    record = SweepRecord(name="s", source="s.yaml", spec={"variants": {"MT-BERT": {}, "w/o": {}}}, base={}, row_key=row_key,
                         select={"metric": "accuracy", "mode": "max"}, metrics=["accuracy"],
                         comparisons=[tuple(c) for c in comparisons or []], storage=".", experiment_dir=".", created=0.0)
    return Study(Path("."), record, trials)


def _trial(variant, seed, test, val, finished=True, stopped=False):
    return {"trial_id": f"{variant}-{seed}", "status": "TERMINATED", "param:variant": variant, "param:seed": seed,
            "test_accuracy": test if finished else math.nan, "val_accuracy": val, "finished": finished,
            "stopped_early": stopped, "student_dir": "x" if finished else None}


def test_table_and_paired_comparison_over_seeds():
    rows = [_trial("MT-BERT", s, t, t + 0.01) for s, t in [(0, 0.80), (1, 0.82), (2, 0.84)]]
    rows += [_trial("w/o", s, t, t) for s, t in [(0, 0.78), (1, 0.79), (2, 0.83)]]
    rows.append(_trial("w/o", 3, math.nan, 0.5, finished=False, stopped=True))  # stopped early: not averaged
    study = _study(rows, comparisons=[["MT-BERT", "w/o"]])
    table = study_table(study).set_index("row")
    assert table.loc["MT-BERT", "test_accuracy_mean"] == pytest.approx(82.0)
    assert table.loc["MT-BERT", "test_accuracy_std"] == pytest.approx(2.0)
    assert table.loc["w/o", "n"] == 3 and table.loc["w/o", "stopped_early"] == 1
    diff = comparison_table(study).iloc[0]
    assert diff["pairs"] == 3 and diff["accuracy_diff"] == pytest.approx(2.0)  # (2 + 3 + 1) / 3 points
    assert diff["accuracy_ci"] == pytest.approx(t_critical(2) * 1.0 / math.sqrt(3))


def test_a_row_of_one_seed_says_so():
    from mtbert_ray.study.analysis import table_markdown

    study = _study([_trial("MT-BERT", 0, 0.8, 0.8)])
    markdown = table_markdown(study_table(study), study)
    assert "80.00 (1 seed)" in markdown and "±" not in markdown.split("\n")[-1]


def test_selection_metric_defaults_to_the_tasks_main_metric_and_must_be_reported():
    from types import SimpleNamespace

    from mtbert_ray.common.errors import ConfigError
    from mtbert_ray.config import validate_config
    from mtbert_ray.experiment.context import resolve_select_metric, select_metric_name, task_metrics

    def config(**data):
        return validate_config({"teachers": ["t"], "student": {"init_from": "t", "num_layers": 1}, "data": data})

    cola, mrpc, mnli = (config(source="glue", task=t) for t in ("cola", "mrpc", "mnli"))
    assert select_metric_name(cola) == "mcc" and select_metric_name(mrpc) == "f1" and select_metric_name(mnli) == "accuracy"
    assert task_metrics(mrpc) == ["f1", "accuracy"]
    files = config(source="files", path="d", text_fields=["t"])
    assert task_metrics(files) == ["accuracy", "macro_f1"]
    three = SimpleNamespace(metrics=["accuracy", "macro_f1"], num_labels=3)
    macro = files.model_copy(update={"select": files.select.model_copy(update={"metric": "macro_f1"})})
    assert resolve_select_metric(macro, three) == "macro_f1"
    f1 = files.model_copy(update={"select": files.select.model_copy(update={"metric": "f1"})})
    with pytest.raises(ConfigError, match=r"select.metric: 'f1' is not reported for this task \(3 classes\)"):
        resolve_select_metric(f1, three)


def test_progress_lines_say_done_total_rate_and_eta_at_most_every_ten_seconds(monkeypatch, capsys):
    import mtbert_ray.common.progress as progress

    clock = iter([0.0, 1.0, 12.0, 13.0, 30.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    lines = []
    monkeypatch.setattr(progress, "emit", lines.append)
    bar = progress.Progress("[distill] epoch 1/2", total=100, unit="steps", every_s=10, examples_per_unit=32)
    bar.update(10)  # t = 1: too soon
    bar.update(40)  # t = 12: printed
    bar.update(45)  # t = 13: too soon
    bar.update(100)  # t = 30: printed
    assert len(lines) == 2
    assert lines[0] == "[distill] epoch 1/2 40/100 steps (40%) · 106.7 examples/s · ETA 0:18"
    assert lines[1].startswith("[distill] epoch 1/2 100/100 steps (100%)") and "ETA 0:00" in lines[1]
