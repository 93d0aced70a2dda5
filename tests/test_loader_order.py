"""The per-epoch order of a streamed training split (``data.loader.read_split``): its Parquet files in a new seeded
order each epoch, the same on a Train worker's shard as in the calling process, and why not ``randomize_block_order``."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # starts Ray


def _files(folder: Path, n_files: int = 12, rows: int = 20) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n_files):
        path = folder / f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"example_id": list(range(i * rows, (i + 1) * rows))}), path)
        out.append(str(path))
    return out


def _as_the_stages_read(ds):
    """The execution options the stages give a training split (``preserve_order``: reproducible runs)."""
    from mtbert_ray.distributed.compat import execution_options
    from mtbert_ray.distributed.loader import TRAIN_SPLIT, split_config

    ds.context.execution_options = execution_options(split_config(), TRAIN_SPLIT)
    return ds


def _epochs(iterable, epochs: int = 3) -> list[list[int]]:
    return [[int(i) for b in iterable.iter_batches(batch_size=20) for i in b["example_id"]] for _ in range(epochs)]


def test_a_streamed_split_is_read_in_a_new_seeded_file_order_each_epoch(ray_session, tmp_path):
    from mtbert_ray.distributed.loader import read_split

    files = _files(tmp_path / "split")
    epochs = _epochs(_as_the_stages_read(read_split(files, materialize=False, shuffle_seed=7)))
    assert all(sorted(e) == list(range(240)) for e in epochs), "every row once per epoch"
    assert len({tuple(e) for e in epochs}) == 3 and epochs[0] != list(range(240)), "a new order every epoch"
    assert _epochs(_as_the_stages_read(read_split(files, materialize=False, shuffle_seed=7))) == epochs, \
        "reproducible from (seed, epoch)"
    assert _epochs(_as_the_stages_read(read_split(files, materialize=False, shuffle_seed=8)))[0] != epochs[0]
    ds = _as_the_stages_read(read_split(files, materialize=False, shuffle_seed=7))
    (shard,) = ds.streaming_split(1, equal=True)  # what a Train worker iterates
    assert _epochs(shard) == epochs, "a worker's shard sees the calling process's order"


def test_randomize_block_order_keeps_a_streamed_split_in_file_order_under_preserve_order(ray_session, tmp_path):
    """Why streamed splits shuffle their files: Ray 2.60 gives ``randomize_block_order``'s blocks of a streamed read
    back in file order when ``preserve_order`` is set — every epoch the same order (and it holds the whole split)."""
    import ray.data
    from ray.data import RandomSeedConfig

    files = _files(tmp_path / "split")
    ds = ray.data.read_parquet(files).randomize_block_order(seed=RandomSeedConfig(seed=7, reseed_after_execution=True))
    epochs = _epochs(_as_the_stages_read(ds))
    assert epochs == [list(range(240))] * 3
