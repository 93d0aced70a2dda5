"""Sweeps end to end with tiny models: a 2-trial grid, analysis of the stored study, --resume after SIGKILL."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.study.analysis import load_study, study_table, write_report
from mtbert_ray.study.sweep import run_sweep
from tests.conftest import REPO, tiny_experiment

pytestmark = pytest.mark.slow


def _space_file(tmp_path: Path, tiny_models, **extra) -> Path:
    """Teachers and co-finetuning as in the pipeline tests (so the session's co-finetuned teachers are
    reused), teachers on the fly, logits only, one distillation epoch."""
    base = tiny_experiment(tiny_models, tmp_path, loss={"hidden": False}, cache={"enabled": False},
                           distill={"epochs": 1})
    spec = {"name": "tiny", "experiment": base, **extra}
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid_sweep(ray_session, tiny_models, tmp_path_factory, shared_storage):
    tmp = tmp_path_factory.mktemp("sweep")
    space = _space_file(
        tmp, tiny_models,
        variants={"MT-BERT": {}, "w/o weighting": {"loss.weighted": False}},
        space={"variant": {"grid": "all"}},
        search={"searcher": "grid", "seeds": [0]},
    )
    grid, experiment_dir = run_sweep(str(space), storage=str(shared_storage), name="tiny-grid",
                                     mlflow=f"sqlite:///{shared_storage / 'mlflow-tiny-grid.db'}")
    return grid, experiment_dir


def test_grid_sweep_runs_every_trial_and_cofinetunes_once(grid_sweep):
    grid, experiment_dir = grid_sweep
    assert len(grid) == 2 and all(r.error is None for r in grid)
    variants = sorted(r.config["variant"] for r in grid)
    assert variants == ["MT-BERT", "w/o weighting"]
    trained = [not r.metrics["cofinetune_reused"] for r in grid]
    assert sum(trained) <= 1, "the teachers are co-finetuned at most once (and not at all if an earlier test did)"
    keys = {json.loads((Path(r.metrics["run_dir"]) / "result.json").read_text())["stages"]["cofinetune"]["key"] for r in grid}
    assert len(keys) == 1
    for r in grid:
        run = json.loads((Path(r.metrics["run_dir"]) / "result.json").read_text())
        assert run["stages"]["distill"]["metrics"]["accuracy"] == pytest.approx(r.metrics["val_accuracy"])
        assert Path(r.metrics["student_dir"]).is_dir()
    # The last epoch reaches Tune once, in the final report made after the export (the ASHA test covers
    # the per-epoch reports of longer trials).
    assert all(r.metrics["training_iteration"] == 1 and r.metrics["finished"] for r in grid)


def test_the_dry_run_named_the_stage_the_sweep_published(grid_sweep):
    """``--dry-run`` of the same space file computes the stage-1 key the sweep's trials then published (and, with the
    results folder, says it is published and will be reused)."""
    from mtbert_ray.config.space import load_space
    from mtbert_ray.study.dryrun import plan, planned_stages, planned_trials
    from mtbert_ray.study.record import read_sweep_record

    grid, experiment_dir = grid_sweep
    record = read_sweep_record(Path(experiment_dir))
    space = load_space(record.source)
    published = {json.loads((Path(r.metrics["run_dir"]) / "result.json").read_text())["stages"]["cofinetune"]["key"]
                 for r in grid}
    stages = Path(record.storage) / "stages"
    assert set(planned_stages(planned_trials(space), stages).cofinetune) == published
    assert f"cofinetune/{published.pop()} · published, reused" in plan(space, stages)


def test_analysis_reproduces_the_table_of_a_stored_study(grid_sweep, tmp_path):
    grid, experiment_dir = grid_sweep
    report = write_report(experiment_dir, tmp_path / "a")
    again = write_report(grid, tmp_path / "b")  # from the ResultGrid, as in a notebook
    pd.testing.assert_frame_equal(report.table, again.table)
    assert (tmp_path / "a" / "table.md").read_text() == (tmp_path / "b" / "table.md").read_text()
    table = report.table.set_index("row")
    assert list(table.index) == ["MT-BERT", "w/o weighting"]  # the order of the variants
    for r in grid:
        assert table.loc[r.config["variant"], "val_accuracy_mean"] == pytest.approx(100 * r.metrics["val_accuracy"])
        assert table.loc[r.config["variant"], "test_accuracy_mean"] == pytest.approx(100 * r.metrics["test_accuracy"])
        assert table.loc[r.config["variant"], "n"] == 1
    for name in ("table.md", "table.csv", "trials.csv", "chart.png", "best.json"):
        assert (tmp_path / "a" / name).stat().st_size > 0
    best = json.loads((tmp_path / "a" / "best.json").read_text())
    assert best["metrics"]["accuracy"] == max(r.metrics["val_accuracy"] for r in grid)
    assert "MT-BERT" in report.table_markdown and "(1 seed)" in report.table_markdown  # one seed per row: said, not ±0
    assert "MT-BERT − w/o weighting" in report.table_markdown  # the paired comparison of an ablation study
    csv = pd.read_csv(tmp_path / "a" / "table.csv")
    assert csv["test_accuracy_mean"].tolist() == pytest.approx(report.table["test_accuracy_mean"].tolist())


def test_an_archive_of_the_study_restored_elsewhere_gives_the_same_tables_and_bootstrap(grid_sweep, tmp_path):
    """``python -m mtbert_ray.analysis … --archive`` (``archive_sweep``) without the models, ``restore_archive`` under
    another storage: the same table and the same paired bootstrap, read from the restored runs' predictions; a
    second restore leaves the folder alone."""
    from mtbert_ray.cli.analysis import main
    from mtbert_ray.study.archive import restore_archive

    grid, experiment_dir = grid_sweep
    with pytest.raises(SystemExit) as exit_code:
        main([str(experiment_dir), "--out", str(tmp_path / "a"), "--archive", str(tmp_path / "archives")])
    assert exit_code.value.code == 0
    archive = tmp_path / "archives" / f"{Path(experiment_dir).name}.tar.gz"
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert not [n for n in names if n.endswith((".safetensors", ".pkl", ".bin"))], "models and pickles stay out"
    assert any(n.endswith("predictions/test.tsv") for n in names)
    restored = restore_archive(archive, tmp_path / "elsewhere")
    assert restored == tmp_path / "elsewhere" / "sweeps" / Path(experiment_dir).name
    original = write_report(experiment_dir, tmp_path / "a")
    moved = write_report(restored, tmp_path / "b")
    pd.testing.assert_frame_equal(original.table, moved.table)
    assert moved.comparisons["accuracy_boot_low"].notna().all(), "the bootstrap found the restored predictions"
    pd.testing.assert_frame_equal(original.comparisons, moved.comparisons)
    assert all(str(d).startswith(str(restored)) for d in load_study(restored).trials["student_dir"])
    (restored / "marker").write_text("kept")
    assert restore_archive(archive, tmp_path / "elsewhere") is None and (restored / "marker").is_file()


def test_each_trial_reports_how_much_of_its_best_teacher_the_student_keeps(grid_sweep, tmp_path):
    """The best teacher is chosen on validation (the run's result.json), retention = student test ÷ its test; the
    table carries both, also for a study whose trials did not report them (read back from result.json)."""
    import mtbert_ray.study.analysis as analysis

    grid, experiment_dir = grid_sweep
    for r in grid:
        teachers = json.loads((Path(r.metrics["run_dir"]) / "result.json").read_text())["stages"]["cofinetune"]["teachers"]
        best = max(teachers, key=lambda name: teachers[name]["accuracy"])
        assert r.metrics["best_teacher"] == best
        assert r.metrics["best_teacher_test_accuracy"] == pytest.approx(teachers[best]["test"]["accuracy"])
        assert r.metrics["retention"] == pytest.approx(r.metrics["test_accuracy"] / teachers[best]["test"]["accuracy"])
    table = write_report(experiment_dir, tmp_path / "a").table.set_index("row")
    for r in grid:
        assert table.loc[r.config["variant"], "retention_mean"] == pytest.approx(100 * r.metrics["retention"])
    assert "kept of best teacher (%)" in (tmp_path / "a" / "table.md").read_text()
    study = load_study(experiment_dir)
    reported = study.trials.set_index("trial_id")["retention"]
    older = {k: v for k, v in grid[0].metrics.items() if k not in ("best_teacher", "retention")}
    from_record = analysis._best_teacher(older, Path(experiment_dir))
    assert from_record["retention"] == pytest.approx(reported[grid[0].metrics["trial_id"]])


def test_the_row_chosen_on_validation_is_the_trial_validation_picks_per_seed(grid_sweep):
    """analysis.chosen_row: per seed, the finished trial best on validation among every row, with its test; it can be
    compared like any row (here with each arm it chose from)."""
    from mtbert_ray.config.space import CHOSEN_ROW
    from mtbert_ray.study.analysis import comparison_table

    grid, experiment_dir = grid_sweep
    study = load_study(experiment_dir)
    study.record.spec.setdefault("analysis", {})["chosen_row"] = True
    table = study_table(study).set_index("row")
    assert list(table.index)[-1] == CHOSEN_ROW and table.loc[CHOSEN_ROW, "n"] == 1
    best = max(grid, key=lambda r: r.metrics["val_accuracy"])
    assert table.loc[CHOSEN_ROW, "test_accuracy_mean"] == pytest.approx(100 * best.metrics["test_accuracy"])
    pairs = comparison_table(study, [(CHOSEN_ROW, r.config["variant"]) for r in grid], ["accuracy"])
    chosen_from = pairs.set_index("b")
    assert chosen_from.loc[best.config["variant"], "accuracy_diff"] == pytest.approx(0.0)


def test_the_comparisons_bootstrap_the_films_of_the_test_set(grid_sweep, tmp_path):
    """``--group-column movie``: the comparison's bootstrap also resamples rt_polarity's films, read by example id from
    the data's test file (the 64 sentences limit_eval kept keep their ids); a column the file lacks is named."""
    from mtbert_ray.common.errors import DataError
    from mtbert_ray.config import validate_config
    from mtbert_ray.data.sources import load_source, split_column
    from mtbert_ray.study.analysis import groups_of_test_sentences

    grid, experiment_dir = grid_sweep
    study = load_study(experiment_dir)
    groups = groups_of_test_sentences(study, "movie")
    data = validate_config(study.record.base).data
    kept = load_source(data).splits["test"].frame
    sentences = split_column(data, "test", "sentence")
    assert sentences.loc[kept["example_id"]].tolist() == kept["text_a"].tolist(), "ids are rows of the file"
    assert groups.loc[kept["example_id"]].nunique() > 10
    report = write_report(experiment_dir, tmp_path / "films", group_column="movie")
    row = report.comparisons.iloc[0]
    assert row["accuracy_group_boot_low"] <= row["accuracy_diff"] <= row["accuracy_group_boot_high"]
    assert "seeds × groups" in (tmp_path / "films" / "table.md").read_text()
    with pytest.raises(DataError, match="no column 'film'"):
        write_report(experiment_dir, tmp_path / "bad", group_column="film")


def test_a_study_run_in_parts_is_analysed_as_one(grid_sweep, tmp_path):
    """A second sweep folder of the same study adds its trials to the rows (here the same folder twice: n doubles)."""
    grid, experiment_dir = grid_sweep
    alone = write_report(experiment_dir, tmp_path / "one")
    twice = write_report(experiment_dir, tmp_path / "both", parts=(experiment_dir,))
    one, both = alone.table.set_index("row"), twice.table.set_index("row")
    assert list(both["n"]) == [2 * n for n in one["n"]]
    assert list(both["test_accuracy_mean"]) == pytest.approx(list(one["test_accuracy_mean"]))
    # a seed a row finished twice is paired once, as its mean
    assert list(twice.comparisons["pairs"]) == list(alone.comparisons["pairs"]) == [1]
    assert list(twice.comparisons["accuracy_diff"]) == pytest.approx(list(alone.comparisons["accuracy_diff"]))
    # pairs other than the study's own (a later part's space file names more rows): here each one reversed
    pairs = [(b, a) for a, b in zip(alone.comparisons["a"], alone.comparisons["b"])]
    reverse = write_report(experiment_dir, tmp_path / "reverse", comparisons=pairs)
    assert list(zip(reverse.comparisons["a"], reverse.comparisons["b"])) == pairs
    assert list(reverse.comparisons["accuracy_diff"]) == pytest.approx([-d for d in alone.comparisons["accuracy_diff"]])


def test_a_later_part_holding_other_rows_joins_the_table_and_its_comparisons(grid_sweep, tmp_path, monkeypatch):
    """A part whose rows the first sweep does not hold (rows added to the space file later): they follow the
    first part's rows in the table, and a comparison may pair a row of one part with a row of the other. The
    part here is the same folder read again with its rows renamed, so each new row equals its original."""
    import mtbert_ray.study.analysis as analysis

    grid, experiment_dir = grid_sweep
    load_one, loads = analysis._load_one, []

    def second_load_renamed(source):
        study = load_one(source)
        loads.append(source)
        if len(loads) == 2:  # the part
            study.trials["param:variant"] = study.trials["param:variant"] + ", part b"
        return study

    alone = write_report(experiment_dir, tmp_path / "one")
    monkeypatch.setattr(analysis, "_load_one", second_load_renamed)
    pairs = [("MT-BERT, part b", "MT-BERT"), ("MT-BERT, part b", "w/o weighting")]
    report = write_report(experiment_dir, tmp_path / "both", parts=(experiment_dir,), comparisons=pairs)
    table = report.table.set_index("row")
    assert list(table.index) == ["MT-BERT", "w/o weighting", "MT-BERT, part b", "w/o weighting, part b"]
    assert list(table["n"]) == [1, 1, 1, 1]
    assert table.loc["MT-BERT, part b", "test_accuracy_mean"] == pytest.approx(table.loc["MT-BERT", "test_accuracy_mean"])
    assert list(zip(report.comparisons["a"], report.comparisons["b"])) == pairs
    assert list(report.comparisons["pairs"]) == [1, 1], "paired by seed across the parts"
    assert list(report.comparisons["accuracy_diff"]) == pytest.approx([0.0, alone.comparisons["accuracy_diff"].iloc[0]])


def test_every_trial_reaches_mlflow_and_tensorboard(grid_sweep, shared_storage):
    """MLflow (Ray Tune's MLflowLoggerCallback, ``--mlflow``): one run per trial with its parameters and metrics.
    TensorBoard: event files under the sweep folder for every trial (Tune's) and for both stages of each trial."""
    from mlflow.tracking import MlflowClient

    grid, experiment_dir = grid_sweep
    client = MlflowClient(f"sqlite:///{shared_storage / 'mlflow-tiny-grid.db'}")
    experiment = client.get_experiment_by_name("tiny-grid")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert sorted(r.data.params["variant"] for r in runs) == ["MT-BERT", "w/o weighting"]
    by_variant = {r.config["variant"]: r for r in grid}
    for run in runs:
        expected = by_variant[run.data.params["variant"]].metrics
        assert run.data.metrics["val_accuracy"] == pytest.approx(expected["val_accuracy"])
        assert run.data.metrics["test_accuracy"] == pytest.approx(expected["test_accuracy"])
    events = [p.relative_to(experiment_dir) for p in experiment_dir.rglob("events.out.tfevents.*")]
    for r in grid:
        trial = Path(r.metrics["run_dir"]).name
        mine = [str(e) for e in events if trial in str(e)]
        assert any("/distill/" in e for e in mine) and any("/cofinetune" in e for e in mine), mine
    assert sum(1 for e in events if str(e).startswith("trial_driver")) >= 2, "Tune's own per-trial event files"


def test_analysis_of_a_folder_without_a_sweep_is_an_error(tmp_path):
    with pytest.raises(ResultsError, match="not an mtbert-ray sweep folder"):
        load_study(tmp_path)


def _sweep_cmd(*args):
    return [sys.executable, "-m", "mtbert_ray.sweep", *args]


def test_resume_after_the_driver_is_killed_and_the_sweep_moved(ray_session, tiny_models, tmp_path, shared_storage):
    """SIGKILL the sweep driver after its first trial finished, move the sweep folder: --resume completes the others
    in the folder where it now is (the old one is never recreated), reruns nothing that finished, and the best student
    it prints exists."""
    space = _space_file(tmp_path, tiny_models, space={"loss.temperature": {"grid": [1.0, 2.0]}},
                        search={"searcher": "grid", "seeds": [0]})
    storage = shared_storage
    env = {**os.environ, "RAY_ADDRESS": ""}
    env.pop("RAY_ADDRESS")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_sweep_cmd("--space", str(space), "--storage", str(storage), "--name", "tiny-resume"), cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    runs = storage / "sweeps" / "tiny-resume" / "runs"
    try:
        deadline = time.time() + 420
        while time.time() < deadline and not list(runs.glob("*/result.json")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(1)
        finished = list(runs.glob("*/result.json"))
        assert finished, "no trial finished in time"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the killed driver's own Ray processes, and nothing else
        except ProcessLookupError:
            pass
    old = storage / "sweeps" / "tiny-resume"
    moved = storage / "sweeps" / "tiny-moved"
    shutil.move(old, moved)
    runs = moved / "runs"
    before = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/result.json")}
    assert len(before) == 1

    out = subprocess.run(_sweep_cmd("--resume", "--name", "tiny-moved", "--storage", str(storage)), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600, start_new_session=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"was moved from {old}" in out.stdout and "sweep finished: 2 trials (0 errored)" in out.stdout
    assert not old.exists(), "the resumed trial recreated the sweep's old folder"
    best = re.search(r"best student (\S+)", out.stdout).group(1)
    assert Path(best).is_dir() and Path(best).is_relative_to(moved), best
    after = {p.parent.name: p.stat().st_mtime_ns for p in runs.glob("*/result.json")}
    assert len(after) == 2, "every requested trial completed, none duplicated"
    for trial, mtime in before.items():
        assert after[trial] == mtime, f"finished trial {trial} was rerun"
    study = load_study(moved)
    assert sorted(study.trials["param:loss.temperature"]) == [1.0, 2.0] and study.trials["finished"].all()
    assert len(study_table(study)) == 2


def test_ctrl_c_in_the_first_trial_is_a_stop_not_a_success(ray_session, tiny_models, tmp_path, shared_storage):
    """Ctrl-C (SIGINT to the driver's process group, as a terminal sends it) while the first trial runs: the sweep says
    it stopped, names the --resume command and exits 130 — counted from Tune's saved state, not the grid it returns."""
    space = _space_file(tmp_path, tiny_models, space={"loss.temperature": {"grid": [1.0, 3.0]}},
                        search={"searcher": "grid", "seeds": [0], "max_concurrent_trials": 1})
    spec = yaml.safe_load(space.read_text())
    spec["experiment"]["distill"]["epochs"] = 4  # a first trial long enough to be interrupted in
    space.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(_sweep_cmd("--space", str(space), "--storage", str(shared_storage), "--name", "tiny-ctrl-c"), cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    runs = shared_storage / "sweeps" / "tiny-ctrl-c" / "runs"
    try:
        deadline = time.time() + 420
        while time.time() < deadline and not list(runs.glob("*/distill/history.jsonl")):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            time.sleep(0.5)
        assert list(runs.glob("*/distill")), "no trial started in time"
        assert not list(runs.glob("*/result.json")), "the first trial finished before the interrupt; make it longer"
        os.killpg(proc.pid, signal.SIGINT)
        output, _ = proc.communicate(timeout=300)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver's own Ray processes, and nothing else
        except ProcessLookupError:
            pass
    assert proc.returncode == 130, output[-3000:]
    # Tune had made one trial of the two (one at a time): it was running, so it is unfinished — not "1 trials (0 errored)"
    assert "sweep stopped before its end: 0 trials finished, 1 unfinished (0 errored)" in output, output[-3000:]
    assert "continue it with: python -m mtbert_ray.sweep --resume --name tiny-ctrl-c" in output
    assert "sweep finished" not in output


def test_resume_of_a_path_without_a_sweep_is_exit_2(tmp_path):
    out = subprocess.run(_sweep_cmd("--resume", "--name", "nothing", "--storage", str(tmp_path)), cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == f"error: --resume: {tmp_path / 'sweeps' / 'nothing'} holds no sweep to resume"


def test_a_stopped_sweep_counts_its_unfinished_trials(monkeypatch, tmp_path):
    """``trial_counts``: from Tune's saved experiment state (not the grid Ctrl-C returns, which marks an interrupted
    trial terminated): a trial pending or running when the sweep stopped is unfinished, so the sweep says "stopped
    before its end" with the resume command (exit 130), not "finished"."""
    from types import SimpleNamespace

    import mtbert_ray.study.sweep as sweep
    from mtbert_ray.cli.sweep import INTERRUPTED_EXIT

    statuses = ["TERMINATED"] * 5 + ["RUNNING", "ERROR"]
    read = []

    def saved_state(path):
        read.append(path)
        return SimpleNamespace(trials=[SimpleNamespace(status=s) for s in statuses])

    monkeypatch.setattr(sweep.tune, "ExperimentAnalysis", saved_state)
    assert sweep.trial_counts(tmp_path) == (5, 1, 1) and read == [str(tmp_path)]
    statuses[5] = "TERMINATED"
    assert sweep.trial_counts(tmp_path) == (6, 0, 1) and INTERRUPTED_EXIT == 130


def test_the_frontier_of_two_depths_on_two_runtimes_and_the_budget_picker(ray_session, tiny_models, tmp_path, shared_storage):
    """A study of 1- and 2-layer students, then ``analysis --frontier --runtimes torch onnx``: every (student, runtime) and
    the best teacher timed side by side, the Pareto front marked, the plot written; a latency budget picks the row with
    the best validation accuracy inside it and exports it with why it won."""
    import pandas as pd

    from mtbert_ray.cli.analysis import main as analysis_main

    space = _space_file(tmp_path, tiny_models, space={"student.num_layers": {"grid": [1, 2]}},
                        search={"searcher": "grid", "seeds": [0]}, analysis={"rows": "trial"})
    _, experiment_dir = run_sweep(str(space), storage=str(shared_storage), name="tiny-frontier")
    with pytest.raises(SystemExit) as done:
        analysis_main([str(experiment_dir), "--runtimes", "torch", "onnx", "--latency-budget-ms", "1000", "--threads", "1"])
    assert done.value.code == 0
    out = experiment_dir / "analysis" / "frontier"
    table = pd.read_csv(out / "frontier.csv")
    assert len(table) == 4 and set(table["runtime"]) == {"torch", "onnx"} and sorted(set(table["layers"])) == [1, 2]
    assert table["kept"].all() and (table["p50_ms"] > 0).all() and (table["batch32_rows_per_s"] > 0).all()
    assert table["pareto"].any() and table["retention"].between(0, 2).all() and (table["speedup"] > 0).all()
    assert (table["best_teacher_layers"] >= 1).all()  # the teacher's depth beside the student's (retention targets)
    # the teacher's own validation accuracy, which retention = student ÷ teacher divides by
    assert table["best_teacher_val_accuracy"].mul(table["val_retention"]).sub(table["val_accuracy"]).abs().max() < 1e-9
    teachers = pd.read_csv(out / "teachers.csv")
    assert len(teachers) >= 1 and (teachers["p50_ms"] > 0).all()
    assert (out / "frontier.png").stat().st_size > 10_000 and "★" in (out / "frontier.md").read_text()
    chosen = out / "chosen"
    best = table.sort_values(["val_accuracy", "p50_ms"], ascending=[False, True]).iloc[0]
    assert (chosen / "CHOSEN.md").read_text().startswith(f"# Chosen student\n\ntrial {best['trial_id']} ")
    assert (chosen / "config.json").is_file() and (chosen / "model.onnx").is_file()
