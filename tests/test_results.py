"""Results a paper reader can trust (tiny models, CPU): selection on validation and scores on test, GLUE's
unlabelled test split as a submission file, and early stopping that stops only the losers."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from mtbert_ray.config import validate_config
from mtbert_ray.core.history import HISTORY_FILE, read_history
from mtbert_ray.core.metrics import confusion_matrix, macro_f1
from mtbert_ray.deploy.classifier import StudentClassifier
from mtbert_ray.experiment.pipeline import run_experiment
from mtbert_ray.study.analysis import load_study, write_report
from mtbert_ray.study.sweep import run_sweep
from tests import data_fixtures as fx
from tests.conftest import tiny_experiment

pytestmark = pytest.mark.slow


def test_glue_test_split_without_labels_becomes_the_benchmarks_submission_file(ray_session, tiny_models, tmp_path):
    folder = fx.write_sst2_tsv(tmp_path / "glue" / "SST-2", n=40)
    raw = tiny_experiment(tiny_models, tmp_path, distill={"epochs": 1})
    raw["data"] = {"source": "glue", "task": "sst2", "path": str(folder), "max_length": 32, "cache_dir": str(tmp_path / "cache")}
    result = run_experiment(validate_config(raw), storage=tmp_path / "results")
    assert result.student.test is None and all(t.test is None for t in result.teachers.values())
    assert "no labels" in result.test_note and result.select["metric"] == "accuracy"
    submission = Path(result.predictions)
    assert submission.name == "SST-2.tsv" and submission.parent == result.run_dir / "predictions"
    with open(submission, newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t"))
    assert rows[0] == ["index", "prediction"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2, 3] and {r[1] for r in rows[1:]} <= {"0", "1"}  # GLUE's labels
    teacher_file = result.run_dir / "predictions" / "teacher1" / "SST-2.tsv"
    assert len(teacher_file.read_text().splitlines()) == 5, "each selected teacher's predictions, the same way"
    saved = json.loads((result.run_dir / "result.json").read_text())
    assert saved["predictions"] == str(submission) and saved["stages"]["distill"]["test"] is None


def _learnable(folder: Path, train: int = 96, validation: int = 32) -> Path:
    """Six sentences the tiny tokenizers know, three positive and three negative, repeated: a student with a
    useful learning rate separates them within an epoch, one with a negligible rate stays at chance."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("validation", validation), ("test", validation)):
        pd.DataFrame({"text": [fx.POS[i % 3] if i % 2 else fx.NEG[i % 3] for i in range(n)],
                      "label": [i % 2 for i in range(n)]}).to_parquet(folder / f"{split}.parquet")
    return folder


@pytest.fixture(scope="module")
def asha_sweep(ray_session, tiny_models, tmp_path_factory, shared_storage):
    """Four trials of three epochs under ASHA (grace 1, reduction 2), ranked and selected on validation macro-F1:
    two learn (a useful learning rate), two cannot (a negligible one) and are the losers ASHA must stop."""
    tmp = tmp_path_factory.mktemp("asha")
    base = tiny_experiment(tiny_models, tmp, loss={"hidden": False, "distill": False}, cache={"enabled": False},
                           distill={"epochs": 3, "batch_size": 16}, select={"metric": "macro_f1"})
    base["data"].update(path=str(_learnable(tmp / "data")), text_fields=["text"], limit_train=None, limit_eval=None)
    spec = {"name": "tiny-asha", "experiment": base,
            "space": {"distill.lr": {"grid": [1e-2, 1e-9, 3e-3, 1e-10]}},
            "search": {"searcher": "grid", "scheduler": "asha", "grace_period": 1, "reduction_factor": 2, "seeds": [0]}}
    path = tmp / "space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    grid, experiment_dir = run_sweep(str(path), storage=str(shared_storage), name="tiny-asha")
    return grid, experiment_dir


def test_asha_stops_only_losers_and_every_finished_trial_exports_and_reports(asha_sweep):
    grid, experiment_dir = asha_sweep
    study = load_study(experiment_dir)
    trials = study.trials
    assert len(trials) == 4 and not trials["errored"].any()
    stopped, finished = trials[trials["stopped_early"]], trials[trials["finished"]]
    assert len(stopped) >= 1, "ASHA stopped no trial: the test needs one loser"
    assert len(finished) >= 1 and len(stopped) + len(finished) == 4
    for _, trial in finished.iterrows():
        assert Path(trial["student_dir"]).is_dir() and not pd.isna(trial["test_macro_f1"]) and trial["epoch"] == 3
    for _, trial in stopped.iterrows():
        assert pd.isna(trial["student_dir"]) and pd.isna(trial["test_macro_f1"]) and trial["epoch"] < 3
    report = write_report(experiment_dir, experiment_dir / "analysis-test")
    assert report.best["trial_id"] in set(finished["trial_id"]), "a trial stopped early was chosen as best"
    assert report.best["selected_by"] == "val_macro_f1"
    assert int(report.table["stopped_early"].sum()) == len(stopped)
    assert "(stopped early)" in report.table_markdown


def test_a_sweep_ranked_on_macro_f1_exports_the_checkpoint_best_by_macro_f1(asha_sweep):
    grid, experiment_dir = asha_sweep
    finished = [r for r in grid if r.metrics.get("finished")]
    val = pd.read_parquet(Path(load_study(experiment_dir).record.base["data"]["path"]) / "validation.parquet")
    for r in finished:
        run_dir = Path(r.metrics["run_dir"])
        history = read_history(run_dir / "distill" / HISTORY_FILE, last_per_epoch=True)
        scores = [h["val_macro_f1"] for h in history]
        best_epoch = scores.index(max(scores)) + 1  # the first epoch that reached the best macro-F1
        assert r.metrics["best_epoch"] == best_epoch and r.metrics["val_macro_f1"] == pytest.approx(max(scores))
        model = StudentClassifier.from_pretrained(r.metrics["student_dir"])
        predicted = torch.tensor([int(p.label) for p in model.predict(val["text"].tolist())])
        exported = macro_f1(confusion_matrix(predicted, torch.tensor(val["label"].tolist()), 2))
        assert exported == pytest.approx(r.metrics["val_macro_f1"], abs=1e-9), "the export is not the checkpoint best by macro-F1"


def test_a_teacher_below_its_student_is_said(capsys):
    from mtbert_ray.experiment.pipeline import teachers_below_student
    from mtbert_ray.experiment.results import ModelScores

    class Result:
        select = {"metric": "accuracy", "mode": "max"}
        student = ModelScores({"accuracy": 0.76}, None, 1)
        teachers = {"L6": ModelScores({"accuracy": 0.729}, None, 1), "MPNet": ModelScores({"accuracy": 0.91}, None, 1)}

    assert teachers_below_student(Result()) == ["L6"]
    out = capsys.readouterr().out
    assert "warning: teacher L6 has validation accuracy 0.7290, below its student's 0.7600" in out and "MPNet" not in out


def test_paired_bootstrap_counts_test_sampling_and_seeds():
    """The interval of a paired difference widens with fewer sentences (test sampling) and with seeds that disagree,
    and covers the true difference of a known simulation."""
    import numpy as np

    from mtbert_ray.study.analysis import paired_bootstrap

    rng = np.random.default_rng(0)
    # a is right on 80 % of sentences, b on 78 %: the true difference is +2 points
    def diffs(seeds: int, sentences: int, spread: float) -> np.ndarray:
        rows = []
        for _ in range(seeds):
            shift = rng.normal(0, spread)
            a = rng.random(sentences) < 0.80 + shift
            b = rng.random(sentences) < 0.78
            rows.append(a.astype(float) - b.astype(float))
        return np.stack(rows)

    low, high = paired_bootstrap(diffs(5, 8_000, 0.0))
    assert low < 2.0 < high and high - low < 2.0
    small_low, small_high = paired_bootstrap(diffs(5, 400, 0.0))
    assert small_high - small_low > 2 * (high - low), "fewer test sentences: a wider interval"
    noisy_low, noisy_high = paired_bootstrap(diffs(5, 8_000, 0.03))
    assert noisy_high - noisy_low > 2 * (high - low), "seeds that disagree: a wider interval"


def test_the_grouped_bootstrap_resamples_whole_groups():
    """Sentences of one film move together: where a film's sentences agree, the interval over films is wider than the
    one over sentences; where every sentence is its own group, the two agree."""
    import numpy as np

    from mtbert_ray.study.analysis import paired_bootstrap

    rng = np.random.default_rng(1)
    films = np.repeat(np.arange(40), 25)  # 40 films × 25 sentences
    film_effect = rng.normal(0, 0.6, 40)[films]  # a is better on some films, worse on others
    diffs = np.stack([np.clip(np.round(film_effect + rng.normal(0, 0.3, films.size)), -1, 1) for _ in range(3)])
    by_sentence = paired_bootstrap(diffs)
    by_film = paired_bootstrap(diffs, groups=films)
    assert by_film[1] - by_film[0] > 2 * (by_sentence[1] - by_sentence[0])
    mean = 100 * diffs.mean()
    assert by_film[0] < mean < by_film[1]
    alone = paired_bootstrap(diffs, groups=np.arange(films.size))
    assert alone[1] - alone[0] == pytest.approx(by_sentence[1] - by_sentence[0], rel=0.15)


def test_the_best_teacher_is_chosen_on_validation_and_retention_is_measured_on_test():
    from mtbert_ray.experiment.results import ExperimentResult, ModelScores

    result = ExperimentResult.__new__(ExperimentResult)
    result.select = {"metric": "accuracy", "mode": "max"}
    result.teachers = {"L6": ModelScores({"accuracy": 0.80}, {"accuracy": 0.90}, 1),  # best on test, not on validation
                       "MPNet": ModelScores({"accuracy": 0.85}, {"accuracy": 0.88}, 1)}
    result.student = ModelScores({"accuracy": 0.79}, {"accuracy": 0.836}, 1)
    assert result.best_teacher() == "MPNet"
    assert result.retention() == pytest.approx(0.836 / 0.88)
    result.select = {"metric": "accuracy", "mode": "min"}
    assert result.best_teacher() == "L6"
    result.select = {"metric": "accuracy", "mode": "max"}
    result.teachers = {"tiny-bert": ModelScores({"accuracy": 0.5}, {"accuracy": 0.5}, 1),  # a tie: the run's first
                       "tiny-roberta": ModelScores({"accuracy": 0.5}, {"accuracy": 0.6}, 1)}
    assert result.best_teacher() == "tiny-bert"
    result.student = ModelScores({"accuracy": 0.79}, None, 1)
    assert result.retention() is None


def test_a_teacher_far_below_the_best_teacher_is_said(capsys):
    from mtbert_ray.experiment.pipeline import say_teachers, teachers_far_below_best
    from mtbert_ray.experiment.results import ExperimentResult, ModelScores

    result = ExperimentResult.__new__(ExperimentResult)
    result.select = {"metric": "accuracy", "mode": "max"}
    result.teachers = {"L3": ModelScores({"accuracy": 0.72}, {"accuracy": 0.71}, 1),
                       "L6": ModelScores({"accuracy": 0.79}, {"accuracy": 0.80}, 1),
                       "MPNet": ModelScores({"accuracy": 0.88}, {"accuracy": 0.89}, 1)}
    result.student = ModelScores({"accuracy": 0.80}, {"accuracy": 0.801}, 1)
    assert teachers_far_below_best(result) == ["L3", "L6"]
    out = capsys.readouterr().out
    assert "warning: teacher L3 has validation accuracy 0.7200, 16.0 points below the best teacher MPNet" in out
    say_teachers(result)
    out = capsys.readouterr().out
    assert "MPNet 0.8800 (best)" in out and "keeps 90.0 % of MPNet's test accuracy" in out
    assert teachers_far_below_best(result, points=10.0) == ["L3"]
