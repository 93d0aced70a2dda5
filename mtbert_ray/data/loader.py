"""Ray Data readers for the tokenized views, and the collate function that pads each batch.

Driver side: ``ray_datasets(prepared, columns)`` → {"train": Dataset, "validation": Dataset}
(``ray.data.read_parquet``), handed to ``TorchTrainer(datasets=...)``.
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


def read_split(files: Sequence[str], columns: Sequence[str] | None = None):
    """``ray.data.read_parquet`` of a view split, keeping only the columns that exist and are asked for."""
    import pyarrow.parquet as pq
    import ray.data

    available = set(pq.read_schema(files[0]).names)
    keep = [c for c in columns if c in available] if columns is not None else None
    return ray.data.read_parquet(list(files), columns=keep, ray_remote_args={"num_cpus": 0.5})


class PadCollate(_CollateBase):
    """numpy batch → flat dict of tensors, each tokenizer's columns padded to the batch maximum.

    Float list columns (teacher-cache logits / weights / states) are stacked or padded as float32.
    """

    def __init__(self, pad_ids: Mapping[str, int], float_columns: Mapping[str, int] | None = None) -> None:
        self.pad_ids = dict(pad_ids)  # alias → pad token id
        self.float_columns = dict(float_columns or {})  # column → row width of a flattened [L, width] state (0 = flat vector)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {k: torch.as_tensor(np.asarray(batch[k], dtype=np.int64)) for k in META_COLUMNS if k in batch}
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
