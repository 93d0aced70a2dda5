"""A study on Ray Tune (``run_sweep``); its command line is ``mtbert-ray sweep`` / ``python -m mtbert_ray.sweep``
(``mtbert_ray.cli.sweep``).

Tune-over-Train as Ray 2.60 supports it: every trial is a Tune *function* (the trial driver,
``tune.with_resources``) that runs one experiment (``pipeline.run_experiment``). Its stages run in the
trial's own process when they have one worker and no GPU (``resources.execution: auto``; each epoch is
forwarded to Tune by the in-process session), else on a distillation ``TorchTrainer`` that reports each
epoch to Tune through ``TuneReportCallback``; schedulers (ASHA, median stopping) act on those per-epoch reports.
Co-finetuning and the teacher cache are
keyed stages shared by all trials with the same key, so teachers are trained once per distinct
(teacher set, data, co-finetune config, seed), not once per trial.

Layout under ``--storage`` (default ``~/mtbert_results``)::

    sweeps/<name>/                Tune's experiment folder (resumable with --resume)
    sweeps/<name>/mtbert_sweep.json   the space, resolved base experiment and search settings
    sweeps/<name>/runs/<trial id>/    each trial's run folder (result.json, student/)
    sweeps/<name>/analysis/       tables (Markdown, CSV), plots (PNG), best trial
    stages/                       co-finetuned teachers and teacher caches, shared across runs

``--upload s3://BUCKET/PREFIX`` (or ``gs://``) copies ``sweeps/<name>/`` to object storage at the end.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule
from ray.tune.search.optuna import OptunaSearch

from mtbert_ray.common.errors import ConfigError, ResultsError
from mtbert_ray.common.metric_names import RETENTION, Split, best_teacher_key, metric_key, teacher_mean_key
from mtbert_ray.config import ExperimentConfig, check_plain_name, head_teacher
from mtbert_ray.config.space import Space, load_space
from mtbert_ray.deploy.card import write_model_card
from mtbert_ray.deploy.onnx import REPORT_FILE
from mtbert_ray.distributed.needs import TrialNeeds, cluster_state, fit_plan, nearby_settings, trial_needs
from mtbert_ray.distributed.runtime import has_resource, init_ray
from mtbert_ray.experiment.context import select_metric_name, task_metrics
from mtbert_ray.experiment.pipeline import run_experiment
from mtbert_ray.experiment.results import ExperimentResult
from mtbert_ray.models.hub import check_models
from mtbert_ray.models.student_io import read_student_meta
from mtbert_ray.store.files import resolve_storage
from mtbert_ray.store.lock import HEARTBEAT_S, LOCK_DIR, STALE_AFTER_S, FolderLock
from mtbert_ray.study.analysis import seed_summary
from mtbert_ray.study.dryrun import planned_trials, trial_kinds
from mtbert_ray.study.record import RUNS_DIR, SWEEP_FILE, SweepRecord, read_sweep_record, write_sweep_record

log = logging.getLogger(__name__)



def final_report(result: ExperimentResult, epochs: int) -> dict[str, Any]:
    """A finished trial's last report: the selected checkpoint's validation and test scores, the teachers' mean, the
    best teacher (chosen on validation) and the student's retention of it, the export.

    ``finished`` marks a trial that ran every epoch and exported its student; a trial a scheduler
    stopped early never makes this report.
    """
    report: dict[str, Any] = {"epoch": epochs, "best_epoch": result.student.epoch}
    for split in Split:
        for name, value in ((result.student.validation if split is Split.VALIDATION else result.student.test) or {}).items():
            report[metric_key(split, name)] = value
        for name in result.data.get("metrics", []):
            values = [s.metric(name, split) for s in result.teachers.values()]
            if values and all(v is not None for v in values):
                report[teacher_mean_key(split, name)] = sum(values) / len(values)
    best = result.best_teacher()
    if best is not None:
        report["best_teacher"] = best
        for split in Split:
            for name, value in ((result.teachers[best].validation if split is Split.VALIDATION
                                 else result.teachers[best].test) or {}).items():
                report[best_teacher_key(split, name)] = value
    retention = result.retention()
    if retention is not None:
        report[RETENTION] = retention
    report.update(
        student_params=result.student.params,
        student_dir=str(result.student_dir),
        run_dir=str(result.run_dir),
        cofinetune_reused=result.cofinetune.reused,
        finished=True,
    )
    return report


def trial_driver(params: dict[str, Any], sweep: SweepRecord) -> None:
    """One trial: the experiment for ``params``, its distillation epochs reported to Tune (all but the
    last: ``distributed.train``), then, once the student is exported, the final report."""
    config = Space.from_record(sweep).trial_config(params)  # the one validation of this trial's config
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(sweep.experiment_dir) / RUNS_DIR / trial_id
    # a retried trial may find its first attempt's lock on the run folder, known stale once its heartbeat stops
    result = run_experiment(config, storage=sweep.storage, run_dir=run_dir, wait_for_writer_s=STALE_AFTER_S + 2 * HEARTBEAT_S)
    tune.report(final_report(result, config.distill.epochs))


def tune_param_space(space: Space) -> dict[str, Any]:
    """Ray Tune's ``param_space`` of a study (grid_search / distributions of its dimensions), seeds included."""
    out: dict[str, Any] = {}
    for key, dim in space.spec.space.items():
        values = space.dimension_values(key, dim)
        if dim.kind == "grid":
            out[key] = tune.grid_search(values)
        elif dim.kind == "choice":
            out[key] = tune.choice(values)
        elif dim.kind == "uniform":
            out[key] = tune.uniform(*dim.uniform)
        elif dim.kind == "loguniform":
            out[key] = tune.loguniform(*dim.loguniform)
        else:
            out[key] = tune.randint(*dim.randint)
    seeds = space.search.seeds
    if "seed" not in out:
        out["seed"] = tune.grid_search(seeds) if len(seeds) > 1 else seeds[0]
    return out


def tracking_callbacks(name: str, mlflow: str | None) -> list:
    """Ray Tune's own loggers for experiment trackers: every trial's reports (its distillation epochs and the final
    summary, co-finetuning scores included) as MLflow runs with the trial's parameters. TensorBoard needs none:
    Tune writes each trial's event files into the sweep folder, the stages theirs into the trials' run folders."""
    if not mlflow:
        return []
    try:  # deferred: MLflow is the optional [mlflow] extra
        import mlflow as _  # noqa: F401
        from ray.air.integrations.mlflow import MLflowLoggerCallback
    except ImportError:
        raise ConfigError("--mlflow: MLflow is not installed; pip install 'mtbert-ray[mlflow]'") from None
    return [MLflowLoggerCallback(tracking_uri=mlflow, experiment_name=name, save_artifact=False)]


def _searcher(space: Space):
    s = space.search
    points = [dict(p) for p in s.points_to_evaluate or []] or None
    if s.searcher == "optuna" and s.objectives:  # several objectives: Optuna's own, Tune's metric left unset
        names, modes = zip(*(item.split(":") for item in s.objectives))
        return OptunaSearch(metric=list(names), mode=list(modes), sampler=optuna.samplers.TPESampler(seed=s.optuna_seed),
                            points_to_evaluate=points)
    if s.searcher == "optuna":
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=s.optuna_seed), points_to_evaluate=points)
    return None  # grid / random: Tune's variant generator


def _scheduler(space: Space, max_epochs: int):
    s = space.search
    if s.scheduler == "asha":
        return ASHAScheduler(time_attr="epoch", max_t=max(max_epochs, 1), grace_period=min(s.grace_period, max_epochs),
                             reduction_factor=s.reduction_factor)
    if s.scheduler == "median":
        return MedianStoppingRule(time_attr="epoch", grace_period=s.grace_period, min_samples_required=2)
    return None


class TrialReservation:
    """What each trial reserves (``tune.with_resources``): its own experiment's reservation, not the base
    experiment's — a variant or a searched ``resources.*`` value of another size reserves its own."""

    def __init__(self, sweep: SweepRecord, driver: str | None) -> None:
        self.sweep, self.driver = sweep, driver

    def __call__(self, params: dict[str, Any]) -> tune.PlacementGroupFactory:
        space = Space.from_record(self.sweep)
        needs = trial_needs(space.trial_config(params), space.search.trial_cpus, self.driver)
        bundle = {k.upper() if k in ("cpu", "gpu") else k: v for k, v in needs.tune_resources().items()}
        return tune.PlacementGroupFactory([bundle])


def concurrent_trials(space: Space, kinds: dict[str, tuple[TrialNeeds, ExperimentConfig]], driver: str | None,
                      wait_for_resources: bool = False) -> int:
    """``search.max_concurrent_trials`` capped to how many trials pack together on the cluster (every kind of trial of
    the study); a plan one of whose trials can never start is refused here, before any stage starts, with the setting
    that would make it pack (``distributed.needs.fit_plan``)."""
    wanted = space.search.max_concurrent_trials
    cluster = cluster_state(space.search.autoscaling_config, wait_for_resources)
    if cluster.held:
        print(f"[mtbert] {cluster.held}: the plan is placed on what is free"
              + ("" if wait_for_resources else " (--wait-for-resources places it on the whole cluster and waits)"), flush=True)

    def advise(label: str) -> str | None:
        return nearby_settings(kinds[label][1], space.search.trial_cpus, driver, cluster)

    allowed = fit_plan({label: needs for label, (needs, _) in kinds.items()}, cluster, wanted, advise)
    if allowed < wanted:
        print(f"[mtbert] search.max_concurrent_trials {wanted} → {allowed}: at most {allowed} trial(s) pack together on "
              f"{cluster.source}", flush=True)
    return allowed


def driver_resource(space: Space, base_config) -> str | None:
    """``search.driver_resource`` if the cluster offers it (with a note when it does not), else None."""
    name = space.search.driver_resource
    if not name or base_config.resources.in_process:
        return None
    if has_resource(name):
        return name
    print(f"[mtbert] no node offers the resource {name!r} (search.driver_resource): trial drivers may run on any node, "
          "spot capacity included — see cluster/README.md", flush=True)
    return None


def check_space_models(space: Space) -> None:
    """Pre-flight before Tune starts: every model a trial can name (each planned trial's teachers and student,
    every ``teacher_pool`` entry) loads its ``config.json``. A missing model is then one line here, not every
    trial failing ``search.max_failures + 1`` times after the data is tokenized."""
    pool = tuple((space.spec.teacher_pool or {}).values())
    checked: set[tuple] = set()
    for trial in planned_trials(space):
        cfg = trial.config
        models = tuple(dict.fromkeys((*cfg.teachers, *pool, *filter(None, [head_teacher(cfg)]))))
        key = (models, cfg.student.init_from, cfg.student.num_layers, cfg.trust_remote_code,
               cfg.data.max_length)
        if key not in checked:
            checked.add(key)
            check_models(list(key[0]), key[1], key[2], key[3], key[4])


def checked_name(name: str, where: str) -> str:
    """A sweep name is one plain folder name under ``<storage>/sweeps`` (the dry run checks it as the run does)."""
    try:
        check_plain_name(name)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return name


def _start_ray(space: Space, base_config, wait_for_resources: bool = False) -> tuple[str | None, int]:
    """Join (or start) Ray, then size the study to it: (the driver resource trials reserve, trials at once)."""
    peak = max(needs.peak["CPU"] for needs, _ in trial_kinds(space).values())
    init_ray(required_cpus=space.search.max_concurrent_trials * peak)  # embedded: sized so that every trial fits
    driver = driver_resource(space, base_config)
    kinds = trial_kinds(space, driver)
    max_concurrent = concurrent_trials(space, kinds, driver, wait_for_resources)
    for label, (needs, _) in kinds.items():
        print(f"[mtbert] {label} {needs.describe()}", flush=True)
    print(f"[mtbert] up to {max_concurrent} trial(s) at once", flush=True)
    return driver, max_concurrent


def run_sweep(
    space_path: str,
    overrides: list[str] = (),
    storage: str | None = None,
    name: str | None = None,
    num_samples: int | None = None,
    resume: bool = False,
    mlflow: str | None = None,
    wait_for_resources: bool = False,
):
    """Start (or ``resume``) a sweep; returns (ResultGrid, experiment folder). ``wait_for_resources``: place the plan on
    the whole cluster rather than on what other work leaves free, and let its trials wait for that work."""
    if name is not None:
        checked_name(name, "--name")
    root = resolve_storage(storage)
    space = None
    if resume:
        if not name:
            raise ConfigError("--resume needs --name (the sweep folder under <storage>/sweeps) or --space's default name")
    else:
        space = load_space(space_path, overrides, absolute_paths=True)
        if num_samples is not None:
            space.spec.search.num_samples = num_samples
        name = name or checked_name(space.spec.name, f"{space.source}: name")
    experiment_dir = root / "sweeps" / name
    created = not experiment_dir.exists()
    lock = FolderLock(experiment_dir, "sweep folder")
    lock.check_free()
    lock.acquire()  # one writer: a second sweep or a resume of a running one is refused
    try:
        grid = _fit(space, name, experiment_dir, root, resume, mlflow, wait_for_resources)
    except BaseException:
        lock.release()
        if created and experiment_dir.is_dir() and not any(experiment_dir.iterdir()):
            experiment_dir.rmdir()  # refused before anything was written: leave no empty sweep folder
        raise
    lock.release()
    return grid, experiment_dir


def _fit(space: Space | None, name: str, experiment_dir: Path, root: Path, resume: bool, mlflow: str | None,
         wait_for_resources: bool):
    """Tune's run of a new sweep (``space``) or of a resumed one (``space`` None), with the sweep folder's lock held."""
    if resume:
        saved = experiment_dir / SWEEP_FILE
        if not saved.is_file():
            raise ResultsError(f"--resume: {experiment_dir} holds no sweep to resume")
        sweep = read_sweep_record(experiment_dir)  # damaged: one line naming the file
        if not tune.Tuner.can_restore(str(experiment_dir)):
            raise ResultsError(f"--resume: {experiment_dir} holds no sweep to resume")
        sweep = rebased(sweep, experiment_dir, root)
        space = Space.from_record(sweep, check=True)
        base_config = space.base_config
        driver, max_concurrent = _start_ray(space, base_config, wait_for_resources)
    else:
        if any(p.name != LOCK_DIR for p in experiment_dir.iterdir()):
            raise ResultsError(
                f"--name {name}: {experiment_dir} already holds a sweep; use --resume to continue it, or another --name"
            )
        base_config = space.base_config
        check_space_models(space)
        driver, max_concurrent = _start_ray(space, base_config, wait_for_resources)  # a plan that cannot pack is refused before anything is written
        sweep = SweepRecord(
            name=name, source=space.source, spec=space.spec.model_dump(mode="json"), base=space.base, row_key=space.row_key,
            select={"metric": select_metric_name(base_config), "mode": base_config.select.mode},
            metrics=task_metrics(base_config), comparisons=[tuple(c) for c in space.comparisons()], storage=str(root),
            experiment_dir=str(experiment_dir), created=time.time(),
        )
        write_sweep_record(experiment_dir, sweep)

    metric = metric_key(Split.VALIDATION, select_metric_name(base_config))
    test_metric = metric_key(Split.TEST, select_metric_name(base_config))
    trainable = tune.with_resources(tune.with_parameters(trial_driver, sweep=sweep), TrialReservation(sweep, driver))
    # Tune's newer console output ignores a passed ProgressReporter; ask for the classic one so the trial table
    # shows the metrics chosen here (RAY_AIR_NEW_OUTPUT=1 in the environment keeps Tune's own table).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if resume:
        print(f"[mtbert] resuming sweep {experiment_dir}", flush=True)
        tuner = tune.Tuner.restore(str(experiment_dir), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        s = space.search
        reporter = tune.CLIReporter(
            metric_columns={"epoch": "epoch", metric: metric, "best_epoch": "best epoch",
                            test_metric: test_metric},
            parameter_columns=list(tune_param_space(space)),
            sort_by_metric=not s.objectives,  # by TuneConfig's metric and mode
            max_report_frequency=30,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=tune_param_space(space),
            tune_config=tune.TuneConfig(
                metric=None if s.objectives else metric,  # several objectives: the searcher's
                mode=None if s.objectives else base_config.select.mode,
                search_alg=_searcher(space),
                scheduler=_scheduler(space, base_config.distill.epochs),
                num_samples=s.num_samples,
                max_concurrent_trials=max_concurrent,
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str(root / "sweeps"),
                progress_reporter=reporter,
                failure_config=tune.FailureConfig(max_failures=s.max_failures),
                callbacks=tracking_callbacks(name, mlflow),
            ),
        )
    return tuner.fit()


def rebased(sweep: SweepRecord, experiment_dir: Path, root: Path) -> SweepRecord:
    """The record of a sweep resumed where it is now: a sweep folder moved (or its storage mounted elsewhere) records
    its old place, and the resumed trials would write their run folders and students there. The record is rewritten
    with the folder it was found in; the trials it already finished are read back relative to it (``study.analysis``)."""
    if Path(sweep.experiment_dir) == experiment_dir and Path(sweep.storage) == root:
        return sweep
    print(f"[mtbert] sweep {sweep.name} was moved from {sweep.experiment_dir}: its trials now write under {experiment_dir}",
          flush=True)
    moved = sweep.model_copy(update={"experiment_dir": str(experiment_dir), "storage": str(root), "name": experiment_dir.name})
    write_sweep_record(experiment_dir, moved)
    return moved


def card_with_seeds(report) -> None:
    """The best student's model card rewritten with its row's scores over seeds (mean ± 95 % interval)."""
    best = report.best
    seeds = seed_summary(report)
    if not seeds or not best.get("student_dir") or not Path(best["student_dir"]).is_dir():
        return
    student = Path(best["student_dir"])
    result_file = student.parent / "result.json"
    result = json.loads(result_file.read_text()) if result_file.is_file() else None
    speed = json.loads((student / REPORT_FILE).read_text()).get("speed") if (student / REPORT_FILE).is_file() else None
    write_model_card(student, read_student_meta(student), result, speed, seeds)




def trial_counts(experiment_dir: Path) -> tuple[int, int, int]:
    """(finished, unfinished, errored) trials of a sweep, as Tune's saved experiment state records them: unfinished
    ones were pending or running when the sweep stopped. After Ctrl-C Tune saves that state first and then stops the
    running trials, which it then marks terminated in the grid it returns — so the grid would count a trial
    interrupted in its first epoch as finished; the saved state does not."""
    statuses = [trial.status for trial in tune.ExperimentAnalysis(str(experiment_dir)).trials]
    finished = statuses.count("TERMINATED")
    errored = statuses.count("ERROR")
    return finished, len(statuses) - finished - errored, errored
