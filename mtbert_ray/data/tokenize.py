"""Tokenize text (single sentences or pairs) with global character offsets, and pad batches.

Offsets are *global*: in a pair, the second text's offsets are shifted by ``len(text_a) + 1``,
as if the two texts were joined by one separator character. This makes every token's span
unique within an example, which is what cross-tokenizer alignment needs.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

#: Per-token columns of a tokenized example (all variable-length int lists).
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_start", "offset_end")


def uses_token_type_ids(tokenizer: PreTrainedTokenizerBase) -> bool:
    return "token_type_ids" in tokenizer.model_input_names


def encode(
    tokenizer: PreTrainedTokenizerBase,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    max_length: int = 128,
) -> dict[str, list[list[int]]]:
    """Tokenize without padding; truncate pairs longest-first to ``max_length``.

    Returns per-example lists for the keys of ``TOKEN_COLUMNS`` (``token_type_ids`` only when
    the tokenizer's model uses them), plus ``num_tokens_untruncated`` (for truncation stats).
    """
    texts_a = list(texts_a)
    texts_b = list(texts_b) if texts_b is not None else None
    enc = tokenizer(
        texts_a,
        texts_b,
        truncation=True,
        max_length=max_length,
        return_offsets_mapping=True,
        return_special_tokens_mask=True,
        return_attention_mask=True,
        return_token_type_ids=uses_token_type_ids(tokenizer),
        return_overflowing_tokens=False,
        return_length=False,
    )
    out: dict[str, list[list[int]]] = {k: [] for k in TOKEN_COLUMNS}
    if not uses_token_type_ids(tokenizer):
        del out["token_type_ids"]
    for row in range(len(texts_a)):
        seq_ids = enc.sequence_ids(row)
        shift = len(texts_a[row]) + 1
        starts, ends = [], []
        for (start, end), seq in zip(enc["offset_mapping"][row], seq_ids):
            if seq == 1:
                start, end = start + shift, end + shift
            starts.append(start)
            ends.append(end)
        out["offset_start"].append(starts)
        out["offset_end"].append(ends)
        for key in ("input_ids", "attention_mask", "special_tokens_mask"):
            out[key].append(list(enc[key][row]))
        if "token_type_ids" in out:
            out["token_type_ids"].append(list(enc["token_type_ids"][row]))
    return out


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
    for key in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_start", "offset_end"):
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
