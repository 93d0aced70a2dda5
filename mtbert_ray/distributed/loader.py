"""Ray Data readers for the tokenized views and teacher caches, and the batches a stage's loop iterates.

Driver side: ``read_split(files, columns)`` → a Ray Dataset per split (``ray.data.read_parquet``,
or in-memory blocks for small splits), handed to the stage.
Worker side: ``batches_of`` → ``iter_torch_batches`` with the core's ``PadCollate`` (``core.collate``) as Ray Data's
collate class: flat dicts of tensors padded to the longest example of the batch (dynamic padding).

Splitting across Train workers (``SplitConfig``): the training split is split equally (every
worker takes the same number of steps, as data-parallel training needs; at most num_workers − 1
rows of an epoch are left out, different ones each epoch); validation, test and the teacher cache
are split without dropping a row, so metrics and the cache cover every example.

Shuffling: views store their rows in a seeded random order (``data.shards``); training then reads them in a new
seeded order each epoch through a seeded local shuffle buffer: a split read on the driver as in-memory blocks of
``BLOCK_ROWS`` (``randomize_block_order``, re-seeded per execution), a streamed split as its Parquet files in a new
seeded order (``read_parquet(shuffle=FileShuffleConfig(...))``). Not ``randomize_block_order`` for a streamed split:
it is an all-to-all step that holds every block of the epoch in the object store before the first batch, and under
``preserve_order`` (which the stages set, for reproducible runs) Ray 2.60 gives the streamed blocks back in file order
anyway — measured: the same order every epoch (``tests/test_loader_order.py``).

Two cores: Ray Data read tasks need a CPU that Train workers do not hold. The project starts
a local Ray with more logical CPUs than cores (``mtbert_ray.distributed.runtime.init_ray``) so that
workers + driver leave one free; on a cluster, leave at least one CPU per node unclaimed
(``resources.cpus_per_worker``) or add CPU-only nodes.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data
import torch
from ray.data import FileShuffleConfig, RandomSeedConfig
from ray.data.collate_fn import NumpyBatchCollateFn
from ray.train import DataConfig as _DataConfig

from mtbert_ray.core.collate import PadCollate
from mtbert_ray.distributed.compat import execution_options, restart_execution_count, shard_locality

TRAIN_SPLIT = "train"
BLOCK_ROWS = 1024  # rows per in-memory block: the unit of the per-epoch block shuffle
#: Splits up to this many bytes of Parquet are read on the driver (fast for small data); larger ones stream
#: through Ray Data's read tasks, so the driver's memory does not grow with the data.
MATERIALIZE_MAX_BYTES = 8 * 2**20  # ~50k rows of a two-tokenizer view; beyond, an epoch is long next to a read
STREAM_BLOCK_BYTES = 16 * 2**20  # blocks of a streamed split: what a worker holds at once is a few of these
SHUFFLE_BUFFER_MIN = 1000  # rows of the local shuffle buffer at least (16 batches when larger)


def read_split(files: Sequence[str], columns: Sequence[str] | None = None, materialize: bool | str = "auto",
               shuffle_seed: int | None = None, blocks: int | None = None, max_bytes: int | None = MATERIALIZE_MAX_BYTES,
               mix_seed: int | None = None):
    """A Ray Dataset of a view (or teacher-cache) split, projected to the columns asked for.

    ``materialize=False``: ``ray.data.read_parquet`` — streamed from Parquet by read tasks, again
    every epoch. ``True``: the split is read once on the driver with pyarrow and handed to Ray Data
    as in-memory blocks of ``BLOCK_ROWS`` (``ray.data.from_arrow``). ``"auto"``: ``True`` for a small
    split (≤ ``max_bytes`` of Parquet that fits comfortably in the object store; ``max_bytes=None``: any split
    that fits — for a stage in the calling process, which is the split's only reader: a streamed read there is
    the same bytes read by a task, and a training split read by tasks waits for all its blocks every epoch before
    their order is shuffled, 5–8 s for the demo's 116 MB cache against ~2 s read once here).
    ``shuffle_seed``: a new seeded order each epoch (for the training split): of the in-memory blocks, or of the
    files of a streamed split.
    ``blocks``: read into at least this many blocks (so an actor pool of that many workers all get input).
    ``mix_seed``: the files hold rows of several splits (labelled and unlabelled training rows): a read split's rows
    are put in one seeded random order before they are cut into blocks, so every block holds both kinds in their
    proportion; a streamed split mixes them by its per-epoch file order and the local shuffle buffer only (the
    teacher cache writes them interleaved into its files, ``distributed.teacher_cache.interleave``, so there every file holds both).
    """
    available = set(pq.read_schema(files[0]).names)
    keep = [c for c in columns if c in available] if columns is not None else None
    if materialize == "auto":
        materialize = fits_in_object_store(files, max_bytes=max_bytes)
    if materialize:
        table = pq.read_table(list(files), columns=keep)
        if mix_seed is not None:
            table = table.take(np.random.default_rng(mix_seed).permutation(table.num_rows))
        blocks = [table.slice(start, BLOCK_ROWS) for start in range(0, max(table.num_rows, 1), BLOCK_ROWS)]
        ds = ray.data.from_arrow(blocks)  # copied into the object store
        del table, blocks
        pa.default_memory_pool().release_unused()  # the driver's copy goes back to the system
    else:
        shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
        ds = ray.data.read_parquet(list(files), columns=keep, override_num_blocks=blocks, shuffle=shuffle)
        ds.context.target_max_block_size = STREAM_BLOCK_BYTES
    if shuffle_seed is not None and materialize:
        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    # The block (file) order of execution (epoch) e is seeded by (seed, e): Ray Data counts executions in the dataset's
    # context, which it copies from the process's current one — in a reused worker process that count is not 0.

    restart_execution_count(ds)
    return ds


def fits_in_object_store(files: Sequence[str], expansion: float = 4.0, share: float = 0.25,
                         max_bytes: int | None = MATERIALIZE_MAX_BYTES) -> bool:
    """At most ``max_bytes`` of Parquet (None: no cap), whose bytes × ``expansion`` (decompressed) fit within
    ``share`` of the cluster's object store."""
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    capacity = ray.cluster_resources().get("object_store_memory", 0)
    return (max_bytes is None or size <= max_bytes) and size * expansion <= share * capacity


class SplitConfig(_DataConfig):
    """Ray Train's ``DataConfig`` with two kinds of split: equal for training (every worker takes the
    same number of steps), and without dropping a row for every other dataset (evaluation, cache)."""

    def __init__(self, execution_options=None) -> None:
        super().__init__(datasets_to_split="all", execution_options=execution_options)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        output = [{} for _ in range(world_size)]
        locality_hints = worker_node_ids if shard_locality(self) else None
        for name, ds in datasets.items():
            if ds.name is None:
                ds.set_name(name)
            ds = ds.copy(ds)
            ds.context.execution_options = execution_options(self, name)
            splits = ds.streaming_split(world_size, equal=name == TRAIN_SPLIT, locality_hints=locality_hints)
            for i, split in enumerate(splits):
                output[i][name] = split
        return output


def split_config() -> SplitConfig:
    """Every dataset split across workers; block order preserved (reproducible single-worker runs)."""
    options = _DataConfig.default_ingest_options()
    options.preserve_order = True
    return SplitConfig(execution_options=options)


class RayPadCollate(NumpyBatchCollateFn):
    """A core ``PadCollate`` as Ray Data's collate class (``iter_torch_batches`` then feeds it numpy batches and moves
    its tensors to the device itself; a plain callable is deprecated there since Ray 2.47)."""

    def __init__(self, collate: PadCollate) -> None:
        self.collate = collate

    def __call__(self, batch: dict[str, np.ndarray]):
        return self.collate(batch)


def batches_of(dataset, batch_size: int, collate: PadCollate, device: torch.device | None = None,
               shuffle: tuple[int, int] | None = None):
    """Padded batches of a Ray dataset (shard) on ``device``. ``shuffle=(seed, epoch)``: training order — the
    dataset's blocks in their per-epoch seeded order (``read_split``) through a local shuffle buffer
    of max(1000, 16 × batch) rows seeded by (seed, epoch)."""
    device = device or torch.device("cpu")
    # pinned host batches: the copy to a GPU is asynchronous and runs at full PCIe speed (pageable memory halves it)
    kwargs: dict[str, Any] = {"batch_size": batch_size, "collate_fn": RayPadCollate(collate), "device": device,
                              "pin_memory": device.type == "cuda"}
    if shuffle is not None:
        seed, epoch = shuffle
        kwargs.update(local_shuffle_buffer_size=max(SHUFFLE_BUFFER_MIN, 16 * batch_size), local_shuffle_seed=seed * 1000 + epoch)
    return dataset.iter_torch_batches(**kwargs)
