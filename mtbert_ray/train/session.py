"""Where a stage's epoch loop runs: Ray Train workers (``TorchTrainer``) or the calling process.

The loop (``train.loop``) talks to a ``StageSession``: its rank, device and dataset shards, the
latest checkpoint to resume from, and ``report(metrics, checkpoint)``. Two implementations:

- ``RayTrainSession`` — inside ``TorchTrainer`` workers: ``ray.train.get_dataset_shard``,
  ``get_checkpoint``, ``report``; Ray keeps the best and the latest checkpoint, restarts workers
  (``max_failures``) and waits for resources (``worker_start_timeout_s``).
- ``InProcessSession`` — the same loop in the calling process (``resources.execution``; auto for one
  worker without a GPU), with no worker group to start: checkpoints are written to the same
  storage path with the same retention (best by the selection score, and the latest), a rerun
  resumes from the latest, every report goes to the history (and to Tune inside a trial).
  Ray Train 2.60's own local mode (``ScalingConfig(num_workers=0)``) keeps only the last report in
  memory — no persisted checkpoints, callbacks or resume — so it cannot replace this.

``run_stage`` picks the path and returns the stage's ``StageRun`` (best checkpoint and its metrics).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mtbert_ray.train.history import HISTORY_FILE, TENSORBOARD_DIR, HistoryWriter

SCORE = "selection_score"  # reported by the loop: the selection metric on improving epochs, else NO_SCORE
NO_SCORE = -1e30
CHECKPOINT_INDEX = "checkpoints.json"


@dataclass
class StageRun:
    """A finished Train stage: the checkpoint selected on validation and the metrics it was reported with."""

    best_checkpoint: Path
    best_metrics: dict[str, Any]
    storage: Path  # <storage_path>/<name>


class StageSession:
    """What the epoch loop needs from where it runs."""

    rank: int = 0
    world_size: int = 1

    def device(self, use_gpu: bool) -> torch.device:
        raise NotImplementedError

    def dataset(self, split: str):
        raise NotImplementedError

    def has_dataset(self, split: str) -> bool:
        raise NotImplementedError

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """The module the loop trains: DDP-wrapped on Ray Train workers, itself in process."""
        return module

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        raise NotImplementedError


class RayTrainSession(StageSession):
    def __init__(self) -> None:
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def device(self, use_gpu: bool) -> torch.device:
        import ray.train.torch

        return ray.train.torch.get_device()

    def dataset(self, split: str):
        import ray.train

        return ray.train.get_dataset_shard(split)

    def has_dataset(self, split: str) -> bool:
        try:
            return self.dataset(split) is not None
        except (KeyError, ValueError, AssertionError):
            return False

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def prepare_module(self, module: torch.nn.Module) -> torch.nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(module)  # every trainable parameter is used in forward: no unused-parameter search

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None)


class InProcessSession(StageSession):
    """The loop in this process; checkpoints in ``<storage_path>/<name>/checkpoint_<epoch>`` (best + latest kept)."""

    def __init__(self, run_folder: Path, datasets: Mapping[str, Any], history: HistoryWriter,
                 on_report: Sequence[Callable[[dict[str, Any]], None]] = ()) -> None:
        self.run_folder = run_folder
        self.datasets = dict(datasets)
        self.history = history
        self.on_report = list(on_report)

    def device(self, use_gpu: bool) -> torch.device:
        from mtbert_ray.train.common import training_device

        return training_device(use_gpu)

    def dataset(self, split: str):
        return self.datasets[split]

    def has_dataset(self, split: str) -> bool:
        return split in self.datasets

    # ---- checkpoints ----------------------------------------------------------------------------
    def index(self) -> list[dict[str, Any]]:
        try:
            return json.loads((self.run_folder / CHECKPOINT_INDEX).read_text())
        except (OSError, ValueError):
            return []

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        entries = self.index()
        yield (self.run_folder / entries[-1]["name"]) if entries else None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        from mtbert_ray.storage import atomic_write_text

        path = None
        if checkpoint is not None:
            name = f"checkpoint_{int(metrics.get('epoch', 0)):06d}"
            tmp = self.run_folder / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
            shutil.copytree(checkpoint, tmp)
            final = self.run_folder / name
            if final.exists():  # the same epoch ran again after a crash: the new one replaces it
                shutil.rmtree(final)
            os.rename(tmp, final)
            entries = [e for e in self.index() if e["name"] != name]
            entries.append({"name": name, "metrics": metrics})
            best = max(entries, key=lambda e: e["metrics"].get(SCORE, NO_SCORE))
            keep = {best["name"], entries[-1]["name"]}
            for entry in entries:
                if entry["name"] not in keep:
                    shutil.rmtree(self.run_folder / entry["name"], ignore_errors=True)
            atomic_write_text(self.run_folder / CHECKPOINT_INDEX,
                              json.dumps([e for e in entries if e["name"] in keep], indent=2, default=float))
            path = str(final)
        self.history.append(metrics, path)
        for callback in self.on_report:
            callback(metrics)

    def result(self) -> StageRun:
        entries = self.index()
        if not entries:
            raise RuntimeError(f"{self.run_folder}: the stage reported no checkpoint")
        best = max(entries, key=lambda e: e["metrics"].get(SCORE, NO_SCORE))
        return StageRun(self.run_folder / best["name"], dict(best["metrics"]), self.run_folder)


def tune_epoch_reporter(final_epoch: int) -> Callable[[dict[str, Any]], None] | None:
    """Inside a Tune trial: forward every epoch's report but the last to Tune (schedulers act on them).

    The last epoch is left to the trial's own final report, made after the student is exported: a
    scheduler that stops a trial at its last epoch (ASHA at ``max_t``) must not stop it before that.
    """
    from mtbert_ray.ray_compat import in_tune_session

    if not in_tune_session():
        return None

    def report(metrics: dict[str, Any]) -> None:
        if int(metrics.get("epoch", 0)) < final_epoch:
            import ray.tune

            ray.tune.report(dict(metrics))

    return report


def _tune_callback(final_epoch: int):
    """``tune_epoch_reporter`` for ``TorchTrainer`` runs: Ray's ``TuneReportCallback`` minus the last epoch."""
    from ray.tune.integration.ray_train import TuneReportCallback

    class EpochsToTune(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint):
            if metrics and int(metrics[0].get("epoch", 0)) < final_epoch:
                super().after_report(run_context, metrics, checkpoint)

    return EpochsToTune()


def worker_start_timeout(resources) -> float | None:
    """``resources.worker_start_timeout_s``; by default 900 s when joined to a cluster (a cold GPU node
    boots, pulls an image and starts Ray in minutes), else Ray's own 60 s."""
    if resources.worker_start_timeout_s is not None:
        return resources.worker_start_timeout_s
    return 900.0 if os.environ.get("RAY_ADDRESS") else None


def run_stage(
    worker: Callable[[dict[str, Any]], None],
    loop_config: dict[str, Any],
    resources,
    *,
    name: str,
    storage_path: Path,
    datasets: Mapping[str, Any],
    max_failures: int = 0,
    in_process: bool = False,
    final_epoch: int | None = None,
    tensorboard_tag: str = "",
) -> StageRun:
    """Run one Train stage (``worker(loop_config)`` per worker) and return its best checkpoint.

    A rerun with the same ``name`` and ``storage_path`` resumes from the latest checkpoint.
    """
    folder = storage_path / name
    history = HistoryWriter(folder / HISTORY_FILE, folder / TENSORBOARD_DIR, tensorboard_tag)
    in_tune = tune_epoch_reporter(final_epoch) if final_epoch else None
    if in_process:
        folder.mkdir(parents=True, exist_ok=True)
        session = InProcessSession(folder, {k: _ingest(k, v) for k, v in datasets.items()}, history,
                                   [in_tune] if in_tune else [])
        worker(loop_config, session)
        return session.result()
    return _fit_trainer(worker, loop_config, resources, name=name, storage_path=storage_path, datasets=datasets,
                        max_failures=max_failures, history=history,
                        callbacks=[_tune_callback(final_epoch)] if in_tune else [])


def _ingest(name: str, dataset):
    """A dataset as an in-process stage reads it: with the execution options a Train worker's shard has."""
    from mtbert_ray.data.loader import split_config
    from mtbert_ray.ray_compat import execution_options

    ds = dataset.copy(dataset)
    ds.context.execution_options = execution_options(split_config(), name)
    return ds


def _fit_trainer(worker, loop_config, resources, *, name, storage_path, datasets, max_failures, history, callbacks) -> StageRun:
    import ray.train
    from ray.train.torch import TorchTrainer

    from mtbert_ray.data.loader import split_config
    from mtbert_ray.ray_runtime import runtime_env_vars, scaling_config
    from mtbert_ray.train.ray_callbacks import MetricsHistory

    timeout = worker_start_timeout(resources)
    if timeout is not None:  # read by the Train controller (propagated from this process's environment)
        os.environ["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(timeout)
    trainer = TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=scaling_config(resources),
        datasets=dict(datasets),
        dataset_config=split_config(),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(
                max_failures=max_failures, controller_failure_limit=resources.controller_failure_limit
            ),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=SCORE, checkpoint_score_order="max"
            ),
            callbacks=[*callbacks, MetricsHistory(history.path, history.tensorboard_dir, history.tag)],
            worker_runtime_env={"env_vars": runtime_env_vars()},  # as the driver sees them now
        ),
    )
    from mtbert_ray.waiting import PendingPlacementNotice

    try:
        with PendingPlacementNotice(f"stage {name}", timeout):
            result = trainer.fit()
    except Exception as exc:  # noqa: BLE001 - a user-facing error raised on a worker comes back wrapped
        user_error = worker_user_error(exc)
        if user_error is not None:
            raise user_error from None
        raise
    best = result.get_best_checkpoint(SCORE, "max") or result.checkpoint
    metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), dict(result.metrics or {}))
    return StageRun(Path(best.path), dict(metrics), storage_path / name)


def worker_user_error(exc: BaseException):
    """The ``MTBertError`` (one line for the user, e.g. a non-finite loss) a Train worker raised, unwrapped from Ray
    Train's ``WorkerGroupError`` (``worker_failures``: rank → exception); None when the failure is something else."""
    from mtbert_ray.errors import MTBertError

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
