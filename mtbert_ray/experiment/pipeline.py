"""One MT-BERT experiment end to end: data → co-finetune → teacher cache → distill → export.

Composition only: the stages are in ``mtbert_ray.experiment.stages`` (reusable ones published under
``<storage>/stages/`` by ``mtbert_ray.store.stage``), the typed result in ``mtbert_ray.experiment.results``.
``Experiment`` runs them one at a time (benchmarks and tests use its methods); ``run()`` and
``run_experiment`` run them all. Each experiment gets its own run folder (``<storage>/runs/<name>-<time>``
or the one given), which holds ``config.yaml`` (the resolved config), ``result.json``, ``student/``
(the export), ``distill/`` (stage 3's checkpoints and history) and, for an unlabelled test split,
``predictions/<file>`` in the benchmark's submission format.
"""
from __future__ import annotations

import os
import time
import uuid
import warnings
from pathlib import Path

import yaml

from mtbert_ray.common.errors import MTBertError, ResultsError
from mtbert_ray.config import ExperimentConfig, dump_config, experiment_models, head_teacher, uses_cache, validate_config
from mtbert_ray.core.history import HISTORY_FILE, TENSORBOARD_DIR, history_to_tensorboard
from mtbert_ray.core.session import StageRun
from mtbert_ray.core.steps.distill import STUDENT_DIR
from mtbert_ray.core.training import read_training_state
from mtbert_ray.data.shards import prepare_data
from mtbert_ray.deploy.card import write_model_card
from mtbert_ray.deploy.export import export_student, parameter_counts
from mtbert_ray.distributed.needs import cluster_state, fit_plan, nearby_settings, trial_needs
from mtbert_ray.distributed.runtime import callers_ray_driver, init_ray
from mtbert_ray.experiment import stages
from mtbert_ray.experiment.context import StageContext
from mtbert_ray.experiment.results import ExperimentResult, FinishedRun
from mtbert_ray.models.hub import check_models
from mtbert_ray.models.student_io import read_student_meta
from mtbert_ray.store.files import atomic_write_text, ensure_writable_dir, resolve_storage
from mtbert_ray.store.lock import LOCK_DIR, FolderLock
from mtbert_ray.store.stage import Published

RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"


class Experiment:
    """One experiment's stages, run one at a time or all (``run``). Everything a user can get wrong
    (data, models, selection metric) is checked by ``prepare`` before a run folder is written or Ray starts."""

    def __init__(self, config: ExperimentConfig, storage: str | os.PathLike | None = None,
                 run_dir: str | os.PathLike | None = None, verify: bool = False, wait_for_writer_s: float | None = None,
                 wait_for_resources: bool = False) -> None:
        self.config = config
        self.root = resolve_storage(storage)
        if run_dir is None:
            run_dir = self.root / "runs" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.run_dir = Path(run_dir).resolve()
        self.verify = verify
        self.wait_for_writer_s = wait_for_writer_s  # None: a run folder another process writes is refused at once
        self.wait_for_resources = wait_for_resources  # on a cluster: check the plan against all of it, and wait
        self.ctx: StageContext | None = None
        self.teachers: Published | None = None
        self.cache: Published | None = None

    @property
    def stage_root(self) -> Path:
        return self.root / "stages"

    def prepare(self) -> StageContext:
        cfg = self.config
        data = prepare_data(cfg.data, experiment_models(cfg), cfg.trust_remote_code, verify=self.verify)
        self.ctx = StageContext(cfg, data)
        self.ctx.select_metric  # noqa: B018 - a metric the task does not report is an error now
        self.ctx.hidden_teachers  # noqa: B018 - so is a hidden loss that selects no teacher
        check_models([*cfg.teachers, *filter(None, [head_teacher(cfg)])], cfg.student.init_from, cfg.student.num_layers,
                     cfg.trust_remote_code, cfg.data.max_length)
        needs = trial_needs(cfg)
        callers_ray = callers_ray_driver()
        init_ray(required_cpus=needs.peak["CPU"])  # an embedded Ray started here holds the peak
        # A joined cluster, or a Ray the caller started in this driver (ray.init in a notebook), is checked, so a stage
        # that cannot start is refused now, not after a long wait. (A sweep's trial: the sweep checked its plan.)
        if os.environ.get("RAY_ADDRESS") or callers_ray:
            cluster = cluster_state(wait_for_resources=self.wait_for_resources)
            fit_plan({"the experiment": needs}, cluster, 1, lambda _: nearby_settings(cfg, 0.0, None, cluster))
        return self.ctx

    def cofinetune(self) -> Published:
        ctx = self.ctx or self.prepare()
        nonce = None if self.config.cofinetune.reuse else str(self.run_dir)
        self.teachers = stages.cofinetune(ctx, self.stage_root, nonce, self.verify)
        ctx = stages.with_head_teacher(ctx, self.stage_root, self.teachers, nonce, self.verify)
        self.ctx = stages.with_teachers(ctx, self.teachers)
        return self.teachers

    def teacher_cache(self) -> Published | None:
        if self.teachers is None:
            self.cofinetune()
        if uses_cache(self.config):
            self.cache, self.ctx = stages.teacher_cache(self.ctx, self.stage_root, self.teachers, self.verify)
        return self.cache

    def distill(self, run_dir: Path | None = None) -> StageRun:
        """Stage 3 in ``run_dir`` (default this experiment's run folder)."""
        if self.teachers is None:
            self.teacher_cache()
        return stages.distill(self.ctx, run_dir or self.run_dir)

    def run(self) -> ExperimentResult:
        """Every stage (reusing what exists), the export and ``result.json``."""
        started = time.time()
        lock = FolderLock(self.run_dir, "run folder", wait=self.wait_for_writer_s is not None, timeout_s=self.wait_for_writer_s,
                          on_wait=lambda holder: print(f"[mtbert] run folder {self.run_dir}: waiting for {holder}", flush=True))
        lock.check_free()  # a folder another process is writing is refused first, before anything is read or Ray starts
        finished = finished_run(self.run_dir, self.config)
        check_adoptable(self.run_dir)
        if finished is not None:
            print(f"[mtbert] {self.run_dir} already holds this finished run: reusing its results", flush=True)
            return finished
        self.prepare()
        ensure_writable_dir(self.run_dir, "run folder")
        with lock:
            finished = finished_run(self.run_dir, self.config)  # another writer may have finished it meanwhile
            if finished is not None:
                print(f"[mtbert] {self.run_dir} already holds this finished run: reusing its results", flush=True)
                return finished
            return self._run_locked(started)

    def _run_locked(self, started: float) -> ExperimentResult:
        """Every stage, the export and ``result.json``, with the run folder's writer lock held."""
        atomic_write_text(self.run_dir / CONFIG_FILE, dump_config(self.config))
        self.teacher_cache()
        # the co-finetuning curves beside the distillation ones, in the run folder (shared stages live elsewhere)
        history_to_tensorboard(self.teachers.path.parent / HISTORY_FILE, self.run_dir / TENSORBOARD_DIR / "cofinetune", "cofinetune")
        distill_started = time.time()
        distilled = self.distill()
        result = self._result(distilled, time.time() - distill_started, started)
        say_teachers(result)
        below = teachers_below_student(result)
        if below:
            result.decisions["teachers_below_student"] = ", ".join(below)
        far = teachers_far_below_best(result)
        if far:
            result.decisions["teachers_far_below_best"] = ", ".join(far)
        result.write(self.run_dir / RESULT_FILE)
        write_model_card(result.student_dir, read_student_meta(result.student_dir), result.to_json())
        return result

    def _result(self, distilled: StageRun, distill_seconds: float, started: float) -> ExperimentResult:
        cfg, ctx, data, teachers = self.config, self.ctx, self.ctx.data, self.teachers
        student_dir = export_student(distilled.best_checkpoint / STUDENT_DIR, self.run_dir / STUDENT_DIR,
                                     init_from=cfg.student.init_from, max_length=cfg.data.max_length, pair=data.pair,
                                     teachers=cfg.teachers, experiment_yaml=dump_config(cfg),
                                     trust_remote_code=cfg.trust_remote_code)
        params = parameter_counts(teachers.path, student_dir, cfg.teachers)
        predictions, note = stages.test_predictions(ctx, teachers, distilled, self.run_dir / "predictions")
        return ExperimentResult.from_run(FinishedRun(
            ctx, teachers, self.cache, distilled, student_dir=student_dir, params=params,
            student_test=read_training_state(distilled.best_checkpoint).get("test"), predictions=predictions,
            test_note=note, decisions=stages.distill_decisions(ctx), seconds=time.time() - started,
            distill_seconds=distill_seconds,
        ))


FAR_BELOW_POINTS = 5.0  # a teacher this many points (of select.metric × 100) below the best teacher is said


def say_teachers(result: ExperimentResult) -> None:
    """One line: each co-finetuned teacher's validation score (``select.metric``), the best marked, and the student's
    test retention of it."""
    metric, best = result.select.get("metric", "accuracy"), result.best_teacher()
    scores = [f"{name} {s.metric(metric):.4f}{' (best)' if name == best else ''}" for name, s in result.teachers.items()
              if s.metric(metric) is not None]
    kept = result.retention()
    if scores:
        print(f"[mtbert] teachers after co-finetuning, validation {metric}: {', '.join(scores)}"
              + (f"; the student keeps {100 * kept:.1f} % of {best}'s test accuracy" if kept is not None else ""), flush=True)


def teachers_far_below_best(result: ExperimentResult, points: float = FAR_BELOW_POINTS) -> list[str]:
    """Teachers whose validation score is more than ``points`` below the best teacher's, each said in one warning
    line: a weak teacher pulls the mixture down unless its weight is small (MT-BERT's teachers are of similar strength)."""
    metric, mode = result.select.get("metric", "accuracy"), result.select.get("mode", "max")
    best = result.best_teacher()
    if best is None:
        return []
    top = result.teachers[best].metric(metric)
    far = []
    for name, scores in result.teachers.items():
        value = scores.metric(metric)
        if value is None or name == best:
            continue
        gap = 100 * ((top - value) if mode == "max" else (value - top))
        if gap > points:
            far.append(name)
            print(f"[mtbert] warning: teacher {name} has validation {metric} {value:.4f}, {gap:.1f} points below the best "
                  f"teacher {best} ({top:.4f}): lower its loss.teacher_prior, or compare without it (a teacher_mixture "
                  "study keeps each teacher's own arm)", flush=True)
    return far


def teachers_below_student(result: ExperimentResult) -> list[str]:
    """Teachers whose validation score (``select.metric``) is below the student's, each said in one warning line:
    a teacher that teaches below its student (drop it, or give it a smaller ``loss.teacher_prior``)."""
    metric, mode = result.select.get("metric", "accuracy"), result.select.get("mode", "max")
    student = result.student.metric(metric)
    below = []
    for name, scores in result.teachers.items():
        teacher = scores.metric(metric)
        if student is None or teacher is None:
            continue
        if (teacher < student) if mode == "max" else (teacher > student):
            below.append(name)
            print(f"[mtbert] warning: teacher {name} has validation {metric} {teacher:.4f}, below its student's {student:.4f}: "
                  "it teaches below the student (drop it, or lower its loss.teacher_prior)", flush=True)
    return below


def run_experiment(config: ExperimentConfig, storage: str | os.PathLike | None = None,
                   run_dir: str | os.PathLike | None = None, verify: bool = False,
                   wait_for_writer_s: float | None = None, wait_for_resources: bool = False) -> ExperimentResult:
    """Run (or reuse) every stage of one experiment and export the student selected on validation.

    ``run_dir`` fixes the run folder (a sweep trial passes one named after its trial id, so a
    restarted trial resumes its distillation); by default a new ``<storage>/runs/<name>-<time>``.
    ``verify`` re-hashes every reused artefact (sizes and row counts are always checked). The run folder has one writer
    at a time (``store.lock``): another process writing it is refused in one line, or — ``wait_for_writer_s`` — waited
    for that long (a sweep trial retried while its first attempt's lock is not yet known to be stale).
    """
    return Experiment(config, storage, run_dir, verify, wait_for_writer_s, wait_for_resources).run()


def check_adoptable(run_dir: Path) -> None:
    """A run folder is used only when it is new, empty, or one mtbert-ray made (it holds ``config.yaml``, written
    first): files of the user's there (a ``result.json``, a ``student/``) would otherwise be overwritten or deleted."""
    if not run_dir.is_dir() or (run_dir / CONFIG_FILE).is_file():
        return
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not p.name.startswith(LOCK_DIR))
    if foreign:
        shown = ", ".join(foreign[:4]) + (f" (+{len(foreign) - 4} more)" if len(foreign) > 4 else "")
        raise ResultsError(f"run folder {run_dir} holds files mtbert-ray did not write ({shown}); "
                           "choose a new or empty folder (--run-dir)")


def same_config(saved: Path, config: ExperimentConfig) -> bool:
    """Whether a run folder's ``config.yaml`` is ``config``: the same text, or the same settings once read (a folder
    written before a key moved, ``config.MOVED_KEYS``, is still the same run)."""
    text = saved.read_text()
    if text == dump_config(config):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return validate_config(yaml.safe_load(text), source=str(saved)) == config
    except (MTBertError, yaml.YAMLError, ValueError):
        return False


def finished_run(run_dir: Path, config: ExperimentConfig) -> ExperimentResult | None:
    """The stored result when ``run_dir`` already holds a finished run of ``config`` (a restarted sweep
    trial whose first attempt completed); ``None`` for a new or unfinished run of the same config.
    A run folder that holds another config is never reused or overwritten."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        return None
    if not same_config(saved, config):
        raise ResultsError(f"run folder {run_dir} holds a run of another config ({saved}); choose another folder")
    try:
        return ExperimentResult.read(run_dir / RESULT_FILE)
    except (OSError, ValueError, KeyError):
        return None
