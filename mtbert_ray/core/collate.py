"""The batch collation of every stage, in torch alone: a numpy batch of view (or teacher-cache) rows → a flat dict of
tensors — ``label``, ``example_id`` and ``<tokenization>.<column>`` per tokenization — each tokenization's columns padded
to the longest example of the batch (dynamic padding). ``inputs_for`` regroups one tokenization's columns into the
keyword arguments an encoder takes. Ray Data's readers wrap ``PadCollate`` in their own collate base class
(``distributed.loader.ray_collate``); the core never sees Ray.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mtbert_ray.data.columns import META_COLUMNS
from mtbert_ray.data.floats import stored_tensor
from mtbert_ray.data.tokenize import pad_token_batch


class PadCollate:
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
