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


def study_parser(description: str, name: str):
    """The arguments of a study run in resumable parts (``quality.py``, ``mixture_study.py``): the shared folder with
    the seeding tools, the sweep name, --resume, --analysis-only, --variants (a part of some rows) and --parts."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shared", default=os.environ.get("MTBERT_SHARED", str(REPO.parent / "shared")))
    parser.add_argument("--name", default=name)
    parser.add_argument("--resume", action="store_true", help="continue an interrupted part")
    parser.add_argument("--analysis-only", action="store_true", help="tables of what has run, no training")
    parser.add_argument("--variants", nargs="+", default=None, metavar="ROW",
                        help="run only these rows (in this order), as a further part of the study under --name")
    parser.add_argument("--parts", nargs="*", default=[], metavar="NAME",
                        help="further parts of this study (run with --variants) whose trials join the tables")
    return parser


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
        "distill": {"epochs": 1, "lr": 1e-4, "batch_size": 32},
        "loss": {"temperature": 2.0, "hidden": False},
        "cache": {"enabled": True, "hidden": False},
        "resources": {"num_workers": 1, "cpus_per_worker": THREADS},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) and isinstance(config.get(key), dict) else value
    return config


def prepared(raw: dict[str, Any]):
    """An ``Experiment`` of the benchmark config with stages 1 and 2 built (or reused)."""
    from mtbert_ray.config import validate_config
    from mtbert_ray.experiment.pipeline import Experiment

    exp = Experiment(validate_config(raw), storage=storage())
    exp.teacher_cache()
    return exp


def without_cache(exp):
    """The same experiment's context with the teachers on the fly instead of the cache."""
    return exp.ctx.with_updates(cache=None)


def stage3_history(folder: str, exp, ctx=None) -> tuple[float, list[dict[str, Any]]]:
    """(stage-3 wall seconds, every epoch's metrics) of the real stage 3 (``Experiment.distill``) in a fresh
    run folder under ``<storage>/<folder>``; ``ctx`` overrides the experiment's context (e.g. no cache).
    The per-epoch rows are the stage's ``history.jsonl`` (``train_seconds``, ``data_wait_seconds``, …)."""
    import uuid

    from mtbert_ray.core.history import HISTORY_FILE, read_history
    from mtbert_ray.experiment import stages

    run_dir = storage() / folder / f"run-{uuid.uuid4().hex[:8]}"
    wall, _ = timed(lambda: stages.distill(ctx or exp.ctx, run_dir))
    return wall, read_history(run_dir / "distill" / HISTORY_FILE, last_per_epoch=True)


def plain_step(ctx):
    """The stage-3 step and its optimization outside Ray (``train.loop.Optimization``): (step, module, optimization)."""
    import torch

    from mtbert_ray.core.loop import Optimization
    from mtbert_ray.core.steps.distill import DistillStep
    from mtbert_ray.core.training import seed_everything

    torch.set_num_threads(THREADS)
    seed_everything(ctx.config.seed)
    step = DistillStep(ctx.distill_spec())
    module = step.build(torch.device("cpu"))
    optimizer = torch.optim.Adam(step.optimizer_groups(), weight_decay=ctx.config.distill.weight_decay)
    return step, module, Optimization(optimizer)


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
