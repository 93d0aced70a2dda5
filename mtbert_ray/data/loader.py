"""Ray Data readers for the tokenized views, and the collate function that pads each batch.

Driver side: ``read_split(files, columns)`` → a Ray Dataset per split (``ray.data.read_parquet``,
or in-memory blocks for splits that fit the object store), handed to ``TorchTrainer(datasets=...)``.
Worker side: ``ray.train.get_dataset_shard(split).iter_torch_batches(collate_fn=PadCollate(...))``
yields flat dicts of tensors — ``label``, ``example_id`` and ``<alias>.<column>`` per tokenizer —
padded to the longest example of the batch (dynamic padding). ``inputs_for`` regroups one
tokenizer's columns into the keyword arguments an encoder takes.

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

try:  # Ray's collate base class (keeps device transfer "auto" in iter_torch_batches)
    from ray.data.collate_fn import NumpyBatchCollateFn as _CollateBase
except ImportError:  # pragma: no cover - older Ray
    _CollateBase = object

from mtbert_ray.data.tokenize import pad_token_batch

META_COLUMNS = ("example_id", "label")


def view_columns(aliases: Iterable[str], with_offsets: bool = True) -> list[str]:
    """The view columns needed for the given tokenizer aliases (a projection for read_parquet)."""
    cols = list(META_COLUMNS)
    for alias in dict.fromkeys(aliases):
        cols += [f"{alias}.input_ids", f"{alias}.attention_mask", f"{alias}.token_type_ids", f"{alias}.special_tokens_mask"]
        if with_offsets:
            cols += [f"{alias}.offset_start", f"{alias}.offset_end"]
    return cols


def read_split(files: Sequence[str], columns: Sequence[str] | None = None, materialize: bool | str = "auto"):
    """A Ray Dataset of a view (or teacher-cache) split, projected to the columns asked for.

    ``materialize=False``: ``ray.data.read_parquet`` — streamed from Parquet by read tasks,
    again every epoch (for splits larger than the object store). ``True``: the split is read
    once on the driver with pyarrow and handed to Ray Data as in-memory blocks
    (``ray.data.from_arrow``). ``"auto"``: ``True`` when it fits comfortably in the object store.
    Measured on 2 cores: a lazy Parquet read costs ~8 s per split per epoch (read tasks
    scheduled anew each time) and ``read_parquet().materialize()`` ~8 s per split up front;
    the driver-side read takes well under a second for the demo's splits.
    """
    import pyarrow.parquet as pq
    import ray.data

    available = set(pq.read_schema(files[0]).names)
    keep = [c for c in columns if c in available] if columns is not None else None
    if materialize == "auto":
        materialize = fits_in_object_store(files)
    if materialize:
        return ray.data.from_arrow(pq.read_table(list(files), columns=keep))
    return ray.data.read_parquet(list(files), columns=keep)


def fits_in_object_store(files: Sequence[str], expansion: float = 4.0, share: float = 0.25) -> bool:
    """Parquet bytes × ``expansion`` (decompressed) within ``share`` of the cluster's object store."""
    import ray

    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    capacity = ray.cluster_resources().get("object_store_memory", 0)
    return size * expansion <= share * capacity


class PadCollate(_CollateBase):
    """numpy batch → flat dict of tensors, each tokenizer's columns padded to the batch maximum.

    Float list columns (teacher-cache logits / weights / states) are stacked or padded as float32.
    """

    def __init__(self, pad_ids: Mapping[str, int], float_columns: Mapping[str, int] | None = None) -> None:
        self.pad_ids = dict(pad_ids)  # alias → pad token id
        self.float_columns = dict(float_columns or {})  # column → row width of a flattened [L, width] state (0 = flat vector)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {k: torch.tensor(np.asarray(batch[k], dtype=np.int64)) for k in META_COLUMNS if k in batch}
        for alias, pad in self.pad_ids.items():
            cols = {k.split(".", 1)[1]: batch[k] for k in batch if k.startswith(alias + ".")}
            if cols:
                for key, value in pad_token_batch(cols, pad).items():
                    out[f"{alias}.{key}"] = value
        for column, width in self.float_columns.items():
            if column in batch:
                out[column] = _float_column(batch[column], width)
        return out


def _float_column(values: np.ndarray, width: int) -> torch.Tensor:
    rows = [np.asarray(v, dtype=np.float32) for v in values]
    if width == 0:
        return torch.from_numpy(np.stack(rows))
    lengths = [len(r) // width for r in rows]
    out = np.zeros((len(rows), max(lengths), width), dtype=np.float32)
    for i, r in enumerate(rows):
        out[i, : lengths[i]] = r.reshape(lengths[i], width)
    return torch.from_numpy(out)


def inputs_for(batch: Mapping[str, Any], alias: str) -> dict[str, torch.Tensor]:
    """One tokenizer's columns as keyword arguments: input_ids, attention_mask, [token_type_ids,] offsets, …"""
    prefix = alias + "."
    return {k[len(prefix):]: v for k, v in batch.items() if k.startswith(prefix)}
