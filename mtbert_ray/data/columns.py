"""The columns of a tokenized view (``data.shards``) and of a teacher cache: what a stage projects its reads to."""
from __future__ import annotations

from collections.abc import Iterable

META_COLUMNS = ("example_id", "label")
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask")
OFFSET_COLUMNS = ("offset_start", "offset_end")


def view_columns(tokenizations: Iterable[str], with_offsets: bool = True) -> list[str]:
    """The view columns needed for the given tokenizations (a projection for read_parquet)."""
    cols = list(META_COLUMNS)
    for tokenization in dict.fromkeys(tokenizations):
        cols += [f"{tokenization}.{c}" for c in TOKEN_COLUMNS]
        if with_offsets:
            cols += [f"{tokenization}.{c}" for c in OFFSET_COLUMNS]
    return cols
