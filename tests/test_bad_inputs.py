"""The bad-input catalogue: every malformed config, data file, space file or argument a user can
give gets exit status 2 and exactly one line naming the field or file and what was expected — no
traceback — and leaves the results already in the storage folder untouched.

Each case calls a command-line entry point in-process (``main(argv)``), as ``python -m ...`` does;
``docs/errors.md`` lists the messages.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests import data_fixtures as fx
from tests.conftest import REPO, tiny_experiment
from tests.tiny_models import make_tiny_student


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with its sha256 (the results a user already has)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


class Case:
    """One malformed input: ``setup(ws)`` writes files and returns argv for ``cli``; stderr must match ``expected``."""

    def __init__(self, cli: str, setup: Callable[["Workspace"], list[str]], expected: str) -> None:
        self.cli, self.setup, self.expected = cli, setup, expected


class Workspace:
    """A storage folder holding earlier results, a valid experiment YAML and a valid data folder."""

    def __init__(self, tmp_path: Path, tiny_models: dict[str, str]) -> None:
        self.tmp, self.models = tmp_path, tiny_models
        self.storage = tmp_path / "results"
        earlier = self.storage / "runs" / "earlier-run"
        earlier.mkdir(parents=True)
        (earlier / "result.json").write_text(json.dumps({"stages": {"distill": {"metrics": {"accuracy": 0.81}}}}))
        (earlier / "config.yaml").write_text("name: earlier\n")
        (self.storage / "sweeps" / "done").mkdir(parents=True)
        (self.storage / "sweeps" / "done" / "mtbert_sweep.json").write_text("{}")
        self.data = fx.write_files(tmp_path / "data", "csv")
        self.config = self.write_experiment()

    def experiment(self, **sections) -> dict:
        cfg = tiny_experiment(self.models, self.tmp, **sections)
        cfg["data"].update(path=str(self.data), text_fields=["text"], limit_train=None, limit_eval=None)
        return cfg

    def write_experiment(self, name: str = "exp.yaml", cfg: dict | None = None, **sections) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(cfg if cfg is not None else self.experiment(**sections)))
        return path

    def run(self, *sets: str, config: Path | None = None) -> list[str]:
        argv = ["--config", str(config or self.config), "--storage", str(self.storage)]
        for s in sets:
            argv += ["--set", s]
        return argv

    def data_file(self, split: str, text: str | bytes) -> None:
        target = self.data / f"{split}.csv"
        target.write_bytes(text) if isinstance(text, bytes) else target.write_text(text)

    def space(self, text: str, name: str = "space.yaml") -> Path:
        (self.tmp / "_rt_polarity_base.yaml").write_text((REPO / "tune_spaces" / "_rt_polarity_base.yaml").read_text())
        path = self.tmp / name
        path.write_text(text)
        return path

    def sweep(self, *extra: str) -> list[str]:
        return ["--storage", str(self.storage), *extra]


def _missing_split(ws: Workspace) -> list[str]:
    (ws.data / "validation.csv").unlink()
    return ws.run()


def _student_export_without_weights(ws: Workspace) -> list[str]:
    folder = ws.tmp / "not-a-student"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return ["--model", str(folder), "a fine film"]


def _run_dir_of_another_experiment(ws: Workspace) -> list[str]:
    return [*ws.run(), "--run-dir", str(ws.storage / "runs" / "earlier-run")]


def _student(ws: Workspace, name: str = "student") -> Path:
    """A small exported student (1 layer of the tiny BERT, 2 labels), converted to the layout a run exports."""
    from mtbert_ray.deploy.export import convert_student

    with contextlib.redirect_stderr(io.StringIO()):
        return convert_student(make_tiny_student(ws.tmp / f"{name}-format1", ws.models["bert"]), ws.tmp / name)


def _predict_on_damaged_student(damage: Callable[[Path], None], format1: bool = False) -> Callable[[Workspace], list[str]]:
    def setup(ws: Workspace) -> list[str]:
        folder = make_tiny_student(ws.tmp / "student", ws.models["bert"]) if format1 else _student(ws)
        damage(folder)
        return ["--model", str(folder), "a fine film"]

    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _meta_with(**changes) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        meta = json.loads((folder / "mtbert_student.json").read_text())
        meta.update(changes)
        (folder / "mtbert_student.json").write_text(json.dumps(meta))

    return damage


def _deeper_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    (config["encoder"] if "encoder" in config else config)["num_hidden_layers"] = 2
    (folder / "config.json").write_text(json.dumps(config))


def _run_dir_with_the_users_files(ws: Workspace) -> list[str]:
    folder = ws.storage / "runs" / "mine"
    (folder / "student").mkdir(parents=True)
    (folder / "result.json").write_text('{"mine": true}')
    (folder / "student" / "notes.txt").write_text("my own student")
    return [*ws.run(), "--run-dir", str(folder)]


def _teacher_without_weights(ws: Workspace) -> list[str]:
    import shutil

    folder = ws.tmp / "no-weights"
    shutil.copytree(ws.models["bert"], folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    return ws.run(f"teachers=[{folder}]")


def _damaged_sweep_record(ws: Workspace) -> list[str]:
    folder = ws.storage / "sweeps" / "cut"
    folder.mkdir(parents=True)
    (folder / "mtbert_sweep.json").write_text('{"name": "cut", "spec": {"sear')
    return [str(folder)]


def _older_sweep_record(ws: Workspace) -> list[str]:
    folder = ws.storage / "sweeps" / "old"
    folder.mkdir(parents=True)
    (folder / "mtbert_sweep.json").write_text('{"name": "old", "spec": {}, "base": {}, "source": "old.yaml"}')
    return [str(folder)]


def _resume_of_a_damaged_sweep_record(ws: Workspace) -> list[str]:
    folder = ws.storage / "sweeps" / "cut"
    folder.mkdir(parents=True)
    (folder / "mtbert_sweep.json").write_text('{"name": "cut", "spec": {"sear')
    return ws.sweep("--resume", "--name", "cut")


def _held_by_another_process(folder: Path) -> None:
    """The writer lock of ``folder`` held by a live process (pid 1 on this host, its heartbeat fresh)."""
    import socket
    import time

    from mtbert_ray.store.lock import HOLDER_FILE, LOCK_DIR

    (folder / LOCK_DIR).mkdir(parents=True)
    (folder / LOCK_DIR / HOLDER_FILE).write_text(json.dumps({"pid": 1, "host": socket.gethostname(), "started": time.time(),
                                                             "command": "mtbert-ray run", "token": "other"}))


def _run_dir_being_written(ws: Workspace) -> list[str]:
    _held_by_another_process(ws.tmp / "busy-run")
    return [*ws.run(), "--run-dir", str(ws.tmp / "busy-run")]


def _resume_of_a_sweep_being_run(ws: Workspace) -> list[str]:
    _held_by_another_process(ws.storage / "sweeps" / "done")
    return ws.sweep("--resume", "--name", "done")


def _fewer_classes_than_config(folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["id2label"] = {"0": "negative", "1": "positive", "2": "neutral"}
    config["label2id"] = {"negative": 0, "positive": 1, "neutral": 2}
    (folder / "config.json").write_text(json.dumps(config))
    _meta_with(num_labels=3, label_names=["negative", "positive", "neutral"])(folder)


def _export_of_a_damaged_student(ws: Workspace) -> list[str]:
    folder = _student(ws)
    _fewer_classes_than_config(folder)
    return [str(folder), "--no-speed"]


def _twenty_teacher_grid(ws: Workspace) -> list[str]:
    pool = ", ".join(f"t{i}: {ws.models['bert']}" for i in range(20))
    return ws.sweep("--space", str(ws.space(f"base: _rt_polarity_base.yaml\nteacher_pool: {{{pool}}}\n"
                                             "space: {teachers: {grid: subsets}}\n")), "--dry-run")


CATALOGUE: dict[str, Case] = {
    # ---- experiment configs (python -m mtbert_ray.run) ----
    "config file missing": Case("run", lambda ws: ["--config", str(ws.tmp / "nope.yaml")], r"nope.yaml: no such file"),
    "config not YAML": Case("run", lambda ws: ["--config", str(ws.space("teachers: [a\n", "broken.yaml"))],
                            r"broken.yaml: line \d+ invalid YAML"),
    "config is a list": Case("run", lambda ws: ["--config", str(ws.space("- a\n- b\n", "list.yaml"))],
                             r"list.yaml: expected a mapping of config keys at the top level, got list"),
    "unknown config key": Case("run", lambda ws: ws.run("distill.temprature=2"), r"distill.temprature: unknown key"),
    "wrong type": Case("run", lambda ws: ws.run("distill.epochs=two"), r"distill.epochs: .*integer.*\(got 'two'\)"),
    "temperature <= 0": Case("run", lambda ws: ws.run("loss.temperature=0"), r"loss.temperature: Input should be greater than 0"),
    "learning rate <= 0": Case("run", lambda ws: ws.run("cofinetune.lr=-1e-5"), r"cofinetune.lr: Input should be greater than 0"),
    "empty teacher list": Case("run", lambda ws: ws.run("teachers=[]"), r"teachers: expected at least one teacher"),
    "duplicated teacher": Case("run", lambda ws: ws.run(f"teachers=[{ws.models['bert']},{ws.models['bert']}]"),
                               r"teachers: duplicated teacher"),
    "required key missing": Case("run", lambda ws: ["--config", str(ws.space("teachers: [x]\n", "partial.yaml"))],
                                 r"student: required key is missing"),
    "unknown data source": Case("run", lambda ws: ws.run("data.source=csv"), r"data.source: expected one of glue, mind, files .*got .csv."),
    "unknown ensemble mode": Case("run", lambda ws: ws.run("loss.ensemble=median"), r"loss.ensemble: Input should be"),
    "every loss switched off": Case("run", lambda ws: ws.run("loss.hidden=false", "loss.distill=false", "loss.task=false"),
                                    r"loss: .*at least one"),
    "hidden loss from a teacher not in the set": Case("run", lambda ws: ws.run("loss.hidden_teachers=[nobody/model]"),
                                                      r"loss.hidden_teachers: 'nobody/model' is not one of the teachers"),
    "hidden loss that selects no teacher": Case("run", lambda ws: ws.run(f"teachers=[{ws.models['roberta']}]",
                                                                         "loss.hidden_teachers=same_tokenizer"),
                                                r"loss.hidden_teachers: same_tokenizer selects none of the teachers"),
    "loss weight <= 0": Case("run", lambda ws: ws.run("loss.hidden_weight=0"), r"loss.hidden_weight: Input should be greater than 0"),
    "zero workers": Case("run", lambda ws: ws.run("resources.num_workers=0"), r"resources.num_workers: Input should be greater than or equal to 1"),
    "name with a path": Case("run", lambda ws: ws.run("name=../../etc"), r"name: expected a plain name"),
    "override without =": Case("run", lambda ws: ws.run("distill.lr"), r"--set 'distill.lr': expected dotted.key=value"),
    "student deeper than its checkpoint": Case("run", lambda ws: ws.run("student.num_layers=5"),
                                               r"student.num_layers=5 is deeper than .*which has 2 layers"),
    "model not in the offline cache": Case("run", lambda ws: ws.run("teachers=[nobody-here/no-such-model]"),
                                           r"'nobody-here/no-such-model': cannot load"),
    "num_labels disagrees with the data": Case("run", lambda ws: ws.run("data.num_labels=3"), r"data.num_labels=3 disagrees with"),
    "run folder of another experiment": Case("run", _run_dir_of_another_experiment, r"earlier-run.* another"),
    "storage is a file": Case("run", lambda ws: ["--config", str(ws.config), "--storage", str(ws.storage / "runs" / "earlier-run" / "result.json")],
                              r"result.json is a file; expected a folder"),
    "storage is a URI": Case("run", lambda ws: ["--config", str(ws.config), "--storage", "s3://bucket/results"],
                             r"--storage: 's3://bucket/results' is a URI; expected a folder .*--upload"),
    "results folder not writable": Case("run", lambda ws: ["--config", str(ws.config), "--storage", "/proc/mtbert-results"],
                                        r"--storage: /proc/mtbert-results is not writable"),
    # ---- data files (python -m mtbert_ray.run / python -m mtbert_ray.data prepare) ----
    "data folder missing": Case("prepare", lambda ws: ["--config", str(ws.config), "--set", f"data.path={ws.tmp / 'nodata'}"],
                                r"data.path: .*nodata"),
    "missing split": Case("run", _missing_split, r"no validation file"),
    "missing text column": Case("prepare", lambda ws: ["--config", str(ws.config), "--set", "data.text_fields=[review]"],
                                r"train.csv: no column 'review' \(data.text_fields\)"),
    "empty text": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood film,1\n  ,0\n"), ws.run())[1],
                       r"train.csv row 2, column 'text': empty text"),
    "null label": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood film,1\nbad film,\n"), ws.run())[1],
                       r"train.csv row 2, column 'label': missing label"),
    "label unseen in training": Case("run", lambda ws: (ws.data_file("validation", "text,label\ngood film,1\nbad film,7\n"), ws.run())[1],
                                     r"validation.csv row 2, column 'label': label '7' is never seen in training"),
    "not UTF-8": Case("run", lambda ws: (ws.data_file("train", "text,label\ncaf\xe9,1\n".encode("latin-1")), ws.run())[1],
                      r"train.csv: not valid UTF-8"),
    # ---- space files and sweep arguments (python -m mtbert_ray.sweep) ----
    "space range low > high": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nspace: {distill.lr: {loguniform: [1.0e-3, 1.0e-5]}}\nsearch: {searcher: optuna}\n"))),
        r"space.distill.lr: .*low 0.001 must be < high 1e-05"),
    "space key not in the config": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nspace: {distill.temprature: {grid: [1, 2]}}\n"))), r"distill.temprature: unknown key"),
    "space file missing": Case("sweep", lambda ws: ws.sweep("--space", str(ws.tmp / "nospace.yaml")), r"nospace.yaml: no such file"),
    "resume of a path without a sweep": Case("sweep", lambda ws: ws.sweep("--resume", "--name", "never-ran"),
                                             r"never-ran.*no sweep"),
    "sweep name already used": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space("base: _rt_polarity_base.yaml\n")), "--name", "done"),
                                    r"--name done: .* already holds a sweep"),
    "sweep name with a path": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space("base: _rt_polarity_base.yaml\n")),
                                                                "--name", "../../outside"), r"--name: expected a plain name"),
    "num-samples < 1": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space("base: _rt_polarity_base.yaml\n")), "--num-samples", "0"),
                            r"--num-samples: expected a positive integer"),
    "upload URI without a scheme": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space("base: _rt_polarity_base.yaml\n")),
                                                                     "--upload", "my-bucket/studies"),
                                        r"--upload: expected a URI with one of the schemes"),
    "selection metric the task does not report": Case("run", lambda ws: ws.run("select.metric=bleu"),
                                                      r"select.metric: expected auto or one of accuracy, macro_f1, mcc, f1"),
    "comparison with a row the study lacks": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nvariants: {MT-BERT: {}, A: {loss.weighted: false}}\nspace: {variant: {grid: all}}\n"
        "analysis: {comparisons: [[MT-BERT, B]]}\n"))), r"analysis.comparisons: row 'B' is not a row of this study"),
    "dry run of a broken space": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nspace: {loss.temperature: {grid: [1.0, -2.0]}}\n")), "--dry-run"),
        r"space.loss.temperature: loss.temperature: Input should be greater than 0"),
    "search.metric instead of select.metric": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nsearch: {metric: val_macro_f1}\n"))), r"search.metric moved to the experiment's select.metric"),
    "sweep naming a model that does not load": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nvariants: {A: {}, B: {teachers: [/nonexistent/no-model]}}\nspace: {variant: {grid: all}}\n"))),
        r"model '/nonexistent/no-model': cannot load its config"),
    # ---- second round (tried as a new user would): data loss, non-finite numbers, damaged files, silent mistakes ----
    "run folder holding the user's files": Case("run", _run_dir_with_the_users_files,
                                                r"run folder .*mine holds files mtbert-ray did not write \(result.json, student/\)"),
    "learning rate not finite": Case("run", lambda ws: ws.run("distill.lr=.inf"), r"distill.lr: Input should be a finite number"),
    "dry run with a non-finite setting": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space("base: _rt_polarity_base.yaml\n")),
                                                                           "--set", "distill.lr=.nan", "--dry-run"),
                                              r"distill.lr: Input should be a finite number"),
    "teacher prior of the wrong length": Case("run", lambda ws: ws.run("loss.teacher_prior=[1.0]"),
                                              r"loss.teacher_prior: 1 weights for 2 teachers; expected one per teacher"),
    "negative teacher prior": Case("run", lambda ws: ws.run("loss.teacher_prior=[1.0,-0.5]"),
                                   r"loss.teacher_prior: expected weights >= 0 with a positive sum"),
    "unknown teacher weighting": Case("run", lambda ws: ws.run("loss.teacher_weighting=best"),
                                      r"loss.teacher_weighting: Input should be 'paper', 'normalized' or 'confidence'"),
    "unlabelled text that does not exist": Case("run", lambda ws: ws.run(f"data.unlabeled={ws.tmp / 'nowhere.txt'}"),
                                                r"data.unlabeled: .*nowhere.txt does not exist; expected a file or folder of texts"),
    "unlabelled table without the text column": Case("run", lambda ws: (
        (ws.tmp / "transfer.csv").write_text("sentence\na film\n"), ws.run(f"data.unlabeled={ws.tmp / 'transfer.csv'}"))[1],
        r"transfer.csv: no column 'text' \(data.text_fields\); columns are \['sentence'\]"),
    "unlabelled text file with nothing in it": Case("run", lambda ws: (
        (ws.tmp / "empty.txt").write_text("\n \n"), ws.run(f"data.unlabeled={ws.tmp / 'empty.txt'}"))[1],
        r"data.unlabeled: .*empty.txt holds no text; expected at least one unlabelled example"),
    "unlabelled row with an empty text": Case("run", lambda ws: (
        (ws.tmp / "gap.csv").write_text('text\na film\n""\n'), ws.run(f"data.unlabeled={ws.tmp / 'gap.csv'}"))[1],
        r"gap.csv row 2, column 'text': empty text"),
    "student head from a model that does not exist": Case("run", lambda ws: ws.run(f"student.head_init={ws.tmp / 'nobody'}"),
                                                          r"tokenizer of '.*nobody': cannot load it"),
    "unknown unlabelled-row weighting": Case("run", lambda ws: ws.run("loss.unlabeled_rows=all"),
                                             r"loss.unlabeled_rows: Input should be 'confidence' or 'uniform'"),
    "negative data seed": Case("run", lambda ws: ws.run("data.seed=-1"), r"data.seed: Input should be greater than or equal to 0"),
    "duplicate key in a config": Case("run", lambda ws: ["--config", str(ws.space(
        "name: dup\ndistill: {epochs: 1}\nseed: 0\ndistill: {lr: 0.1}\n", "dup.yaml"))],
        r"dup.yaml: line 4 invalid YAML \(duplicate key 'distill' \(first at line 2\)\)"),
    "duplicate key in a space file": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nspace: {distill.lr: {grid: [0.1]}}\nspace: {loss.temperature: {grid: [1]}}\n"))),
        r"space.yaml: line 3 invalid YAML \(duplicate key 'space'"),
    "max_length beyond the position embeddings": Case("run", lambda ws: ws.run("data.max_length=1000"),
                                                      r"data.max_length=1000 is longer than .*tiny-bert' takes \(128 positions\)"),
    "teacher folder with a config but no weights": Case("run", _teacher_without_weights,
                                                        r"no-weights': the folder has a config.json but no weights"),
    "empty training split": Case("run", lambda ws: (ws.data_file("train", "text,label\n"), ws.run())[1],
                                 r"train.csv: the train split has no rows"),
    "empty validation split": Case("run", lambda ws: (ws.data_file("validation", "text,label\n"), ws.run())[1],
                                   r"validation.csv: the validation split has no rows"),
    "label id of 10^12": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood film,1\nbad film,1000000000000\n"), ws.run())[1],
                              r"train.csv row 2, column 'label': label 1000000000000 would make 1,000,000,000,001 classes"),
    "fractional training label": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood film,1\nbad film,0\nmeh,0.3\n"), ws.run())[1],
                                      r"train.csv row 3, column 'label': label '0.3' is not a class id"),
    "dry run with a sweep name that leaves the storage folder": Case("sweep", lambda ws: ws.sweep(
        "--space", str(ws.space("base: _rt_polarity_base.yaml\n")), "--name", "../outside", "--dry-run"),
        r"--name: expected a plain name"),
    "a grid of a million trials": Case("sweep", _twenty_teacher_grid, r"would start 1,048,575 trials .* more than 10,000"),
    "resume of a damaged sweep record": Case("sweep", _resume_of_a_damaged_sweep_record, r"mtbert_sweep.json: damaged sweep record"),
    "analysis of a damaged sweep record": Case("analysis", _damaged_sweep_record, r"mtbert_sweep.json: damaged sweep record"),
    "analysis of a sweep record of an older version": Case("analysis", _older_sweep_record,
                                                           r"mtbert_sweep.json: damaged sweep record \(row_key: missing\)"),
    "predict on truncated weights": Case("predict", _predict_on_damaged_student(lambda f: _truncate(f / "model.safetensors")),
                                         r"student/model.safetensors: unreadable weights"),
    "predict on a truncated head (format 1)": Case("predict", _predict_on_damaged_student(
        lambda f: _truncate(f / "head.safetensors"), format1=True), r"head.safetensors: unreadable weights"),
    "predict on a truncated student meta": Case("predict", _predict_on_damaged_student(lambda f: _truncate(f / "mtbert_student.json")),
                                                r"mtbert_student.json: not readable JSON"),
    "predict with fewer label names than the head": Case("predict", _predict_on_damaged_student(_meta_with(label_names=["only"])),
                                                         r"label_names: expected 2 names \(num_labels\), got \['only'\]"),
    "predict on a student whose config says more layers than its weights": Case(
        "predict", _predict_on_damaged_student(_deeper_config), r"config.json: says 2 layers but model.safetensors holds 1"),
    "predict on a format-1 student whose config says more layers than its weights": Case(
        "predict", _predict_on_damaged_student(_deeper_config, format1=True), r"config.json: says 2 layers but model.safetensors holds 1"),
    "predict with batch size 0": Case("predict", lambda ws: ["--model", str(_student(ws)), "--batch-size", "0", "a fine film"],
                                      r"--batch-size: expected a positive integer, got 0"),
    "predict with a negative batch size": Case("predict", lambda ws: ["--model", str(_student(ws)), "--batch-size", "-1", "x"],
                                               r"--batch-size: expected a positive integer, got -1"),
    "the word None among class ids": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood film,1\nbad film,None\nok film,0\n"),
                                                           ws.run())[1], r"train.csv row 2, column 'label': missing label \('None'\) in a "
                                                                         r"column of class ids"),
    "a name among class ids": Case("run", lambda ws: (ws.data_file("train", "text,label\ngood,1\nbad,0\nok,0\nmeh,pos\n"), ws.run())[1],
                                   r"train.csv row 4, column 'label': label 'pos' is not like the others"),
    "two writers of one run folder": Case("run", _run_dir_being_written,
                                          r"run folder .*busy-run is being written by pid 1 on .* since .* \(mtbert-ray run\)"),
    "resume of a sweep another process runs": Case("sweep", _resume_of_a_sweep_being_run,
                                                   r"sweep folder .*sweeps/done is being written by pid 1 on"),
    "predict on a student whose config has more labels than its head": Case(
        "predict", _predict_on_damaged_student(_fewer_classes_than_config),
        r"student/config.json: says 3 labels but model.safetensors's head has 2 classes \(head.dense.weight\)"),
    "export onnx of a student whose config has more labels than its head": Case(
        "export", _export_of_a_damaged_student, r"student/config.json: says 3 labels but model.safetensors's head has 2 classes"),
    "data prepare with max_length beyond the position embeddings": Case(
        "prepare", lambda ws: ws.run("data.max_length=1000")[:2] + ["--set", "data.max_length=1000"],
        r"data.max_length=1000 is longer than .*tiny-bert' takes \(128 positions\)"),
    "a first trial without a value of every space key": Case("sweep", lambda ws: ws.sweep("--space", str(ws.space(
        "base: _rt_polarity_base.yaml\nspace: {distill.lr: {loguniform: [1.0e-5, 1.0e-3]}, loss.temperature: {choice: [1, 2]}}\n"
        "search: {searcher: optuna, points_to_evaluate: [{distill.lr: 1.0e-4}]}\n"))),
        r"search.points_to_evaluate\[0\]: expected a value of each space key .*'loss.temperature' is missing"),
    "serve with zero replicas": Case("serve", lambda ws: [str(_student(ws)), "--replicas", "0"],
                                     r"--replicas: expected a positive integer or auto, got '0'"),
    "serve with zero threads": Case("serve", lambda ws: [str(_student(ws)), "--threads", "0"],
                                    r"--threads: expected a positive integer, got 0"),
    # ---- analysis and prediction ----
    "analysis of a folder without a sweep": Case("analysis", lambda ws: [str(ws.storage / "runs")], r"runs.*no .*sweep"),
    "predict with a folder that is no student": Case("predict", _student_export_without_weights, r"not-a-student"),
}


def _main(cli: str) -> Callable[[list[str]], None]:
    if cli == "run":
        from mtbert_ray.cli.run import main
    elif cli == "prepare":
        from mtbert_ray.cli.data import main as data_main

        return lambda argv: data_main(["prepare", *argv])
    elif cli == "sweep":
        from mtbert_ray.cli.sweep import main
    elif cli == "analysis":
        from mtbert_ray.cli.analysis import main
    elif cli == "serve":
        from mtbert_ray.cli.serve import main
    elif cli == "export":
        from mtbert_ray.cli.export import main as export_main

        return lambda argv: export_main(["onnx", *argv])
    else:
        from mtbert_ray.cli.predict import main
    return main


@pytest.fixture
def workspace(tmp_path, tiny_models, monkeypatch) -> Workspace:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return Workspace(tmp_path, tiny_models)


def test_the_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 25


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_exits_2_with_one_line_and_keeps_results(case, workspace, capsys):
    spec = CATALOGUE[case]
    argv = spec.setup(workspace)
    before = _snapshot(workspace.storage)
    with pytest.raises(SystemExit) as exited:
        _main(spec.cli)(argv)
    err = capsys.readouterr().err.strip()
    assert exited.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(spec.expected, lines[0]), lines[0]
    assert _snapshot(workspace.storage) == before, "existing results were changed"


def test_debug_flag_shows_the_traceback(workspace, capsys):
    with pytest.raises(SystemExit) as exited:
        _main("run")([*workspace.run("loss.temperature=0"), "--debug"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback (most recent call last)" in err and "ConfigError" in err


def test_docs_list_every_catalogue_message():
    doc = (REPO / "docs" / "errors.md").read_text()
    missing = [case for case in CATALOGUE if f"| {case} |" not in doc]
    assert not missing, f"docs/errors.md lacks: {missing}"
