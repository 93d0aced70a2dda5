"""Device-ready rows per second per CPU core from a hidden-state teacher cache, next to what one H100 consumes.

Two readers of the same cache files, timed side by side in one run (interleaved, median of ``--repeats``):

- **one core**: pyarrow decodes each file's row groups and ``PadCollate`` pads them into stage-3 batches of 64 (16-bit
  states kept 16-bit, as they cross to a GPU), in one thread — one CPU core's work per row;
- **Ray Data**: ``read_split`` streamed (read tasks) + ``iter_torch_batches`` with the same ``PadCollate``, the way
  stage 3 reads a large cache, on this machine's cores.

The cache is ``--cache FOLDER`` (a published ``teacher_cache/<key>/data`` folder, its ``train/*.parquet``), or a
synthetic one of the mixture study's shape (``--rows``, 2 teachers × 2 student layers × 384 wide, float16, 20–64
tokens a row) written under ``$MTBERT_BENCH_STORAGE``. Beside the measurement, the arithmetic of
``mtbert_ray.tools.input_rate``: the rows/s one H100 consumes for the paper's student (6 × 768 from BERT-base, 128 tokens,
three 768-wide teachers) with the hidden-state cache and with logits only, and the CPUs per GPU worker that feed it.

Last line: ``input_mb_per_core_s=<one core> ray_data_mb_s=<Ray Data, all cores> cpus_per_h100_hidden=<n>
cpus_per_h100_logits=<n>``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from _common import header, storage

BATCH = 64


def synthetic_cache(rows: int, folder: Path, widths=(384, 384), layers: int = 2, seed: int = 0) -> list[str]:
    """A teacher cache of the mixture study's shape, 2,048 rows a file (one row group each)."""
    from mtbert_ray.core.targets import LOGITS, hidden_column

    folder.mkdir(parents=True, exist_ok=True)
    existing = sorted(str(p) for p in folder.glob("*.parquet"))
    if existing and sum(pq.ParquetFile(p).metadata.num_rows for p in existing) == rows:
        return existing
    for p in existing:
        os.remove(p)
    rng = np.random.default_rng(seed)
    files = []
    for start in range(0, rows, 2048):
        n = min(2048, rows - start)
        lengths = rng.integers(20, 65, n)
        columns = {"example_id": pa.array(np.arange(start, start + n)), "label": pa.array(rng.integers(0, 2, n))}
        for c in ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask"):
            columns[f"tok_synthetic.{c}"] = pa.array([rng.integers(0, 30000, k, dtype=np.int32) for k in lengths])
        columns[LOGITS] = pa.array([rng.standard_normal(2 * len(widths)).astype(np.float32) for _ in range(n)])
        for i, width in enumerate(widths):
            for j in range(1, layers + 1):
                columns[hidden_column(i, j)] = pa.array(
                    [rng.standard_normal(k * width).astype(np.float16).view(np.uint16) for k in lengths])
        path = folder / f"part-{start // 2048:05d}.parquet"
        pq.write_table(pa.table(columns), path)
        files.append(str(path))
    return files


def collate_for(files: list[str]):
    """The ``PadCollate`` stage 3 builds for this cache: its tokenization, logits and states with their widths."""
    from mtbert_ray.core.collate import PadCollate
    from mtbert_ray.core.targets import LOGITS

    first = pq.ParquetFile(files[0]).read_row_group(0)
    names = first.column_names
    tokenization = next(n.split(".", 1)[0] for n in names if n.endswith(".input_ids"))
    tokens = len(first[f"{tokenization}.input_ids"][0])
    floats = {LOGITS: 0, **{n: len(first[n][0]) // tokens for n in names if n.startswith("hidden.")}}
    return PadCollate({tokenization: 0}, floats, stored_dtype="float16")


def one_core(files: list[str], collate) -> tuple[int, int, float]:
    """(rows, bytes on disk, seconds) of decoding and collating every batch in this thread."""
    import torch

    torch.set_num_threads(1)
    started, rows = time.perf_counter(), 0
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            out = collate({name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.schema.names})
            rows += len(out["label"])
    return rows, sum(os.path.getsize(p) for p in files), time.perf_counter() - started


def ray_data(files: list[str], collate) -> tuple[int, float]:
    """(rows, seconds) of one streamed epoch through Ray Data (the dataset built fresh, as each stage does)."""
    from mtbert_ray.distributed.loader import read_split

    ds = read_split(files, materialize=False, shuffle_seed=0)
    started, rows = time.perf_counter(), 0
    for batch in ds.iter_torch_batches(batch_size=BATCH, collate_fn=collate):
        rows += len(batch["label"])
    return rows, time.perf_counter() - started


def paper_arithmetic() -> dict[str, object]:
    """The paper's student on one H100: 6 layers of BERT-base (768 wide), 128 tokens, three 768-wide teachers."""
    from mtbert_ray.experiment.cache_size import INDEX_BYTES_PER_TOKEN
    from mtbert_ray.tools.input_rate import feed_rate, student_flops_per_row

    layers, hidden, tokens, teachers = 6, 768, 128, (768, 768, 768)
    non_embedding = layers * 12 * hidden * hidden  # 4h² attention + 8h² feed-forward per layer
    flops = student_flops_per_row(non_embedding, layers, hidden, tokens, teachers)
    logits_bytes = tokens * INDEX_BYTES_PER_TOKEN + len(teachers) * 2 * 4
    hidden_bytes = logits_bytes + tokens * sum(teachers) * layers * 2  # float16 states of every mapped layer
    return {"flops": flops, "hidden": feed_rate(flops, hidden_bytes), "logits": feed_rate(flops, logits_bytes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", default=None, help="a teacher_cache/<key>/data folder (default: a synthetic cache)")
    parser.add_argument("--rows", type=int, default=4096, help="rows of the synthetic cache")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    header("input pipeline: device-ready rows/s per CPU core from a hidden-state teacher cache, and one H100's appetite")
    files = (sorted(str(p) for p in Path(args.cache).glob("train/*.parquet")) if args.cache
             else synthetic_cache(args.rows, storage() / "input_pipeline" / f"synthetic-{args.rows}"))
    if not files:
        raise SystemExit(f"{args.cache}: no train/*.parquet files")
    collate = collate_for(files)
    import ray

    from mtbert_ray.distributed.runtime import init_ray

    init_ray()
    plain, streamed = [], []
    rows = size = 0
    ray_data(files, collate)  # warm-up: Ray Data's first execution starts its operators
    for _ in range(args.repeats):
        rows, size, seconds = one_core(files, collate)
        plain.append(seconds)
        streamed.append(ray_data(files, collate)[1])
    ray.shutdown()
    per_row = size / rows
    core_s, ray_s = statistics.median(plain), statistics.median(streamed)
    print(f"cache: {len(files)} file(s), {rows:,} rows, {size / 1e6:,.1f} MB on disk ({per_row / 1e3:,.1f} kB a row)")
    print(f"one core (pyarrow + PadCollate, 1 thread): {rows / core_s:,.0f} rows/s = {size / core_s / 1e6:,.0f} MB/s")
    print(f"Ray Data streamed + PadCollate ({os.cpu_count()} cores): {rows / ray_s:,.0f} rows/s = {size / ray_s / 1e6:,.0f} MB/s")
    paper = paper_arithmetic()
    core_rate = size / core_s
    print("the paper's student on one H100 (mtbert_ray/tools/input_rate.py; FLOPs/row = 6·N·s + 12·K·s²·h + 6·s·K·Σw·h):")
    cores = {}
    for kind, what in (("hidden", "hidden-state cache"), ("logits", "logits-only cache")):
        rate = paper[kind]
        need = rate.gpu_rows_per_s * rate.bytes_per_row
        cores[kind] = max(1, int(np.ceil(need / core_rate)))
        print(f"  {what}: {rate.gpu_rows_per_s:,.0f} rows/s × {rate.bytes_per_row / 1e3:,.1f} kB = {need / 1e9:,.2f} GB/s "
              f"→ {cores[kind]} core(s) at this machine's one-core rate")
    print(f"input_mb_per_core_s={core_rate / 1e6:.0f} ray_data_mb_s={size / ray_s / 1e6:.0f} "
          f"cpus_per_h100_hidden={cores['hidden']} cpus_per_h100_logits={cores['logits']}")

if __name__ == "__main__":
    main()
