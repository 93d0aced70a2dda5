"""Stage 2 — the teacher-output cache, built in the stage's own process or by Ray Data batch inference.

The cached splits (``experiment.stages.CACHE_SPLITS``: the labelled and unlabelled training rows) of the experiment's view stream through
frozen teachers (run in ``resources.precision``), and this process writes the rows to Parquet in the
view's order as they come (``write_in_order``): memory stays bounded by a few blocks whatever the
number of rows, no row is dropped or repeated, and a cache built again holds its rows in the same
order. With unlabelled text the two kinds of rows are written interleaved in proportion to their counts
(``interleave``) into the one folder ``train/`` (``TRAINING_ROWS``; a row is unlabelled by its label −1): every
file, and so every streamed block, holds both, where one folder per split met only at file granularity
(8,192 rows) in a streamed split — batches of unlabelled rows alone, with no task loss (an actor pool runs the
splits one after the other, and its parts are interleaved on the driver afterwards: one more pass over the cache).

Where the teachers run follows the stage's execution: in this process for an in-process stage (the trial's own
reservation: no Ray task or actor, so nothing can wait on a CPU the trial holds), else an actor pool (``map_batches``:
one actor per configured worker, each with the worker's CPUs and GPU share; a failed block is retried by Ray Data; a
pool that cannot start is reported, then given up on). Each row holds what ``mtbert_ray.core.targets.cache_columns`` makes
of it: logits, the student's token columns and, with ``cache.hidden``, the aligned states of the mapped layers in
``cache.dtype``.

Before building, the cache's size is estimated from the data's token statistics
(``estimate_cache_bytes``) and printed; a cache larger than ``cache.max_gb`` is refused with the
switches that shrink it.
"""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
import ray.data
import torch

from mtbert_ray.common.metric_names import NO_LABEL
from mtbert_ray.common.progress import Progress, emit, format_progress
from mtbert_ray.config import ResourcesConfig
from mtbert_ray.core.collate import PadCollate
from mtbert_ray.core.targets import cache_columns, teacher_targets
from mtbert_ray.core.training import autocast, configure_device, training_device
from mtbert_ray.data.columns import view_columns
from mtbert_ray.distributed.loader import read_split
from mtbert_ray.distributed.needs import DATA_READ_CPUS
from mtbert_ray.distributed.runtime import worker_start_timeout
from mtbert_ray.distributed.waiting import DEFAULT_WAIT_S, patiently
from mtbert_ray.models.hub import quiet_transformers
from mtbert_ray.models.teachers import TeacherEnsemble
from mtbert_ray.store.stage import Built, build_dir

ROWS_PER_FILE = 8192
TRAINING_ROWS = "train"  # the cache's one folder of training rows, labelled and unlabelled interleaved
T = TypeVar("T")
BLOCK_BYTES = 16 * 2**20  # Ray Data's output blocks of the actors: their memory is a few of these, whatever the rows


@dataclass
class CacheJob:
    """What building a teacher cache needs, from the experiment's context (``experiment.stages.teacher_cache``): the
    co-finetuned teachers, the tokenizations, the splits' files and rows, what is stored, and where the teachers run."""

    teachers_checkpoint: str
    teacher_tokenizations: list[str]  # each teacher's, in the teachers' order
    student_tokenization: str
    pad_ids: dict[str, int]
    split_files: dict[str, list[str]]  # the view's files of each split cached (``CACHE_SPLITS``)
    split_rows: dict[str, int]
    batch_size: int  # rows per teacher forward (the distillation micro-batch)
    layer_maps: list[list[int]] | None  # the mapped layers whose states are cached; None: logits only
    dtype: str  # the storage dtype of cached states
    precision: str
    resources: ResourcesConfig
    trust_remote_code: bool = False

    @property
    def hidden(self) -> bool:
        return self.layer_maps is not None

    @property
    def splits(self) -> list[str]:
        return list(self.split_files)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "resources": self.resources.model_dump(mode="json")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CacheJob":
        return cls(**{**data, "resources": ResourcesConfig.model_validate(data["resources"])})


class TeacherCacheWriter:
    """Frozen teachers → the cache rows of one batch (``targets.cache_columns``): a Ray Data actor of the pool, or
    called by an in-process stage itself."""

    def __init__(self, job: dict[str, Any], counter=None) -> None:
        quiet_transformers()
        self.job = job = CacheJob.from_dict(job)
        resources = job.resources
        self.device = training_device(resources.use_gpu)  # no silent CPU fall-back
        configure_device(self.device, None if resources.use_gpu else resources.cpus_per_worker)
        self.ensemble = TeacherEnsemble.from_pretrained(job.teachers_checkpoint, job.trust_remote_code).to(self.device).eval()
        pads = job.pad_ids
        self.collate = PadCollate({t: pads[t] for t in dict.fromkeys([*job.teacher_tokenizations, job.student_tokenization])})
        self.counter = counter

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        job = self.job
        tensors = {k: v.to(self.device) for k, v in self.collate(batch).items()}
        with torch.no_grad(), autocast(self.device, job.precision):
            logits, states = teacher_targets(self.ensemble, tensors, job.teacher_tokenizations, job.student_tokenization,
                                             job.layer_maps)
        table = cache_columns(tensors, logits.float(), states, job.student_tokenization, job.dtype)
        if self.counter is not None:
            self.counter.add.remote(table.num_rows)
        return table


def _counter_class():
    @ray.remote(num_cpus=0)
    class RowCounter:
        def __init__(self) -> None:
            self.rows = 0

        def add(self, n: int) -> None:
            self.rows += n

        def value(self) -> int:
            return self.rows

    return RowCounter


def build_teacher_cache(job: CacheJob, folder: Path) -> Built:
    """Write ``<build>/train/*.parquet`` with the rows of every split of the job (the training rows:
    ``experiment.stages.CACHE_SPLITS``, interleaved); check every row is there.

    In the calling process when the stage runs there (``resources.in_process``: a sweep trial then builds its cache
    inside the resources it reserved, ``distributed.needs``); else through an actor pool of ``num_workers`` actors."""
    splits = job.splits
    started = time.time()
    with build_dir(folder) as tmp:
        if job.resources.in_process:
            _write_in_process(job, tmp)
        else:
            _write_with_actor_pool(job, tmp)
        written = _rows_written(tmp, splits)
        for split in splits:
            if written[split] != job.split_rows[split]:
                raise RuntimeError(f"teacher cache: {written[split]} {split} rows written, expected {job.split_rows[split]}")
        seconds = time.time() - started
        layout = {"layout": "interleaved"} if len(splits) > 1 else {}
        return Built(tmp, {"rows": written, "hidden": job.hidden, "dtype": job.dtype, "seconds": seconds,
                           "examples_per_s": sum(written.values()) / seconds if seconds > 0 else 0.0, **layout})


def interleave(streams: Mapping[str, Iterable[T]], rows: Mapping[str, int],
               size: Callable[[T], int] = lambda table: table.num_rows) -> Iterator[T]:
    """The items of several streams merged in proportion to their row counts ``rows``: the next item comes from the
    stream furthest behind its share — the smallest done_s / rows_s (ties: the first named) — so after every item
    each stream has given about the same fraction of its rows; every item of every stream, each stream in its order.

    With 4,000 labelled and 12,000 unlabelled rows in batches of 64, one labelled batch follows every three unlabelled ones."""
    iterators = {name: iter(stream) for name, stream in streams.items()}
    done = dict.fromkeys(iterators, 0)
    while iterators:
        name = min(iterators, key=lambda s: done[s] / max(rows.get(s, 0), 1))
        item = next(iterators[name], None)
        if item is None:
            del iterators[name]
            continue
        done[name] += size(item)
        yield item


def _write_in_process(job: CacheJob, tmp: Path) -> None:
    """The teachers in this process, the view read with pyarrow one micro-batch at a time: no Ray task or actor."""
    writer = TeacherCacheWriter(job.to_dict())
    columns = view_columns([*job.teacher_tokenizations, job.student_tokenization])
    progress = Progress("[teacher cache]", sum(job.split_rows.values()), unit="rows")
    done = 0

    def tables(split: str) -> Iterator[pa.Table]:
        nonlocal done
        for batch in local_batches(job.split_files[split], columns, job.batch_size):
            table = writer(batch)
            done += table.num_rows
            progress.update(done)
            yield table

    write_in_order(interleave({s: tables(s) for s in job.splits}, job.split_rows), tmp / TRAINING_ROWS, ROWS_PER_FILE)


def local_batches(files: Sequence[str], columns: Sequence[str], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Rows of Parquet ``files`` in order, as numpy batches of ``batch_size`` (Ray Data's ``batch_format="numpy"``:
    list columns as object arrays of arrays); at most one batch and one file's row group in memory."""
    pending: list[pa.RecordBatch] = []
    rows = 0
    for path in files:
        parquet = pq.ParquetFile(path)
        keep = [c for c in columns if c in parquet.schema_arrow.names]
        for record in parquet.iter_batches(batch_size=batch_size, columns=keep):
            pending.append(record)
            rows += record.num_rows
            while rows >= batch_size:
                table = pa.Table.from_batches(pending)
                yield _numpy_batch(table.slice(0, batch_size))
                rest = table.slice(batch_size)
                pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield _numpy_batch(pa.Table.from_batches(pending))


def _numpy_batch(table: pa.Table) -> dict[str, np.ndarray]:
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def _write_with_actor_pool(job: CacheJob, tmp: Path) -> None:
    """Ray Data batch inference: ``num_workers`` actors of the workers' CPUs (and GPU), the driver writing in order.

    While no rows come (actors or read tasks that cannot be scheduled) it says so every minute, and gives up after
    ``resources.worker_start_timeout_s`` (``waiting.patiently``)."""
    resources, splits = job.resources, job.splits
    tokenizations = [*job.teacher_tokenizations, job.student_tokenization]
    total = sum(job.split_rows.values())
    gpus = resources.gpus_per_worker if resources.use_gpu else 0
    asks = (f"{resources.num_workers} cache actor(s) × {resources.cpus_per_worker:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
            + f" and {DATA_READ_CPUS:g} CPU for Ray Data's read tasks")
    timeout = worker_start_timeout(resources) or DEFAULT_WAIT_S
    counter = _counter_class().remote()
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(counter, total, done), daemon=True)
    watcher.start()
    try:
        for split in splits:
            ds = read_split(job.split_files[split], view_columns(tokenizations), materialize=False,
                            blocks=max(8, 4 * resources.num_workers))
            ds.context.target_max_block_size = BLOCK_BYTES
            ds.context.execution_options.preserve_order = True  # the actors' output in the view's order
            rows = ds.map_batches(
                TeacherCacheWriter,
                fn_constructor_kwargs={"job": job.to_dict(), "counter": counter},
                batch_size=job.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=resources.num_workers),
                num_cpus=resources.cpus_per_worker,
                num_gpus=gpus,
            )
            blocks = rows.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=1)
            write_in_order(patiently(blocks, f"stage 2, teacher cache ({split})", asks, timeout,
                                     "resources.worker_start_timeout_s"), _part_folder(tmp, split, splits), ROWS_PER_FILE)
    finally:
        done.set()
        watcher.join(timeout=5)
        ray.kill(counter)
    if len(splits) > 1:  # the pool ran the splits one after the other: interleave their rows on the way to train/
        parts = {s: _part_folder(tmp, s, splits) for s in splits}
        write_in_order(interleave({s: _file_batches(folder, job.batch_size) for s, folder in parts.items()}, job.split_rows),
                       tmp / TRAINING_ROWS, ROWS_PER_FILE)
        for folder in parts.values():
            shutil.rmtree(folder)


def _part_folder(tmp: Path, split: str, splits: Sequence[str]) -> Path:
    """Where the pool writes ``split``: ``train/`` itself for a cache of one split, else a folder interleaved later."""
    return tmp / TRAINING_ROWS if len(splits) == 1 else tmp / f"part.{split}"


def _file_batches(folder: Path, batch_size: int) -> Iterator[pa.Table]:
    for path in sorted(folder.glob("*.parquet")):
        for record in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
            yield pa.Table.from_batches([record])


def write_in_order(tables: Iterable[pa.Table], folder: Path, rows_per_file: int) -> None:
    """``tables`` (a dataset's blocks, in its order) written by this process as ``part-NNNNN.parquet`` files of at least
    ``rows_per_file`` rows (one row group per table).

    The cache's row order is the student's training order (its seeded block shuffle starts from it), so a cache
    built again must hold its rows in the same order to train the same student from the same seed. Ray Data's
    ``write_parquet`` after the actor pool does not keep it, even with ``preserve_order``: in Ray 2.60 the blocks
    of a 128-row split came back reordered in 1–2 of every 6 builds (e.g. 0, 1, 4, 5, 2, 3, 6, 7), while iterating the
    same dataset gave them in order every time.
    """
    folder.mkdir(parents=True, exist_ok=True)
    writer, part, in_file = None, 0, 0
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(folder / f"part-{part:05d}.parquet", table.schema)
            writer.write_table(table)
            in_file += table.num_rows
            if in_file >= rows_per_file:
                writer.close()
                writer, part, in_file = None, part + 1, 0
    finally:
        if writer is not None:
            writer.close()


def _rows_written(root: Path, splits: Sequence[str]) -> dict[str, int]:
    """Rows of each split in ``root/train/``: all of them for one split; else counted by label (−1: unlabelled)."""
    files = sorted((root / TRAINING_ROWS).glob("*.parquet"))
    if len(splits) == 1:
        return {splits[0]: sum(pq.read_metadata(p).num_rows for p in files)}
    unlabelled = sum(pc.sum(pc.equal(pq.read_table(p, columns=["label"])["label"], NO_LABEL)).as_py() or 0 for p in files)
    total = sum(pq.read_metadata(p).num_rows for p in files)
    return {s: (unlabelled if s != "train" else total - unlabelled) for s in splits}


def _watch(counter, total: int, done: threading.Event, every_s: float = 10.0) -> None:
    """Progress of the cache build from the rows the actors have counted, every ``every_s`` seconds."""
    started = time.monotonic()
    while not done.wait(every_s):
        try:
            rows = ray.get(counter.value.remote(), timeout=5)
        except Exception:  # noqa: BLE001 - progress is best effort
            continue
        if rows:
            emit(format_progress("[teacher cache]", rows, total, time.monotonic() - started, unit="rows"))
