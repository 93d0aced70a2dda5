"""Shared set-up of the benchmarks: the offline MiniLM teachers, rt_polarity, prepared stages, timing helpers.

Run the scripts through ``make bench`` (which points ``HF_HUB_CACHE`` at the offline hub cache on
this project's machines) or with ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` set yourself. Results of the
set-up stages (co-finetuned teachers, teacher caches) are kept in ``$MTBERT_BENCH_STORAGE``
(default ``benchmarks/.results``) and reused by every script.
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Ray workers import the package too: without an installed copy, they find it on PYTHONPATH.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM_L6 = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
DATA = REPO / "data" / "rt_polarity"
THREADS = 2  # CPUs per Train worker in every benchmark, and torch threads on the plain side


def storage() -> Path:
    path = Path(os.environ.get("MTBERT_BENCH_STORAGE", REPO / "benchmarks" / ".results")).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def experiment(limit_train: int = 600, **sections: Any) -> dict[str, Any]:
    """The benchmark experiment: both MiniLM teachers, a 2-layer student from MiniLM-L6, rt_polarity."""
    config: dict[str, Any] = {
        "name": "bench",
        "seed": 0,
        "teachers": [MINILM_L6, MINILM_L3],
        "student": {"init_from": MINILM_L6, "num_layers": 2},
        "data": {"source": "files", "path": str(DATA), "text_fields": ["sentence"], "limit_train": limit_train,
                 "limit_eval": 200, "max_length": 64, "cache_dir": str(storage() / "data-cache")},
        "cofinetune": {"epochs": 1, "lr": 2e-5, "head_lr": 1e-3, "batch_size": 32},
        "distill": {"epochs": 1, "lr": 1e-4, "batch_size": 32, "temperature": 2.0},
        "loss": {"hidden": False},
        "cache": {"enabled": True, "hidden": False},
        "resources": {"num_workers": 1, "cpus_per_worker": THREADS},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def prepared_stages(raw: dict[str, Any]):
    """(worker config, data, co-finetuned teachers, teacher cache or None, layer maps), built once and reused."""
    from mtbert_ray.config import validate_config
    from mtbert_ray.data.shards import prepare_data
    from mtbert_ray.models.teachers import read_ensemble_meta
    from mtbert_ray.pipeline import ensure_cofinetuned, ensure_teacher_cache, teacher_layer_maps, uses_cache, worker_config
    from mtbert_ray.ray_runtime import init_ray

    cfg = worker_config(validate_config(raw))
    init_ray(required_cpus=cfg.resources.num_workers * cfg.resources.cpus_per_worker)
    data = prepare_data(cfg.data, [*cfg.teachers, cfg.student.init_from])
    stages = storage() / "stages"
    teachers = ensure_cofinetuned(cfg, data, stages)
    maps = teacher_layer_maps(cfg, read_ensemble_meta(teachers.checkpoint)["depths"])
    cache = ensure_teacher_cache(cfg, data, stages, teachers, maps) if uses_cache(cfg) else None
    return cfg, data, teachers, cache, maps


def stage3_history(folder: str, cfg, data, teachers, cache, layer_maps) -> tuple[float, list[dict[str, Any]]]:
    """(fit() wall seconds, every epoch's metrics) of the real stage 3 (``pipeline.run_distillation``)
    in a fresh run folder under ``<storage>/<folder>``; ``cache=None`` runs the teachers on the fly.
    The per-epoch rows are the stage's ``history.jsonl`` (``train_seconds``, ``data_wait_seconds``, …)."""
    import uuid

    from mtbert_ray.pipeline import run_distillation
    from mtbert_ray.train.history import HISTORY_FILE, read_history

    run_dir = storage() / folder / f"run-{uuid.uuid4().hex[:8]}"
    wall, _ = timed(lambda: run_distillation(cfg, data, run_dir, teachers, cache, layer_maps))
    return wall, read_history(run_dir / "distill" / HISTORY_FILE, last_per_epoch=True)


def steady(seconds: list[float]) -> float:
    """Steady-state epoch time: the median of the epochs after the first (the first pays one-off
    warm-up on both sides — Ray Data starting its pipeline, torch its first allocations)."""
    return median(seconds[1:] or seconds)


def plain_batches(files: list[str], columns: list[str] | None, batch_size: int, collate, seed: int) -> Iterator[dict]:
    """The plain-PyTorch input pipeline: the same Parquet rows, shuffled with a seeded permutation,
    cut into batches and padded by the same ``PadCollate`` the Ray Data path uses."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(files, columns=columns)
    order = np.random.default_rng(seed).permutation(table.num_rows)
    table = table.take(order)
    for start in range(0, table.num_rows, batch_size):
        chunk = table.slice(start, batch_size)
        yield collate({name: chunk[name].to_numpy(zero_copy_only=False) for name in chunk.column_names})


def median(values: list[float]) -> float:
    return statistics.median(values)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {THREADS} threads"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · {machine()}", flush=True)
