"""Tokenize text (single sentences or pairs) with global character offsets, and pad batches.

Offsets are *global*: in a pair, the second text's offsets are shifted by ``len(text_a) + 1``,
as if the two texts were joined by one separator character. This makes every token's span
unique within an example, which is what cross-tokenizer alignment needs.

``encode_arrow`` is the fast path used to write shards: one untruncated batch-encode of all texts with
the Rust tokenizer (which also gives the untruncated lengths for the statistics), a second, truncated
encode only of the rows longer than ``max_length``, and Arrow list columns built from flat numpy arrays
of just the fields a shard stores.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain

import numpy as np
import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

#: Per-token columns of a tokenized example (all variable-length int lists).
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_start", "offset_end")


def uses_token_type_ids(tokenizer: PreTrainedTokenizerBase) -> bool:
    return "token_type_ids" in tokenizer.model_input_names


def _backend_encode(tokenizer, texts_a, texts_b, max_length: int | None):
    """The Rust tokenizer's ``encode_batch`` (special tokens added, no padding; truncated longest-first to
    ``max_length`` when given) — the same encodings as ``tokenizer(...)``, without converting every field of
    every row to Python first."""
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    if max_length is None:
        backend.no_truncation()
    else:
        backend.enable_truncation(max_length, strategy="longest_first")
    inputs = list(zip(texts_a, texts_b)) if texts_b is not None else list(texts_a)
    return backend.encode_batch(inputs, add_special_tokens=True)


def _flat(rows: Sequence[Sequence[int]], total: int) -> np.ndarray:
    return np.fromiter(chain.from_iterable(rows), dtype=np.int32, count=total)


def encode_arrow(
    tokenizer: PreTrainedTokenizerBase,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    max_length: int = 128,
) -> tuple[dict[str, pa.ListArray], np.ndarray]:
    """(columns of ``TOKEN_COLUMNS`` as Arrow ``list<int32>`` arrays, untruncated lengths [n]).

    No padding; pairs are truncated longest-first to ``max_length`` (the tokenizer's own rule).
    ``token_type_ids`` only when the tokenizer's model uses them.
    """
    texts_a = list(texts_a)
    texts_b = list(texts_b) if texts_b is not None else None
    encodings = _backend_encode(tokenizer, texts_a, texts_b, None)
    full_lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(texts_a))
    long = np.flatnonzero(full_lengths > max_length)
    if len(long):
        cut = _backend_encode(tokenizer, [texts_a[i] for i in long], [texts_b[i] for i in long] if texts_b is not None else None,
                              max_length)
        for j, i in enumerate(long):
            encodings[i] = cut[j]
    lengths = np.fromiter((len(e) for e in encodings), dtype=np.int64, count=len(texts_a))
    total = int(lengths.sum())
    offsets = np.zeros(len(texts_a) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    spans = np.array(list(chain.from_iterable(e.offsets for e in encodings)), dtype=np.int32).reshape(total, 2)
    if texts_b is not None:
        second = np.fromiter((s == 1 for e in encodings for s in e.sequence_ids), dtype=bool, count=total)
        shift = np.repeat(np.asarray([len(a) + 1 for a in texts_a], dtype=np.int32), lengths)
        spans = spans + (second * shift)[:, None]

    def column(values: np.ndarray) -> pa.ListArray:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.int32()))

    out = {
        "input_ids": column(_flat((e.ids for e in encodings), total)),
        "attention_mask": column(np.ones(total, dtype=np.int32)),
        "special_tokens_mask": column(_flat((e.special_tokens_mask for e in encodings), total)),
        "offset_start": column(np.ascontiguousarray(spans[:, 0])),
        "offset_end": column(np.ascontiguousarray(spans[:, 1])),
    }
    if uses_token_type_ids(tokenizer):
        out["token_type_ids"] = column(_flat((e.type_ids for e in encodings), total))
    return {k: out[k] for k in TOKEN_COLUMNS if k in out}, full_lengths


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    max_length: int = 128,
) -> dict[str, list[list[int]]]:
    """``encode_arrow`` as Python lists (per-example lists for the keys of ``TOKEN_COLUMNS``)."""
    columns, _ = encode_arrow(tokenizer, texts_a, texts_b, max_length)
    return {k: v.to_pylist() for k, v in columns.items()}


def pad_token_batch(
    columns: Mapping[str, Sequence[Sequence[int]] | np.ndarray],
    pad_token_id: int = 0,
) -> dict[str, torch.Tensor]:
    """Dynamic padding of one tokenization's columns to the longest example in the batch.

    Returns input_ids, attention_mask, special_tokens_mask, [token_type_ids,] and
    ``offsets`` [B, L, 2] as int64 tensors. Padding: ``pad_token_id`` for input ids, 0 elsewhere.
    """
    ids = columns["input_ids"]
    batch = len(ids)
    length = max(len(x) for x in ids)
    out: dict[str, torch.Tensor] = {}
    for key in TOKEN_COLUMNS:
        if key not in columns:
            continue
        fill = pad_token_id if key == "input_ids" else 0
        arr = np.full((batch, length), fill, dtype=np.int64)
        for i, seq in enumerate(columns[key]):
            arr[i, : len(seq)] = seq
        out[key] = torch.from_numpy(arr)
    if "offset_start" in out:
        out["offsets"] = torch.stack([out.pop("offset_start"), out.pop("offset_end")], dim=-1)
    return out
