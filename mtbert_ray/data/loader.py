"""Ray Data readers for the tokenized views and teacher caches, and the collate function that pads each batch.

Driver side: ``read_split(files, columns)`` → a Ray Dataset per split (``ray.data.read_parquet``,
or in-memory blocks for small splits), handed to the stage.
Worker side: ``iter_torch_batches(collate_fn=PadCollate(...))`` yields flat dicts of tensors —
``label``, ``example_id`` and ``<tokenization>.<column>`` per tokenization — padded to the longest
example of the batch (dynamic padding). ``inputs_for`` regroups one tokenization's columns into the
keyword arguments an encoder takes.

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
a local Ray with more logical CPUs than cores (``mtbert_ray.ray_runtime.init_ray``) so that
workers + driver leave one free; on a cluster, leave at least one CPU per node unclaimed
(``resources.cpus_per_worker``) or add CPU-only nodes.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

try:  # Ray's collate base class (keeps device transfer "auto" in iter_torch_batches) and Train's DataConfig
    from ray.data.collate_fn import NumpyBatchCollateFn as _CollateBase
    from ray.train import DataConfig as _DataConfig
except ImportError:  # pragma: no cover - no Ray: the torch-only core (steps, PadCollate) imports this module too
    _CollateBase = _DataConfig = object

from mtbert_ray.data.floats import stored_tensor
from mtbert_ray.data.tokenize import pad_token_batch

META_COLUMNS = ("example_id", "label")
TRAIN_SPLIT = "train"
BLOCK_ROWS = 1024  # rows per in-memory block: the unit of the per-epoch block shuffle
#: Splits up to this many bytes of Parquet are read on the driver (fast for small data); larger ones stream
#: through Ray Data's read tasks, so the driver's memory does not grow with the data.
MATERIALIZE_MAX_BYTES = 8 * 2**20  # ~50k rows of a two-tokenizer view; beyond, an epoch is long next to a read
STREAM_BLOCK_BYTES = 16 * 2**20  # blocks of a streamed split: what a worker holds at once is a few of these


def view_columns(tokenizations: Iterable[str], with_offsets: bool = True) -> list[str]:
    """The view columns needed for the given tokenizations (a projection for read_parquet)."""
    cols = list(META_COLUMNS)
    for tokenization in dict.fromkeys(tokenizations):
        cols += [f"{tokenization}.{c}" for c in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")]
        if with_offsets:
            cols += [f"{tokenization}.offset_start", f"{tokenization}.offset_end"]
    return cols


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
    teacher cache writes them interleaved into its files, ``train.cache.interleave``, so there every file holds both).
    """
    import pyarrow.parquet as pq
    import ray.data

    available = set(pq.read_schema(files[0]).names)
    keep = [c for c in columns if c in available] if columns is not None else None
    if materialize == "auto":
        materialize = fits_in_object_store(files, max_bytes=max_bytes)
    if materialize:
        import pyarrow as pa

        table = pq.read_table(list(files), columns=keep)
        if mix_seed is not None:
            table = table.take(np.random.default_rng(mix_seed).permutation(table.num_rows))
        blocks = [table.slice(start, BLOCK_ROWS) for start in range(0, max(table.num_rows, 1), BLOCK_ROWS)]
        ds = ray.data.from_arrow(blocks)  # copied into the object store
        del table, blocks
        pa.default_memory_pool().release_unused()  # the driver's copy goes back to the system
    else:
        from ray.data import FileShuffleConfig

        shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True) if shuffle_seed is not None else None
        ds = ray.data.read_parquet(list(files), columns=keep, override_num_blocks=blocks, shuffle=shuffle)
        ds.context.target_max_block_size = STREAM_BLOCK_BYTES
    if shuffle_seed is not None and materialize:
        from ray.data import RandomSeedConfig

        ds = ds.randomize_block_order(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=True))
    # The block (file) order of execution (epoch) e is seeded by (seed, e): Ray Data counts executions in the dataset's
    # context, which it copies from the process's current one — in a reused worker process that count is not 0.
    from mtbert_ray.ray_compat import restart_execution_count

    restart_execution_count(ds)
    return ds


def fits_in_object_store(files: Sequence[str], expansion: float = 4.0, share: float = 0.25,
                         max_bytes: int | None = MATERIALIZE_MAX_BYTES) -> bool:
    """At most ``max_bytes`` of Parquet (None: no cap), whose bytes × ``expansion`` (decompressed) fit within
    ``share`` of the cluster's object store."""
    import ray

    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    capacity = ray.cluster_resources().get("object_store_memory", 0)
    return (max_bytes is None or size <= max_bytes) and size * expansion <= share * capacity


class SplitConfig(_DataConfig):
    """Ray Train's ``DataConfig`` with two kinds of split: equal for training (every worker takes the
    same number of steps), and without dropping a row for every other dataset (evaluation, cache)."""

    def __init__(self, execution_options=None) -> None:
        super().__init__(datasets_to_split="all", execution_options=execution_options)

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        from mtbert_ray.ray_compat import execution_options, shard_locality

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


class PadCollate(_CollateBase):
    """numpy batch → flat dict of tensors, each tokenization's columns padded to the batch maximum.

    Float list columns (teacher-cache logits and states) are stacked (logits, float32) or zero-padded (states) in the
    precision they are stored in (``stored_dtype``: float16 / bfloat16 stay 16-bit, ``data.floats.stored_tensor``), so
    a batch crosses to the GPU in half the bytes; ``targets.cached_targets`` widens them to float32 on the device.
    """

    def __init__(self, pad_ids: Mapping[str, int], float_columns: Mapping[str, int] | None = None,
                 stored_dtype: str = "float32") -> None:
        self.pad_ids = dict(pad_ids)  # tokenization → pad token id
        self.float_columns = dict(float_columns or {})  # column → row width of a flattened [L, width] state (0 = flat vector)
        self.stored_dtype = stored_dtype

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {k: torch.tensor(np.asarray(batch[k], dtype=np.int64)) for k in META_COLUMNS if k in batch}
        for tokenization, pad in self.pad_ids.items():
            cols = {k.split(".", 1)[1]: batch[k] for k in batch if k.startswith(tokenization + ".")}
            if cols:
                for key, value in pad_token_batch(cols, pad).items():
                    out[f"{tokenization}.{key}"] = value
        for column, width in self.float_columns.items():
            if column in batch:
                out[column] = float_column(batch[column], width, self.stored_dtype if width else "float32")
        return out


def float_column(values: Sequence[np.ndarray], width: int, stored_dtype: str = "float32") -> torch.Tensor:
    """Rows of flat float lists → [B, n] (``width`` 0) or zero-padded [B, L_max, width], in the stored precision
    (float32, or float16 / bfloat16 for 16-bit states)."""
    rows = [np.asarray(v) for v in values]
    flat = stored_tensor(np.concatenate(rows) if rows else np.zeros(0, np.float32), stored_dtype)
    if width == 0:
        return flat.reshape(len(rows), -1).clone()
    lengths = torch.tensor([len(r) // width for r in rows], dtype=torch.int64)
    out = torch.zeros((len(rows), int(lengths.max()) if len(rows) else 0, width), dtype=flat.dtype)
    mask = torch.arange(out.shape[1])[None, :] < lengths[:, None]
    out[mask] = flat.reshape(-1, width)
    return out


def inputs_for(batch: Mapping[str, Any], tokenization: str) -> dict[str, torch.Tensor]:
    """One tokenization's columns as keyword arguments: input_ids, attention_mask, [token_type_ids,] offsets, …"""
    prefix = tokenization + "."
    return {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}
