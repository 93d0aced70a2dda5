"""Tokenized, content-addressed Parquet shards: one set per distinct tokenizer, one joined view per experiment.

Layout under ``data.cache_dir`` (default ``~/.cache/mtbert_ray``)::

    shards/<key>/manifest.json            key = hash(source content, options, tokenizer files, max_length)
    shards/<key>/<split>/part-00000.parquet   example_id, label, input_ids, attention_mask,
                                              [token_type_ids,] special_tokens_mask, offset_start, offset_end
    views/<key>/<split>/part-*.parquet    the shard sets an experiment needs, joined by example_id
                                          (sorted, checked equal, columns side by side);
                                          token columns prefixed ``<tokenizer alias>.``

Every folder is written under a temporary name and renamed into place with a manifest of
row counts and checksums (``mtbert_ray.storage``), so reruns and concurrent trials reuse
shards and never trust a half-written or altered one.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtbert_ray.config import DataConfig
from mtbert_ray.data.sources import RawDataset, load_source
from mtbert_ray.data.tokenize import TOKEN_COLUMNS, encode, uses_token_type_ids
from mtbert_ray.hashing import stable_hash
from mtbert_ray.models.hub import load_tokenizer
from mtbert_ray.storage import (
    default_cache_dir,
    file_entry,
    file_lock,
    building,
    publish_dir,
    verify_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ROWS_PER_PART = 20_000
ENCODE_BATCH = 2_000


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer identified by the content of its files (two hub ids with identical files share one)."""

    name: str  # the model id or folder it was loaded from (first one seen)
    fingerprint: str
    pad_token_id: int
    token_type_ids: bool

    @property
    def alias(self) -> str:
        """Column prefix of this tokenizer in joined views."""
        return f"tok_{self.fingerprint[:10]}"


def tokenizer_fingerprint(tokenizer) -> str:
    """Hash of what decides the token ids: the backend tokenizer (minus padding/truncation settings),
    class, special tokens and model input names."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("truncation", None)
    backend.pop("padding", None)
    return stable_hash(
        {
            "backend": backend,
            "class": type(tokenizer).__name__,
            "special": tokenizer.special_tokens_map,
            "inputs": list(tokenizer.model_input_names),
        },
        length=32,
    )


def tokenizer_spec(name: str, trust_remote_code: bool = False) -> TokenizerSpec:
    tok = load_tokenizer(name, trust_remote_code=trust_remote_code)
    return TokenizerSpec(name, tokenizer_fingerprint(tok), int(tok.pad_token_id or 0), uses_token_type_ids(tok))


@dataclass
class PreparedData:
    """What an experiment's Ray Train stages read: the joined view, labels and tokenizers per model."""

    dataset_key: str
    view_dir: str
    splits: dict[str, list[str]]  # split → Parquet files of the view
    rows: dict[str, int]
    label_names: list[str]
    pair: bool
    metrics: list[str]
    tokenizers: dict[str, TokenizerSpec]  # alias → spec
    model_tokenizer: dict[str, str]  # model id/folder → alias
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def eval_split(self) -> str:
        return "validation"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokenizers"] = {k: asdict(v) for k, v in self.tokenizers.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreparedData":
        data = dict(data)
        data["tokenizers"] = {k: TokenizerSpec(**v) for k, v in data["tokenizers"].items()}
        return cls(**data)


def dataset_key(raw: RawDataset, cfg: DataConfig) -> str:
    """Content of the source + every option that changes which rows/labels are used."""
    options = cfg.model_dump(include={
        "source", "task", "text_fields", "label_field", "num_labels", "mind_text", "unseen_labels",
        "limit_train", "limit_eval", "seed",
    })
    return stable_hash({"fingerprint": raw.fingerprint, "options": options, "labels": raw.label_names})


def prepare_data(
    cfg: DataConfig,
    models: Sequence[str],
    trust_remote_code: bool = False,
    raw: RawDataset | None = None,
) -> PreparedData:
    """Validate the source, tokenize it once per distinct tokenizer among ``models``, join the views."""
    raw = raw if raw is not None else load_source(cfg)
    key = dataset_key(raw, cfg)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    specs: dict[str, TokenizerSpec] = {}
    model_alias: dict[str, str] = {}
    for name in models:
        spec = tokenizer_spec(name, trust_remote_code)
        specs.setdefault(spec.alias, spec)
        model_alias[name] = spec.alias
    shard_dirs = {
        alias: ensure_shards(raw, key, spec, cfg.max_length, cache, trust_remote_code) for alias, spec in specs.items()
    }
    view = ensure_view(shard_dirs, cache)
    manifest = verify_manifest(view, check_hashes=False)
    splits = {s: [str(view / f["name"]) for f in manifest["files"] if f["name"].startswith(f"{s}/")] for s in raw.splits}
    rows = {s: int(len(raw.splits[s].frame)) for s in raw.splits}
    summary = {
        "dataset_key": key,
        "rows": rows,
        "labels": {s: _label_counts(raw, s) for s in raw.splits},
        "tokenizers": {
            alias: {"name": specs[alias].name, **verify_manifest(d, check_hashes=False)["stats"]} for alias, d in shard_dirs.items()
        },
    }
    return PreparedData(
        dataset_key=key,
        view_dir=str(view),
        splits=splits,
        rows=rows,
        label_names=list(raw.label_names),
        pair=raw.pair,
        metrics=list(raw.metrics),
        tokenizers=specs,
        model_tokenizer=model_alias,
        summary=summary,
        notes=list(raw.notes),
    )


def _label_counts(raw: RawDataset, split: str) -> dict[str, int]:
    counts = raw.splits[split].frame["label"].value_counts().to_dict()
    return {raw.label_names[i]: int(counts.get(i, 0)) for i in range(raw.num_labels)}


def ensure_shards(raw: RawDataset, key: str, spec: TokenizerSpec, max_length: int, cache: Path,
                  trust_remote_code: bool = False) -> Path:
    """The shard folder of (dataset, tokenizer, max_length): reused when valid, else built atomically."""
    shard_key = stable_hash({"v": FORMAT_VERSION, "dataset": key, "tokenizer": spec.fingerprint, "max_length": max_length})
    final = cache / "shards" / shard_key
    if verify_manifest(final) is not None:
        return final
    with file_lock(cache / "locks" / f"shards-{shard_key}.lock"):
        if verify_manifest(final) is not None:  # built by a concurrent process while we waited
            return final
        tokenizer = load_tokenizer(spec.name, trust_remote_code=trust_remote_code)
        with building(final) as tmp:
            files, stats = [], {}
            for split_name, split in raw.splits.items():
                log.info("tokenizing %s/%s with %s (%d rows)", key[:8], split_name, spec.name, len(split.frame))
                split_files, split_stats = _write_tokenized(tmp, split_name, split.frame, tokenizer, max_length, raw.pair)
                files += split_files
                stats[split_name] = split_stats
            write_manifest(tmp, files, kind="shards", key=shard_key, dataset=key, tokenizer=asdict(spec),
                           max_length=max_length, stats=stats, format=FORMAT_VERSION)
            return publish_dir(tmp, final)


def _write_tokenized(root: Path, split: str, frame, tokenizer, max_length: int, pair: bool):
    (root / split).mkdir(parents=True, exist_ok=True)
    files, lengths, truncated = [], [], 0
    n = len(frame)
    for part, start in enumerate(range(0, max(n, 1), ROWS_PER_PART)):
        chunk = frame.iloc[start : start + ROWS_PER_PART]
        columns: dict[str, list] = {}
        for b in range(0, len(chunk), ENCODE_BATCH):
            sub = chunk.iloc[b : b + ENCODE_BATCH]
            texts_b = sub["text_b"].tolist() if pair else None
            enc = encode(tokenizer, sub["text_a"].tolist(), texts_b, max_length)
            full = tokenizer(sub["text_a"].tolist(), texts_b, truncation=False, add_special_tokens=True,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            full_lengths = [len(x) for x in full]
            lengths += full_lengths
            truncated += sum(1 for x in full_lengths if x > max_length)
            for k, v in enc.items():
                columns.setdefault(k, []).extend(v)
        table = pa.table(
            {
                "example_id": pa.array(chunk["example_id"].to_numpy(), pa.int64()),
                "label": pa.array(chunk["label"].to_numpy(), pa.int64()),
                **{k: pa.array(v, pa.list_(pa.int32())) for k, v in columns.items()},
            }
        )
        path = root / split / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=4096)
        files.append({**file_entry(path, table.num_rows), "name": f"{split}/{path.name}"})
    arr = np.asarray(lengths) if lengths else np.zeros(1)
    stats = {
        "rows": n,
        "length_p50": float(np.percentile(arr, 50)),
        "length_p90": float(np.percentile(arr, 90)),
        "length_p99": float(np.percentile(arr, 99)),
        "length_max": int(arr.max()),
        "truncated": truncated,
        "truncation_rate": truncated / n if n else 0.0,
    }
    return files, stats


def ensure_view(shard_dirs: dict[str, Path], cache: Path) -> Path:
    """Join the shard sets by example_id into one Parquet view (token columns prefixed by alias)."""
    key = stable_hash({"v": FORMAT_VERSION, "shards": sorted((a, d.name) for a, d in shard_dirs.items())})
    final = cache / "views" / key
    if verify_manifest(final) is not None:
        return final
    with file_lock(cache / "locks" / f"view-{key}.lock"):
        if verify_manifest(final) is not None:
            return final
        with building(final) as tmp:
            manifests = {alias: verify_manifest(d, check_hashes=False) for alias, d in shard_dirs.items()}
            first = next(iter(manifests.values()))
            splits = sorted({f["name"].split("/")[0] for f in first["files"]})
            files = []
            for split in splits:
                joined = None
                for alias, folder in shard_dirs.items():
                    table = pq.read_table([folder / f["name"] for f in manifests[alias]["files"] if f["name"].startswith(f"{split}/")])
                    table = table.sort_by("example_id")
                    if joined is None:
                        joined = table.select(["example_id", "label"])
                    elif not table["example_id"].equals(joined["example_id"]):
                        raise RuntimeError(f"shard sets {sorted(shard_dirs)} disagree on the {split} example ids")
                    for name in table.column_names:
                        if name not in ("example_id", "label"):
                            joined = joined.append_column(f"{alias}.{name}", table[name])
                (tmp / split).mkdir()
                for part, start in enumerate(range(0, max(joined.num_rows, 1), ROWS_PER_PART)):
                    chunk = joined.slice(start, ROWS_PER_PART)
                    path = tmp / split / f"part-{part:05d}.parquet"
                    pq.write_table(chunk, path, row_group_size=4096)
                    files.append({**file_entry(path, chunk.num_rows), "name": f"{split}/{path.name}"})
            write_manifest(tmp, files, kind="view", key=key, shards={a: d.name for a, d in shard_dirs.items()},
                           token_columns=list(TOKEN_COLUMNS), format=FORMAT_VERSION)
            return publish_dir(tmp, final)
