"""One MT-BERT experiment end to end on Ray Train: data → co-finetune → teacher cache → distill → export.

Reusable stages are keyed by content and published under ``<storage>/stages/``:

- co-finetuning, keyed by (teachers, dataset, max_length, co-finetune config, seed): a Ray Train run
  named after its key, so a crashed attempt *resumes* from its last checkpoint when run again, and a
  finished one is reused by every later experiment or sweep trial with the same key;
- the teacher cache, keyed by (co-finetuned teachers, dataset, student tokenizer, cached layers).

A file lock per key makes concurrent trials wait for one builder instead of training twice.
Each experiment gets its own run folder (``<storage>/runs/<name>-<time>`` or the one given), which
holds ``config.yaml`` (the resolved config), ``result.json`` and ``student/`` (the export).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbert_ray.config import ExperimentConfig, dump_config
from mtbert_ray.data.loader import read_split, view_columns
from mtbert_ray.data.shards import PreparedData, prepare_data
from mtbert_ray.errors import ConfigError, ResultsError
from mtbert_ray.export import META_FILE
from mtbert_ray.hashing import stable_hash
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.ray_runtime import data_config, init_ray, runtime_env_vars, scaling_config
from mtbert_ray.storage import (
    atomic_write_text,
    ensure_writable_dir,
    file_entry,
    file_lock,
    verify_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "~/mtbert_results"
STAGE_MARKER = "mtbert_stage.json"
RESULT_FILE = "result.json"
CONFIG_FILE = "config.yaml"
STAGE_VERSION = 1


@dataclass
class StageOutcome:
    name: str
    key: str
    checkpoint: str
    metrics: dict[str, Any]
    reused: bool
    seconds: float


@dataclass
class ExperimentResult:
    run_dir: Path
    student_dir: Path
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def student_metrics(self) -> dict[str, float]:
        return self.summary["stages"]["distill"]["metrics"]

    @property
    def teacher_metrics(self) -> dict[str, dict[str, float]]:
        return self.summary["stages"]["cofinetune"]["teachers"]


def resolve_storage(storage: str | os.PathLike | None) -> Path:
    """``--storage``, else ``$MTBERT_RAY_STORAGE``, else ``~/mtbert_results`` — created and checked writable.

    A folder, never a URI: stages are published by atomic rename under file locks, which object
    stores do not offer (``--upload URI`` copies a finished study there; docs/design.md).
    """
    from_env = os.environ.get("MTBERT_RAY_STORAGE")
    what = "--storage" if storage else "MTBERT_RAY_STORAGE" if from_env else "--storage (default)"
    value = str(storage or from_env or DEFAULT_STORAGE)
    if "://" in value:
        raise ConfigError(
            f"{what}: {value!r} is a URI; expected a folder (local disk, or a file system shared by every node) — "
            "pass the URI to the sweep's --upload to copy the finished study there"
        )
    return ensure_writable_dir(Path(value).expanduser().resolve(), what)


def per_worker_batch(batch_size: int, num_workers: int, field_name: str) -> int:
    """``batch_size`` is global (the paper's 64): each of the N workers takes batch_size / N."""
    if batch_size % num_workers:
        raise ConfigError(
            f"{field_name}={batch_size} is not divisible by resources.num_workers={num_workers} (the batch size is global)"
        )
    return batch_size // num_workers


def worker_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config as each Train worker sees it: global batch sizes divided among the workers."""
    n = cfg.resources.num_workers
    return cfg.model_copy(
        update={
            "cofinetune": cfg.cofinetune.model_copy(
                update={"batch_size": per_worker_batch(cfg.cofinetune.batch_size, n, "cofinetune.batch_size")}
            ),
            "distill": cfg.distill.model_copy(
                update={"batch_size": per_worker_batch(cfg.distill.batch_size, n, "distill.batch_size")}
            ),
        }
    )


def cofinetune_key(cfg: ExperimentConfig, data: PreparedData, nonce: str | None = None) -> str:
    """Key of stage 1: (teachers, their tokenizers, dataset, max_length, co-finetune config, seed).

    ``nonce`` (a run folder, with ``cofinetune.reuse: false``) makes the key private to one run.
    """
    return stable_hash(
        {
            "stage": "cofinetune",
            "v": STAGE_VERSION,
            "teachers": cfg.teachers,
            "tokenizers": [data.model_tokenizer[t] for t in cfg.teachers],
            "data": data.dataset_key,
            "max_length": cfg.data.max_length,
            "cofinetune": cfg.cofinetune.model_dump(mode="json", exclude={"reuse"}),
            "seed": cfg.seed,
            **({"nonce": nonce} if nonce else {}),
        }
    )


def check_models(cfg: ExperimentConfig) -> None:
    """Pre-flight: every teacher's and the student's config loads, and the student fits its checkpoint.

    Reads only ``config.json`` files (hub cache or folder), so a missing model or a student
    deeper than ``student.init_from`` is a one-line error before any Ray worker starts.
    """
    from mtbert_ray.models.hub import ModelLoadError, load_config, model_depth

    for name in cfg.teachers:
        model_depth(load_config(name, trust_remote_code=cfg.trust_remote_code), name)
    depth = model_depth(load_config(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code), cfg.student.init_from)
    if cfg.student.num_layers > depth:
        raise ModelLoadError(
            f"student.num_layers={cfg.student.num_layers} is deeper than {cfg.student.init_from!r}, which has {depth} layers"
        )


def teacher_layer_maps(cfg: ExperimentConfig, teacher_depths: Sequence[int]) -> list[list[int]]:
    """For each teacher, the teacher layer that teaches student layer j = 1..K (ARCHITECTURE decision c)."""
    return [layer_map(cfg.student.num_layers, depth) for depth in teacher_depths]


def uses_cache(cfg: ExperimentConfig) -> bool:
    """The cache replaces the teachers only when it holds everything the loss needs."""
    return cfg.cache.enabled and (cfg.loss.distill or cfg.loss.hidden) and (not cfg.loss.hidden or cfg.cache.hidden)


def run_experiment(
    config: ExperimentConfig,
    storage: str | os.PathLike | None = None,
    run_dir: str | os.PathLike | None = None,
    distill_callbacks: Sequence[Any] = (),
) -> ExperimentResult:
    """Run (or reuse) every stage of one experiment and export the best student.

    ``run_dir`` fixes the run folder (a sweep trial passes one named after its trial id, so a
    restarted trial resumes its distillation); by default a new ``<storage>/runs/<name>-<time>``.
    """
    started = time.time()
    root = resolve_storage(storage)
    if run_dir is None:
        run_dir = root / "runs" / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(run_dir).resolve()
    wcfg = worker_config(config)
    finished = finished_run(run_dir, config)
    if finished is not None:
        print(f"[mtbert] {run_dir} already holds this finished run: reusing its results", flush=True)
        return finished
    # Everything a user can get wrong is checked before a run folder is written or Ray starts.
    data = prepare_data(config.data, [*config.teachers, config.student.init_from], config.trust_remote_code)
    check_models(config)
    ensure_writable_dir(run_dir, "run folder")
    atomic_write_text(run_dir / CONFIG_FILE, dump_config(config))

    init_ray(required_cpus=config.resources.num_workers * config.resources.cpus_per_worker)
    stages = root / "stages"

    cofinetuned = ensure_cofinetuned(wcfg, data, stages, nonce=None if config.cofinetune.reuse else str(run_dir))
    from mtbert_ray.models.teachers import read_ensemble_meta

    meta = read_ensemble_meta(cofinetuned.checkpoint)
    layer_maps = teacher_layer_maps(config, meta["depths"])
    cache = ensure_teacher_cache(wcfg, data, stages, cofinetuned, layer_maps) if uses_cache(config) else None
    distilled = run_distillation(wcfg, data, run_dir, cofinetuned, cache, layer_maps, distill_callbacks)

    student_dir = export_student(config, data, Path(distilled.checkpoint), run_dir / "student")
    summary = {
        "name": config.name,
        "run_dir": str(run_dir),
        "student_dir": str(student_dir),
        "seconds": time.time() - started,
        "data": {"dataset_key": data.dataset_key, "rows": data.rows, "label_names": data.label_names, "pair": data.pair},
        "stages": {
            "cofinetune": {
                **_stage_json(cofinetuned),
                "teachers": _teacher_metrics(config.teachers, cofinetuned.metrics),
            },
            "teacher_cache": _stage_json(cache) if cache else None,
            "distill": {**_stage_json(distilled), "metrics": _student_metrics(distilled.metrics)},
        },
        "params": parameter_counts(Path(cofinetuned.checkpoint), student_dir, config.teachers),
        "layer_maps": layer_maps,
    }
    atomic_write_text(run_dir / RESULT_FILE, json.dumps(summary, indent=2))
    return ExperimentResult(run_dir, student_dir, summary)


def finished_run(run_dir: Path, config: ExperimentConfig) -> ExperimentResult | None:
    """The stored result when ``run_dir`` already holds a finished run of ``config`` (a restarted sweep
    trial whose first attempt completed); ``None`` for a new or unfinished run of the same config.
    A run folder that holds another config is never reused or overwritten."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        return None
    if saved.read_text() != dump_config(config):
        raise ResultsError(f"run folder {run_dir} holds a run of another config ({saved}); choose another folder")
    try:
        summary = json.loads((run_dir / RESULT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return ExperimentResult(run_dir, Path(summary["student_dir"]), summary)


# ---- stages -------------------------------------------------------------------------------------

def _stage_json(stage: StageOutcome) -> dict[str, Any]:
    return {"key": stage.key, "checkpoint": stage.checkpoint, "reused": stage.reused, "seconds": round(stage.seconds, 2)}


def _teacher_metrics(teachers: Sequence[str], metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    return {
        name: {m: metrics[f"val_teacher{i}_{m}"] for m in ("accuracy", "macro_f1", "examples")}
        for i, name in enumerate(teachers)
    }


def _student_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "accuracy": metrics["val_accuracy"],
        "macro_f1": metrics["val_macro_f1"],
        "examples": metrics["val_examples"],
        "epoch": metrics["epoch"],
    }


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / STAGE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if verify_manifest(Path(marker["checkpoint"])) is None:
        log.warning("stage %s: checkpoint %s is missing or altered; rebuilding it", folder.name, marker["checkpoint"])
        return None
    return marker


def _publish_stage(folder: Path, name: str, key: str, checkpoint: Path, metrics: dict[str, Any], entries=None) -> dict[str, Any]:
    """Write the checkpoint's manifest (sizes, checksums) and then the marker that makes the stage reusable."""
    if entries is None:
        entries = [file_entry(p) | {"name": str(p.relative_to(checkpoint))} for p in sorted(checkpoint.rglob("*")) if p.is_file() and p.name != "manifest.json"]
    write_manifest(checkpoint, entries, kind=name, key=key)
    marker = {"stage": name, "key": key, "checkpoint": str(checkpoint), "metrics": metrics, "created": time.time()}
    atomic_write_text(folder / STAGE_MARKER, json.dumps(marker, indent=2, default=str))
    return marker


def _trainer(loop, loop_config, cfg: ExperimentConfig, name: str, storage_path: Path, datasets, checkpoint_config=None, callbacks=()):
    import ray.train
    from ray.train.torch import TorchTrainer

    from mtbert_ray.train.history import HISTORY_FILE, MetricsHistory

    return TorchTrainer(
        loop,
        train_loop_config=loop_config,
        scaling_config=scaling_config(cfg.resources),
        datasets=datasets,
        dataset_config=data_config(),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures, controller_failure_limit=0),
            checkpoint_config=checkpoint_config or ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=[*callbacks, MetricsHistory(storage_path / name / HISTORY_FILE)],  # every epoch's metrics
            worker_runtime_env={"env_vars": runtime_env_vars()},  # as the driver sees them now
        ),
    )


def _datasets(data: PreparedData, aliases: Sequence[str], splits: Sequence[str] = ("train", "validation"),
              offsets: bool = True, materialize: bool | str = "auto"):
    columns = view_columns(aliases, with_offsets=offsets)
    return {split: read_split(data.splits[split], columns, materialize) for split in splits}


def ensure_cofinetuned(cfg: ExperimentConfig, data: PreparedData, stages: Path, nonce: str | None = None) -> StageOutcome:
    """Stage 1: reuse the co-finetuned teachers of this key, or train them (resuming a stopped attempt)."""
    from mtbert_ray.train.cofinetune import cofinetune_loop

    key = cofinetune_key(cfg, data, nonce)
    folder = stages / "cofinetune" / key
    started = time.time()
    marker = _read_marker(folder)
    if marker is None:
        with file_lock(stages / "locks" / f"cofinetune-{key}.lock"):
            marker = _read_marker(folder)
            if marker is None:
                print(f"[mtbert] stage 1: co-finetuning {len(cfg.teachers)} teacher(s) (key {key})", flush=True)
                aliases = [data.model_tokenizer[t] for t in cfg.teachers]
                trainer = _trainer(
                    cofinetune_loop,
                    {"experiment": cfg.model_dump(mode="json"), "data": data.to_dict()},
                    cfg, "run", folder, _datasets(data, aliases, offsets=False),
                )
                result = trainer.fit()
                marker = _publish_stage(folder, "cofinetune", key, Path(result.checkpoint.path), dict(result.metrics))
                return StageOutcome("cofinetune", key, marker["checkpoint"], marker["metrics"], False, time.time() - started)
    print(f"[mtbert] stage 1: reusing co-finetuned teachers {key}", flush=True)
    return StageOutcome("cofinetune", key, marker["checkpoint"], marker["metrics"], True, time.time() - started)


def ensure_teacher_cache(
    cfg: ExperimentConfig, data: PreparedData, stages: Path, teachers: StageOutcome, layer_maps: list[list[int]]
) -> StageOutcome:
    """Stage 2: teacher logits, weights (and aligned states) over train + validation, once per key."""
    from mtbert_ray.cache import teacher_cache_loop

    student_alias = data.model_tokenizer[cfg.student.init_from]
    hidden = cfg.cache.hidden and cfg.loss.hidden
    key = stable_hash(
        {
            "stage": "teacher_cache",
            "v": STAGE_VERSION,
            "teachers": teachers.key,
            "data": data.dataset_key,
            "student_tokenizer": student_alias,
            "max_length": cfg.data.max_length,
            "layer_maps": layer_maps if hidden else None,
        }
    )
    folder = stages / "teacher_cache" / key
    started = time.time()
    marker = _read_marker(folder)
    if marker is None:
        with file_lock(stages / "locks" / f"teacher_cache-{key}.lock"):
            marker = _read_marker(folder)
            if marker is None:
                print(f"[mtbert] stage 2: caching teacher outputs (key {key}{', with hidden states' if hidden else ''})", flush=True)
                aliases = [data.model_tokenizer[t] for t in cfg.teachers]
                splits = ["train", "validation"]
                trainer = _trainer(
                    teacher_cache_loop,
                    {
                        "experiment": cfg.model_dump(mode="json"),
                        "data": data.to_dict(),
                        "teachers_checkpoint": teachers.checkpoint,
                        "layer_maps": layer_maps if hidden else None,
                        "splits": splits,
                    },
                    cfg,
                    f"run-{uuid.uuid4().hex[:8]}",  # never resume a half-written cache
                    folder,
                    _datasets(data, [*aliases, student_alias], splits, materialize=False),  # one pass only
                )
                result = trainer.fit()
                checkpoint = Path(result.checkpoint.path)
                entries = []
                for part in sorted(checkpoint.glob("parts-*.json")):
                    entries += json.loads(part.read_text())
                rows = {s: sum(e["rows"] for e in entries if e["name"].startswith(f"{s}/")) for s in splits}
                for split in splits:
                    if rows[split] != data.rows[split]:
                        raise RuntimeError(f"teacher cache {key}: {rows[split]} {split} rows written, expected {data.rows[split]}")
                marker = _publish_stage(folder, "teacher_cache", key, checkpoint, {"rows": rows, "hidden": hidden}, entries)
                return StageOutcome("teacher_cache", key, marker["checkpoint"], marker["metrics"], False, time.time() - started)
    print(f"[mtbert] stage 2: reusing teacher cache {key}", flush=True)
    return StageOutcome("teacher_cache", key, marker["checkpoint"], marker["metrics"], True, time.time() - started)


def cache_files(cache: StageOutcome, split: str) -> list[str]:
    manifest = verify_manifest(Path(cache.checkpoint), check_hashes=False)
    return [str(Path(cache.checkpoint) / e["name"]) for e in manifest["files"] if e["name"].startswith(f"{split}/") and e["name"].endswith(".parquet")]


def select_metric(cfg: ExperimentConfig) -> str:
    return "val_accuracy"


def run_distillation(
    cfg: ExperimentConfig,
    data: PreparedData,
    run_dir: Path,
    teachers: StageOutcome,
    cache: StageOutcome | None,
    layer_maps: list[list[int]],
    callbacks: Sequence[Any] = (),
) -> StageOutcome:
    """Stage 3 in ``<run_dir>/distill`` (a rerun of the same run folder resumes from its latest checkpoint)."""
    import ray.train

    from mtbert_ray.train.distill import distill_loop

    started = time.time()
    student_alias = data.model_tokenizer[cfg.student.init_from]
    teacher_aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    if cache is not None:
        train = read_split(cache_files(cache, "train"))
        datasets = {"train": train, **_datasets(data, [student_alias], ["validation"], offsets=False)}
    else:
        datasets = _datasets(data, [*teacher_aliases, student_alias])
    metric = select_metric(cfg)
    print(f"[mtbert] stage 3: distilling a {cfg.student.num_layers}-layer student "
          f"({'teacher cache' if cache else 'teachers on the fly'})", flush=True)
    trainer = _trainer(
        distill_loop,
        {
            "experiment": cfg.model_dump(mode="json"),
            "data": data.to_dict(),
            "teachers_checkpoint": teachers.checkpoint,
            "use_cache": cache is not None,
            "layer_maps": layer_maps,
            "select_metric": metric,
        },
        cfg,
        "distill",
        run_dir,
        datasets,
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=metric, checkpoint_score_order="max"),
        callbacks=callbacks,
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(metric, "max") or result.checkpoint
    best_metrics = next((m for c, m in result.best_checkpoints if c.path == best.path), dict(result.metrics))
    return StageOutcome("distill", "", best.path, dict(best_metrics), False, time.time() - started)


# ---- export and parameter counts -----------------------------------------------------------------

def export_student(cfg: ExperimentConfig, data: PreparedData, checkpoint: Path, out: Path) -> Path:
    """Copy the best checkpoint's student, add its tokenizer, label map and the resolved config."""
    from mtbert_ray.models.hub import load_tokenizer
    from mtbert_ray.train.distill import STUDENT_DIR

    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    shutil.copytree(checkpoint / STUDENT_DIR, tmp)
    load_tokenizer(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code).save_pretrained(tmp)
    meta = json.loads((tmp / META_FILE).read_text())
    meta.update(
        max_length=cfg.data.max_length,
        pair=data.pair,
        init_from=cfg.student.init_from,
        teachers=list(cfg.teachers),
    )
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    (tmp / "experiment.yaml").write_text(dump_config(cfg))
    if out.exists():
        shutil.rmtree(out)
    os.rename(tmp, out)
    return out


def safetensors_params(path: Path) -> int:
    from safetensors import safe_open

    total = 0
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():
            n = 1
            for d in handle.get_slice(key).get_shape():
                n *= d
            total += n
    return total


def parameter_counts(teachers_dir: Path, student_dir: Path, names: Sequence[str]) -> dict[str, Any]:
    """Parameters of each teacher encoder (+ the shared head once) and of the exported student (as in Table 2)."""
    from mtbert_ray.export import HEAD_FILE
    from mtbert_ray.models.teachers import HEADS_FILE

    teacher_params = {
        name: sum(safetensors_params(p) for p in (teachers_dir / f"teacher_{i}").glob("*.safetensors"))
        for i, name in enumerate(names)
    }
    student = sum(safetensors_params(p) for p in student_dir.glob("model*.safetensors")) + safetensors_params(student_dir / HEAD_FILE)
    return {
        "teachers": teacher_params,
        "shared_head": safetensors_params(teachers_dir / HEADS_FILE),
        "student": student,
    }
