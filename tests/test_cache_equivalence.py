"""Cached and on-the-fly teacher outputs give the same loss (no Ray: the same functions the stages call).

Logits are cached as float32, so the task and distillation terms agree to float32 precision in every
``cache.dtype``. Hidden states are stored in ``cache.dtype``: a value rounded to a p-bit mantissa has a
relative error ≤ 2^-p, so the hidden MSE's relative error is ≤ ~2 × 2^-p — 2^-10 for float16 (p = 11)
and 2^-7 for bfloat16 (p = 8); the test allows exactly that.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtbert_ray.config import DataConfig, LossConfig
from mtbert_ray.core.collate import PadCollate, inputs_for
from mtbert_ray.core.objective import HiddenStates, mt_bert_objective
from mtbert_ray.core.targets import cache_columns, cache_float_columns, cached_targets, teacher_targets
from mtbert_ray.data.shards import prepare_data
from mtbert_ray.models.layer_map import layer_map
from mtbert_ray.models.projection import build_projections
from mtbert_ray.models.student import build_student
from mtbert_ray.models.teachers import TeacherEnsemble
from tests.conftest import RT_POLARITY

HIDDEN_TOLERANCE = {"float32": 1e-5, "float16": 2.0**-10, "bfloat16": 2.0**-7}


def _batches(table, collate, batch_size, order=None):
    rows = np.arange(table.num_rows) if order is None else order
    for start in range(0, len(rows), batch_size):
        sub = table.take(rows[start : start + batch_size])
        yield collate({c: sub[c].to_numpy(zero_copy_only=False) for c in sub.column_names})


@pytest.mark.parametrize("weighted,mode,dtype", [(True, "none", "float32"), (False, "none", "float16"),
                                                (True, "average", "bfloat16"), (True, "weighted", "float16")])
def test_cache_and_on_the_fly_give_the_same_loss(tiny_models, tmp_path, weighted, mode, dtype):
    teachers = [tiny_models["bert"], tiny_models["roberta"]]  # the RoBERTa teacher needs cross-tokenizer alignment
    data = prepare_data(
        DataConfig(source="files", path=str(RT_POLARITY), text_fields=["sentence"], limit_train=48, limit_eval=16,
                   max_length=24, cache_dir=str(tmp_path)),
        [*teachers, tiny_models["bert"]],
    )
    torch.manual_seed(0)
    ensemble = TeacherEnsemble(teachers, data.num_labels, query_dim=8).eval()
    student = build_student(tiny_models["bert"], 1, data.num_labels, query_dim=8)
    maps = [layer_map(1, d) for d in ensemble.depths]
    projections = build_projections(ensemble.widths, student.width, 1)
    t_tok = [data.model_tokenization[t] for t in teachers]
    s_tok = data.model_tokenization[tiny_models["bert"]]
    view = pq.read_table(data.splits["train"])
    collate = PadCollate({t: data.tokenizations[t].pad_token_id for t in set(t_tok)})

    # Write the cache the way the stage-2 actors do (batches of 16), read it back in different batches.
    tables = []
    for batch in _batches(view, collate, 16):
        logits, states = teacher_targets(ensemble, batch, t_tok, s_tok, maps)
        tables.append(cache_columns(batch, logits, states, s_tok, dtype))
    path = tmp_path / "cache.parquet"
    pq.write_table(pa.concat_tables(tables), path)
    cache = pq.read_table(path)
    assert cache["example_id"].to_pylist() == view["example_id"].to_pylist()

    loss_cfg = LossConfig(hidden=True, weighted=weighted, ensemble=mode, temperature=2.0)
    order = np.random.default_rng(0).permutation(view.num_rows)
    cache_collate = PadCollate({s_tok: data.tokenizations[s_tok].pad_token_id}, cache_float_columns(ensemble.widths, 1, range(len(ensemble.widths))),
                               stored_dtype=dtype)
    compared = 0
    for fly, cached in zip(_batches(view, collate, 12, order), _batches(cache, cache_collate, 12, order)):
        s_in = inputs_for(fly, s_tok)
        out = student.forward_batch(s_in, output_hidden_states=True)
        losses = []
        for logits, states in (
            teacher_targets(ensemble, fly, t_tok, s_tok, maps),
            cached_targets(cached, len(teachers), data.num_labels, 1, range(len(teachers))),
        ):
            losses.append(mt_bert_objective(out.logits, fly["label"], logits, loss_cfg,
                                            HiddenStates(out.hidden_states[1:], states, projections, s_in["attention_mask"])))
        for term in ("task", "distill"):
            assert losses[0][term].item() == pytest.approx(losses[1][term].item(), rel=1e-5, abs=1e-6), term
        tolerance = HIDDEN_TOLERANCE[dtype]
        assert losses[0]["hidden"].item() == pytest.approx(losses[1]["hidden"].item(), rel=tolerance, abs=1e-6)
        compared += 1
    assert compared == 4
    # teachers outside the hidden loss (loss.hidden_teachers) give logits only; the others' states are unchanged
    every = teacher_targets(ensemble, fly, t_tok, s_tok, maps)
    logits, states = teacher_targets(ensemble, fly, t_tok, s_tok, maps, hidden_teachers=[1])
    assert torch.equal(logits, every[0]) and len(states) == 1
    assert all(torch.equal(a, b) for a, b in zip(states[0], every[1][1]))


def test_cache_writer_keeps_the_order_and_rolls_files_at_the_row_count(ray_session, tmp_path):
    """``write_in_order``: 1,001 rows in 7 blocks through a 2-actor pool that finishes them out of order come back
    in the dataset's order, in files of at least ``rows_per_file`` rows (the last one holds the rest)."""
    import random
    import time

    import ray.data

    from mtbert_ray.distributed.teacher_cache import write_in_order

    class SlowSometimes:
        def __call__(self, batch):
            time.sleep(random.random() * 0.05)
            return batch

    ds = ray.data.range(1001, override_num_blocks=7)
    ds.context.execution_options.preserve_order = True
    rows = ds.map_batches(SlowSometimes, batch_size=None, compute=ray.data.ActorPoolStrategy(size=2), num_cpus=0.5)
    write_in_order(rows.iter_batches(batch_size=None, batch_format="pyarrow"), tmp_path / "train", rows_per_file=300)
    files = sorted((tmp_path / "train").glob("*.parquet"))
    sizes = [pq.read_metadata(f).num_rows for f in files]
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(len(files))]
    assert sum(sizes) == 1001 and all(n >= 300 for n in sizes[:-1]) and len(files) > 1
    assert [i for f in files for i in pq.read_table(f)["id"].to_pylist()] == list(range(1001))


def test_local_batches_keep_every_row_in_order_across_files_of_odd_sizes(tmp_path):
    """The in-process cache's reader: 7 + 1 + 5 rows in three files, batches of 4 → 4, 4, 4, 1 rows, every row once,
    in order (list columns as arrays, as Ray Data's numpy batches give them)."""
    import pyarrow as pa

    from mtbert_ray.distributed.teacher_cache import local_batches

    files, start = [], 0
    for i, n in enumerate((7, 1, 5)):
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(pa.table({"example_id": list(range(start, start + n)),
                                 "tok.input_ids": [[101, start + k, 102] for k in range(n)]}), path)
        files.append(str(path))
        start += n
    batches = list(local_batches(files, ["example_id", "tok.input_ids", "not.there"], 4))
    assert [len(b["example_id"]) for b in batches] == [4, 4, 4, 1]
    assert [int(x) for b in batches for x in b["example_id"]] == list(range(13))
    assert [list(row) for row in batches[2]["tok.input_ids"]] == [[101, k, 102] for k in range(8, 12)]


def test_cached_states_cross_in_their_stored_precision_and_widen_on_the_device():
    """A 16-bit cache column is collated as float16 / bfloat16 (half the bytes host → GPU) with the same values the
    float32 decode gives, and ``cached_targets`` hands the loss float32."""
    import numpy as np

    from mtbert_ray.core.collate import float_column
    from mtbert_ray.data.floats import decode_floats, encode_floats

    states = torch.randn(7, 3)
    for dtype, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16)):
        stored = encode_floats(states, dtype).reshape(-1)
        rows = [stored[:12], stored[12:]]  # two rows of 4 and 3 tokens × width 3
        column = float_column(rows, 3, dtype)
        assert column.dtype == torch_dtype and column.shape == (2, 4, 3)
        assert torch.equal(column[1, 3], torch.zeros(3, dtype=torch_dtype)), "padding"
        widened = column.float()
        assert torch.equal(widened[0], torch.from_numpy(decode_floats(np.asarray(stored[:12]), dtype)).view(4, 3))
    batch = {"teacher_logits": torch.randn(2, 4), "hidden.t0.l1": column}
    _, got = cached_targets(batch, 2, 2, 1, [0])
    assert got[0][0].dtype == torch.float32


def test_interleave_keeps_each_stream_in_order_and_every_prefix_in_proportion():
    """``interleave``: 3 labelled and 9 unlabelled items of one row → one labelled item then three unlabelled ones,
    every item once, each stream in its order; after every item the streams' done fractions differ by at most one
    item's share; an exhausted or empty stream leaves the rest as they are."""
    from mtbert_ray.distributed.teacher_cache import interleave

    merged = list(interleave({"train": [f"l{i}" for i in range(3)], "unlabeled": [f"u{i}" for i in range(9)]},
                             {"train": 3, "unlabeled": 9}, size=lambda item: 1))
    assert merged == ["l0", "u0", "u1", "u2", "l1", "u3", "u4", "u5", "l2", "u6", "u7", "u8"]
    done = {"l": 0, "u": 0}
    for item in merged:
        done[item[0]] += 1
        assert abs(done["l"] / 3 - done["u"] / 9) <= 1 / 3 + 1e-9
    assert list(interleave({"a": [1, 2], "b": []}, {"a": 2, "b": 0}, size=lambda item: 1)) == [1, 2]


def test_pool_parts_are_interleaved_into_one_training_folder_by_batches(tmp_path):
    """The actor pool writes each split on its own; ``_file_batches`` + ``interleave`` rewrite them into ``train/``:
    every file holds both kinds of rows in their proportion, each kind in its order, and the count by label gives
    each split's rows back (``_rows_written``)."""
    import pyarrow as pa

    from mtbert_ray.distributed.teacher_cache import _file_batches, _rows_written, interleave, write_in_order

    for split, rows, label in (("train", 40, 1), ("unlabeled", 120, -1)):
        (tmp_path / f"part.{split}").mkdir()
        ids = list(range(rows)) if label >= 0 else list(range(1000, 1000 + rows))
        pq.write_table(pa.table({"example_id": ids, "label": [label] * rows}), tmp_path / f"part.{split}" / "part-00000.parquet")
    streams = {s: _file_batches(tmp_path / f"part.{s}", 8) for s in ("train", "unlabeled")}
    write_in_order(interleave(streams, {"train": 40, "unlabeled": 120}), tmp_path / "train", rows_per_file=32)
    files = sorted((tmp_path / "train").glob("*.parquet"))
    assert len(files) == 5
    for f in files:
        labels = pq.read_table(f)["label"].to_pylist()
        assert labels.count(1) == 8 and labels.count(-1) == 24, "a quarter of every file is labelled"
    ids = [i for f in files for i in pq.read_table(f)["example_id"].to_pylist()]
    assert [i for i in ids if i < 1000] == list(range(40)) and [i for i in ids if i >= 1000] == list(range(1000, 1120))
    assert _rows_written(tmp_path, ("train", "unlabeled")) == {"train": 40, "unlabeled": 120}
