"""Tokenized, content-addressed Parquet shards: one set per tokenization, one joined view per experiment.

Two words used everywhere: a **tokenization** is what one distinct tokenizer makes of a dataset,
named ``tok_<fingerprint>`` (two hub ids with identical tokenizer files share one; its columns
are prefixed ``<tokenization>.`` in views and batches); a model's tokenization is
``PreparedData.model_tokenization[model]``.

Layout under ``data.cache_dir`` (default ``~/.cache/mtbert_ray``), each a stage of ``mtbert_ray.store.stage``::

    shards/<key>/…/<split>/part-*.parquet   key = hash(source content, options incl. data.seed, tokenizer files,
                                            max_length): example_id, label, input_ids, attention_mask,
                                            [token_type_ids,] special_tokens_mask, offset_start, offset_end
    views/<key>/…/<split>/part-*.parquet    the shard sets an experiment needs, part by part side by side
                                            (example ids checked equal, columns prefixed by tokenization)

Every shard set stores a split's rows in the same seeded random order (``data.seed``): a source sorted by
label still gives mixed batches from the first step, and a view is a part-by-part concatenation, so
tokenizing and joining hold one part (``ROWS_PER_PART`` rows) of tokens at a time; the texts themselves are held
whole while they are shuffled (the transfer text in Arrow: ``sources.load_unlabeled``). Reruns and concurrent
trials reuse shards and views and never trust a half-written or altered one.
"""
from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mtbert_ray.common.hashing import stable_hash
from mtbert_ray.common.progress import format_progress
from mtbert_ray.config import DataConfig
from mtbert_ray.config.keys import DATASET
from mtbert_ray.data.augment import with_augmented
from mtbert_ray.data.sources import RawDataset, load_source
from mtbert_ray.data.tokenize import encode_arrow, uses_token_type_ids
from mtbert_ray.models.hub import load_tokenizer
from mtbert_ray.store.files import default_cache_dir, file_entry, write_manifest
from mtbert_ray.store.stage import Built, build_dir, reuse_or_build

log = logging.getLogger(__name__)

FORMAT_VERSION = 3
ROWS_PER_PART = 20_000
ENCODE_BATCH = 2_000
ROW_GROUP = 2_048
PROGRESS_EVERY_S = 10.0


@dataclass(frozen=True)
class TokenizerSpec:
    """A tokenizer identified by the content of its files (two hub ids with identical files share one)."""

    name: str  # the model id or folder it was loaded from (first one seen)
    fingerprint: str
    pad_token_id: int
    token_type_ids: bool

    @property
    def tokenization(self) -> str:
        """The name of this tokenizer's tokenization: the column prefix in views and batches."""
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
    """What an experiment's stages read: the joined view, labels, metrics and each model's tokenization."""

    dataset_key: str
    view_dir: str
    splits: dict[str, list[str]]  # split → Parquet files of the view
    rows: dict[str, int]
    label_names: list[str]
    pair: bool
    metrics: list[str]  # the task's reported metrics, main (default selection) metric first
    tokenizations: dict[str, TokenizerSpec]  # tokenization → its tokenizer
    model_tokenization: dict[str, str]  # model id/folder → tokenization
    labelled: dict[str, bool] = field(default_factory=dict)  # split → has gold labels (GLUE test: no)
    unlabeled_key: str | None = None  # data.unlabeled's content + options (None: no unlabelled split); dataset_key is the labelled data's
    submission_file: str | None = None  # GLUE: the benchmark's file name for test predictions (e.g. SST-2.tsv)
    submission_labels: list[str] | None = None  # GLUE: how each class is written in that file
    summary: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def mean_tokens(self, tokenization: str, split: str = "train") -> float:
        """Mean (truncated) tokens per example of one tokenization of a split."""
        return float(self.summary["tokenizers"][tokenization][split]["length_mean"])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tokenizations"] = {k: asdict(v) for k, v in self.tokenizations.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreparedData":
        data = dict(data)
        data["tokenizations"] = {k: TokenizerSpec(**v) for k, v in data["tokenizations"].items()}
        return cls(**data)


def dataset_key(raw: RawDataset, cfg: DataConfig) -> str:
    """Content of the source + every option that changes which rows/labels are used (``config.keys.DATASET``: the
    data section but its fields marked ``not_in_key``)."""
    return DATASET.key(cfg, root="data", fingerprint=raw.fingerprint, labels=raw.label_names)


def prepare_data(
    cfg: DataConfig,
    models: Sequence[str],
    trust_remote_code: bool = False,
    raw: RawDataset | None = None,
    verify: bool = False,
) -> PreparedData:
    """Validate the source, tokenize it once per distinct tokenization among ``models``, join the views
    (reused ones re-hashed whole with ``verify``; a file whose stat signature changed is re-hashed anyway)."""
    raw = raw if raw is not None else load_source(cfg)
    key = dataset_key(raw, cfg)
    cache = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    raw = with_augmented(raw, cfg, key, cache, verify)  # data.augment: more transfer text, a published stage of its own
    orders = shard_orders(raw, cfg.seed)
    unlabeled_key = raw.unlabeled_fingerprint
    specs: dict[str, TokenizerSpec] = {}
    model_tokenization: dict[str, str] = {}
    for name in models:
        spec = tokenizer_spec(name, trust_remote_code)
        specs.setdefault(spec.tokenization, spec)
        model_tokenization[name] = spec.tokenization
    shards = {
        tokenization: ensure_shards(raw, orders, key, spec, cfg.max_length, cache, trust_remote_code, verify, unlabeled_key)
        for tokenization, spec in specs.items()
    }
    view = ensure_view(shards, cache, verify)
    rows = {s: int(len(raw.splits[s].frame)) for s in raw.splits}
    summary = {
        "dataset_key": key,
        **({"unlabeled_key": unlabeled_key} if unlabeled_key else {}),
        "rows": rows,
        "labels": {s: _label_counts(raw, s) for s in raw.splits},
        "tokenizers": {t: {"name": specs[t].name, **shards[t].meta["stats"]} for t in shards},
    }
    prepared = PreparedData(
        dataset_key=key,
        view_dir=str(view.path),
        splits={s: [str(p) for p in view.files(f"{s}/", ".parquet")] for s in raw.splits},
        rows=rows,
        label_names=list(raw.label_names),
        pair=raw.pair,
        metrics=list(raw.metrics),
        tokenizations=specs,
        model_tokenization=model_tokenization,
        labelled={s: split.labelled for s, split in raw.splits.items()},
        unlabeled_key=unlabeled_key,
        submission_file=raw.submission_file,
        submission_labels=list(raw.submission_labels) if raw.submission_labels else None,
        summary=summary,
        notes=list(raw.notes),
    )
    del raw, orders, shards, view
    release_arrow_memory()
    return prepared


def release_arrow_memory() -> None:
    """Give the memory Arrow's allocator kept from reading and tokenizing back to the system. Its pool (mimalloc)
    keeps freed pages for reuse, so without this the driver carried data preparation's peak (the texts read,
    shuffled and tokenized: ~170 MiB at 1M unlabelled titles, benchmarks/README.md) through every later stage."""
    gc.collect()
    pa.default_memory_pool().release_unused()


def shard_orders(raw: RawDataset, seed: int) -> dict[str, np.ndarray]:
    """Each split's row order in its shards and views: a permutation seeded by (``seed``, split). The rows are
    taken in this order one part at a time as they are tokenized, so no shuffled copy of a split is ever held."""
    return {name: np.random.default_rng([seed, _split_number(name)]).permutation(len(split.frame))
            for name, split in raw.splits.items()}


def _label_counts(raw: RawDataset, split: str) -> dict[str, int]:
    if not raw.splits[split].labelled:
        return {}
    counts = raw.splits[split].frame["label"].value_counts().to_dict()
    return {raw.label_names[i]: int(counts.get(i, 0)) for i in range(raw.num_labels)}


def ensure_shards(raw: RawDataset, orders: dict[str, np.ndarray], key: str, spec: TokenizerSpec, max_length: int,
                  cache: Path, trust_remote_code: bool = False, verify: bool = False, unlabeled_key: str | None = None):
    """The shard stage of (dataset, [unlabelled text,] tokenizer, max_length): reused when valid, else built."""
    shard_key = stable_hash({"v": FORMAT_VERSION, "dataset": key, "tokenizer": spec.fingerprint, "max_length": max_length,
                             **({"unlabeled": unlabeled_key} if unlabeled_key else {})})

    def build(folder: Path) -> Built:
        tokenizer = load_tokenizer(spec.name, trust_remote_code=trust_remote_code)
        with build_dir(folder) as tmp:
            files, stats = [], {}
            for split_name, split in raw.splits.items():
                split_files, split_stats = _write_tokenized(tmp, split_name, split.frame, orders[split_name], tokenizer,
                                                            max_length, raw.pair, label=f"{spec.name} {split_name}")
                files += split_files
                stats[split_name] = split_stats
            write_manifest(tmp, files, kind="shards", key=shard_key, dataset=key, tokenizer=asdict(spec),
                           max_length=max_length, format=FORMAT_VERSION)
            return Built(tmp, {"stats": stats})

    return reuse_or_build(cache, "shards", shard_key, build, what=f"tokenized {raw.describe()} with {spec.name}", verify=verify)


def _write_tokenized(root: Path, split: str, frame, order: np.ndarray, tokenizer, max_length: int, pair: bool, label: str):
    """One split's Parquet parts (``ROWS_PER_PART`` rows each, the frame's rows in ``order``) and its token-length
    statistics."""
    (root / split).mkdir(parents=True, exist_ok=True)
    files, full_lengths, kept_lengths = [], [], []
    n = len(frame)
    started = last = time.time()
    for part, start in enumerate(range(0, max(n, 1), ROWS_PER_PART)):
        chunk = frame.iloc[order[start : start + ROWS_PER_PART]]
        pieces: list[dict[str, pa.Array]] = []
        for b in range(0, len(chunk), ENCODE_BATCH):
            sub = chunk.iloc[b : b + ENCODE_BATCH]
            columns, lengths = encode_arrow(tokenizer, sub["text_a"].tolist(), sub["text_b"].tolist() if pair else None, max_length)
            pieces.append(columns)
            full_lengths.append(lengths)
            kept_lengths.append(np.minimum(lengths, max_length))
            done = start + b + len(sub)
            if time.time() - last >= PROGRESS_EVERY_S:
                last = time.time()
                print(_progress_line(f"[data] tokenizing {label}", done, n, started), flush=True)
        token_columns = {k: pa.concat_arrays([p[k] for p in pieces]) for k in (pieces[0] if pieces else {})}
        table = pa.table(
            {
                "example_id": pa.array(chunk["example_id"].to_numpy(), pa.int64()),
                "label": pa.array(chunk["label"].to_numpy(), pa.int64()),
                **token_columns,
            }
        )
        path = root / split / f"part-{part:05d}.parquet"
        pq.write_table(table, path, row_group_size=ROW_GROUP)
        files.append({**file_entry(path, table.num_rows), "name": f"{split}/{path.name}"})
    full = np.concatenate(full_lengths) if full_lengths else np.zeros(1)
    kept = np.concatenate(kept_lengths) if kept_lengths else np.zeros(1)
    truncated = int((full > max_length).sum()) if n else 0
    stats = {
        "rows": n,
        "length_mean": float(kept.mean()),
        "length_p50": float(np.percentile(full, 50)),
        "length_p90": float(np.percentile(full, 90)),
        "length_p99": float(np.percentile(full, 99)),
        "length_max": int(full.max()),
        "truncated": truncated,
        "truncation_rate": truncated / n if n else 0.0,
    }
    return files, stats


def _progress_line(what: str, done: int, total: int, started: float) -> str:
    return format_progress(what, done, total, time.time() - started, unit="rows")


def ensure_view(shards: dict[str, Any], cache: Path, verify: bool = False):
    """The shard sets side by side (token columns prefixed by tokenization), part by part: every set stores
    the same rows in the same order, which is checked."""
    key = stable_hash({"v": FORMAT_VERSION, "shards": sorted((t, s.key) for t, s in shards.items())})

    def build(folder: Path) -> Built:
        with build_dir(folder) as tmp:
            first = next(iter(shards.values()))
            files = []
            for name in first.files(suffix=".parquet"):
                relative = name.relative_to(first.path)
                joined = None
                for tokenization, stage in shards.items():
                    table = pq.read_table(stage.path / relative)
                    if joined is None:
                        joined = table.select(["example_id", "label"])
                    elif not table["example_id"].equals(joined["example_id"]):
                        raise RuntimeError(f"shard sets {sorted(shards)} disagree on the example ids of {relative}")
                    for column in table.column_names:
                        if column not in ("example_id", "label"):
                            joined = joined.append_column(f"{tokenization}.{column}", table[column])
                (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(joined, tmp / relative, row_group_size=ROW_GROUP)
                files.append({**file_entry(tmp / relative, joined.num_rows), "name": str(relative)})
            write_manifest(tmp, files, kind="view", key=key, shards={t: s.key for t, s in shards.items()},
                           format=FORMAT_VERSION)
            return Built(tmp)

    return reuse_or_build(cache, "views", key, build, what="joined view of " + ", ".join(sorted(shards)), verify=verify)


def _split_number(split: str) -> int:
    return {"train": 0, "validation": 1, "test": 2}.get(split, 3)
