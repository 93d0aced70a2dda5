"""Running one Train stage: ``run_stage`` picks where its epoch loop runs — the calling process
(``InProcessSession``) or Ray Train workers (``TorchTrainer`` + ``RayTrainSession``, ``distributed.sessions``) — and
returns its ``StageRun`` (the checkpoint selected on validation and its metrics). Inside a Tune trial every epoch but
the last is forwarded to Tune (schedulers act on them).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from mtbert_ray.common.errors import MTBertError
from mtbert_ray.config import ResourcesConfig
from mtbert_ray.core.history import HISTORY_FILE, TENSORBOARD_DIR, HistoryWriter
from mtbert_ray.core.loop import LoopSpec
from mtbert_ray.core.session import SCORE, StageRun
from mtbert_ray.distributed.callbacks import MetricsHistory
from mtbert_ray.distributed.compat import execution_options, in_tune_session
from mtbert_ray.distributed.loader import split_config
from mtbert_ray.distributed.runtime import runtime_env_vars, scaling_config, worker_start_timeout
from mtbert_ray.distributed.sessions import InProcessSession
from mtbert_ray.distributed.waiting import PendingPlacementNotice
from mtbert_ray.distributed.worker import stage_worker, worker_config


def tune_epoch_reporter(final_epoch: int) -> Callable[[dict[str, Any]], None] | None:
    """Inside a Tune trial: forward every epoch's report but the last to Tune (schedulers act on them).

    The last epoch is left to the trial's own final report, made after the student is exported: a
    scheduler that stops a trial at its last epoch (ASHA at ``max_t``) must not stop it before that.
    """
    if not in_tune_session():
        return None

    def report(metrics: dict[str, Any]) -> None:
        if int(metrics.get("epoch", 0)) < final_epoch:
            ray.tune.report(dict(metrics))

    return report


def _tune_callback(final_epoch: int):
    """``tune_epoch_reporter`` for ``TorchTrainer`` runs: Ray's ``TuneReportCallback`` minus the last epoch."""
    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and int(metrics[0].get("epoch", 0)) < final_epoch:
                super().after_report(run_context, metrics, checkpoint)

    return EpochsToTune()


@dataclass
class StageJob:
    """One Train stage to run: its step (by name, ``core.steps.STEPS``) and spec, the loop's settings, where it runs and
    stores its checkpoints, and the Ray datasets it reads (``train``, ``validation``, ``test``)."""

    step: str
    spec: Any  # the step's spec (CofinetuneSpec / DistillSpec): crosses to the workers as its dict
    loop: LoopSpec
    resources: ResourcesConfig
    name: str  # the run's folder under storage_path (a rerun of the same folder resumes)
    storage_path: Path
    datasets: Mapping[str, Any]
    max_failures: int = 0
    final_epoch: int | None = None  # set: inside a Tune trial, every epoch but this one is forwarded to Tune
    tensorboard_tag: str = ""


def run_stage(job: StageJob) -> StageRun:
    """Run one Train stage (``stage_worker`` per worker, or in this process when ``resources.in_process``) and return
    its best checkpoint. A rerun with the same ``name`` and ``storage_path`` resumes from the latest checkpoint."""
    folder = job.storage_path / job.name
    history = HistoryWriter(folder / HISTORY_FILE, folder / TENSORBOARD_DIR, job.tensorboard_tag)
    in_tune = tune_epoch_reporter(job.final_epoch) if job.final_epoch else None
    config = worker_config(job.step, job.spec, job.loop)
    if job.resources.in_process:
        folder.mkdir(parents=True, exist_ok=True)
        session = InProcessSession(folder, {k: _ingest(k, v) for k, v in job.datasets.items()}, history,
                                   [in_tune] if in_tune else [])
        stage_worker(config, session)
        return session.result()
    return _fit_trainer(job, config, history, callbacks=[_tune_callback(job.final_epoch)] if in_tune else [])


def _ingest(name: str, dataset):
    """A dataset as an in-process stage reads it: with the execution options a Train worker's shard has."""
    ds = dataset.copy(dataset)
    ds.context.execution_options = execution_options(split_config(), name)
    return ds


def _fit_trainer(job: StageJob, config: dict[str, Any], history: HistoryWriter, callbacks: list) -> StageRun:
    resources = job.resources
    timeout = worker_start_timeout(resources)
    if timeout is not None:  # read by the Train controller (propagated from this process's environment)
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(timeout)
    trainer = TorchTrainer(
        stage_worker,
        train_loop_config=config,
        scaling_config=scaling_config(resources),
        datasets=dict(job.datasets),
        dataset_config=split_config(),
        run_config=ray.train.RunConfig(
            name=job.name,
            storage_path=str(job.storage_path),
            failure_config=ray.train.FailureConfig(
                max_failures=job.max_failures, controller_failure_limit=resources.controller_failure_limit
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            callbacks=[*callbacks, MetricsHistory(history.path, history.tensorboard_dir, history.tag)],
            worker_runtime_env={"env_vars": runtime_env_vars()},  # as the driver sees them now
        ),
    )
    try:
        with PendingPlacementNotice(f"stage {job.name}", timeout):
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a user-facing error raised on a worker comes back wrapped
        user_error = worker_user_error(exc)
        if user_error is not None:
            raise user_error from None
        raise
    best = result.get_best_checkpoint(SCORE, "max") or result.checkpoint
    metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), dict(result.metrics or {}))
    return StageRun(Path(best.path), dict(metrics), job.storage_path / job.name)


def worker_user_error(exc: BaseException):
    """The ``MTBertError`` (one line for the user, e.g. a non-finite loss) a Train worker raised, unwrapped from Ray
    Train's ``WorkerGroupError`` (``worker_failures``: rank → exception); None when the failure is something else."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, MTBertError):
            return current
        todo += [e for e in (getattr(current, "worker_failures", None) or {}).values() if isinstance(e, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__, getattr(current, "cause", None)) if isinstance(e, BaseException)]
    return None
