"""Stage 2 — the teacher-output cache, and the one function that computes teacher targets.

``teacher_targets`` gives, for a batch, the frozen teachers' logits [N, B, C] and (for the
hidden loss) the states of their mapped layers aligned to the student's tokens. Distillation
calls it on the fly; the cache loop calls it once over the training and evaluation data and
stores the result as Parquet (per example: logits, weights 1/(1+CE(y, y_i)), and optionally
the aligned states), so every sweep trial that shares the teachers reads instead of recomputing.
Because both paths use this function, cached and on-the-fly losses agree (see the tests).

Each Train worker writes its share as ``<split>/part-<rank>.parquet`` into one checkpoint
(Ray Train merges the files of all ranks) with ``parts-<rank>.json`` (rows, bytes, sha256);
the driver merges those into the folder's ``manifest.json`` (``mtbert_ray.storage``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray.train
import torch

from mtbert_ray.config import ExperimentConfig
from mtbert_ray.data.loader import PadCollate, inputs_for
from mtbert_ray.data.shards import PreparedData
from mtbert_ray.losses import teacher_weights
from mtbert_ray.models.align import align_states, alignment_from_batches
from mtbert_ray.models.teachers import TeacherEnsemble
from mtbert_ray.storage import file_entry
from mtbert_ray.train.common import checkpoint_dir, device_for_worker, iterate_batches, world

LOGITS = "teacher_logits"
WEIGHTS = "teacher_weights"
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_start", "offset_end")


def hidden_column(teacher: int, student_layer: int) -> str:
    """Cache column of teacher i's state for student layer j (1-based), aligned to the student's tokens."""
    return f"hidden.t{teacher}.l{student_layer}"


@torch.no_grad()
def teacher_targets(
    ensemble: TeacherEnsemble,
    batch: dict[str, torch.Tensor],
    teacher_aliases: Sequence[str],
    student_alias: str,
    layer_maps: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:
    """(logits [N, B, C], states) of frozen teachers; ``states[i][j]`` is teacher i's layer
    ``layer_maps[i][j]`` seen from the student's tokens, [B, Ls, Ht_i] (None without ``layer_maps``)."""
    inputs = [inputs_for(batch, a) for a in teacher_aliases]
    out = ensemble(inputs, hidden_layers=layer_maps)
    if layer_maps is None:
        return out.logits, None
    student = inputs_for(batch, student_alias)
    states = []
    for i, alias in enumerate(teacher_aliases):
        if alias == student_alias:
            states.append(list(out.hidden_states[i]))
        else:
            alignment = alignment_from_batches(student, inputs[i])
            states.append([align_states(h, alignment) for h in out.hidden_states[i]])
    return out.logits, states


def cached_targets(
    batch: dict[str, torch.Tensor], n_teachers: int, num_labels: int, num_student_layers: int, hidden: bool
) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:
    """The same (logits [N, B, C], states) as ``teacher_targets``, read from a collated cache batch."""
    logits = batch[LOGITS].view(-1, n_teachers, num_labels).permute(1, 0, 2)
    if not hidden:
        return logits, None
    states = [[batch[hidden_column(i, j)] for j in range(1, num_student_layers + 1)] for i in range(n_teachers)]
    return logits, states


def cache_float_columns(teacher_widths: Sequence[int], num_student_layers: int, hidden: bool) -> dict[str, int]:
    """Float columns of a cache and their row width, for ``PadCollate`` (0 = a flat vector per example)."""
    columns = {LOGITS: 0}
    if hidden:
        columns.update(
            {hidden_column(i, j): w for i, w in enumerate(teacher_widths) for j in range(1, num_student_layers + 1)}
        )
    return columns


def teacher_cache_loop(loop_config: dict[str, Any]) -> None:
    """Per-worker loop: frozen teachers over this worker's share of every split → Parquet parts."""
    cfg = ExperimentConfig.model_validate(loop_config["experiment"])
    data = PreparedData.from_dict(loop_config["data"])
    layer_maps = loop_config["layer_maps"]  # None unless hidden states are cached
    rank, _ = world()
    device = device_for_worker()
    with ray.train.Checkpoint(loop_config["teachers_checkpoint"]).as_directory() as folder:
        ensemble = TeacherEnsemble.from_pretrained(folder, cfg.trust_remote_code).to(device).eval()
    teacher_aliases = [data.model_tokenizer[t] for t in cfg.teachers]
    student_alias = data.model_tokenizer[cfg.student.init_from]
    collate = PadCollate({a: data.tokenizers[a].pad_token_id for a in {*teacher_aliases, student_alias}})

    with checkpoint_dir() as out:
        parts = []
        for split in loop_config["splits"]:
            batches = iterate_batches(ray.train.get_dataset_shard(split), cfg.distill.batch_size, collate, device)
            rows = cache_rows(ensemble, batches, teacher_aliases, student_alias, layer_maps)
            (out / split).mkdir()
            path = out / split / f"part-{rank:05d}.parquet"
            pq.write_table(rows_to_table(rows, student_alias), path, row_group_size=1024)
            parts.append({**file_entry(path, len(rows["example_id"])), "name": f"{split}/{path.name}"})
        (out / f"parts-{rank:05d}.json").write_text(json.dumps(parts))
        ray.train.report({"rank": rank, "rows": sum(p["rows"] for p in parts)}, checkpoint=ray.train.Checkpoint.from_directory(out))


def cache_rows(
    ensemble: TeacherEnsemble,
    batches,
    teacher_aliases: Sequence[str],
    student_alias: str,
    layer_maps: Sequence[Sequence[int]] | None,
) -> dict[str, list]:
    """Cache columns for the given collated batches: ids, labels, the student's token columns
    (unpadded), teacher logits [N·C], weights [N] and, with ``layer_maps``, every aligned state [Ls·Ht_i]."""
    rows: dict[str, list] = {"example_id": [], "label": [], LOGITS: [], WEIGHTS: []}
    token_cols = {k: [] for k in TOKEN_KEYS}
    for batch in batches:
        logits, states = teacher_targets(ensemble, batch, teacher_aliases, student_alias, layer_maps)
        weights = teacher_weights(logits, batch["label"])
        student = inputs_for(batch, student_alias)
        lengths = student["attention_mask"].sum(-1).tolist()
        rows["example_id"] += batch["example_id"].tolist()
        rows["label"] += batch["label"].tolist()
        rows[LOGITS] += list(logits.permute(1, 0, 2).reshape(logits.shape[1], -1).float().cpu().numpy())
        rows[WEIGHTS] += list(weights.t().float().cpu().numpy())
        for b, n in enumerate(lengths):
            for key in TOKEN_KEYS:
                if key in ("offset_start", "offset_end"):
                    if "offsets" in student:
                        token_cols[key].append(student["offsets"][b, :n, 0 if key == "offset_start" else 1].tolist())
                elif key in student:
                    token_cols[key].append(student[key][b, :n].tolist())
        if states is not None:
            for i, per_layer in enumerate(states):
                for j, h in enumerate(per_layer, start=1):
                    col = rows.setdefault(hidden_column(i, j), [])
                    h = h.float().cpu().numpy()
                    col += [h[b, :n].reshape(-1) for b, n in enumerate(lengths)]
    for key, values in token_cols.items():
        if values or not rows["example_id"]:
            rows[f"{student_alias}.{key}"] = values
    return rows


def rows_to_table(rows: dict[str, list], student_alias: str) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    for key, values in rows.items():
        if key in ("example_id", "label"):
            columns[key] = pa.array(values, pa.int64())
        elif key.startswith(student_alias + "."):
            columns[key] = pa.array(values, pa.list_(pa.int32()))
        else:
            columns[key] = pa.array([np.asarray(v, dtype=np.float32) for v in values], pa.list_(pa.float32()))
    return pa.table(columns)
