"""What the student learns from: the teachers' logits and aligned hidden states, on the fly or cached.

``teacher_targets`` runs the frozen teachers on a batch: logits [N, B, C] and, for the hidden loss,
the states of their mapped layers aligned to the student's tokens. The teacher cache stores exactly
that per example (``cache_columns`` → Parquet), and ``cached_targets`` reads the same tensors back
from a collated cache batch — so cached and on-the-fly losses agree (tests/test_cache_equivalence.py).

Cache columns: ``example_id``, ``label``, the student's token columns (``<tokenization>.input_ids`` …),
``teacher_logits`` (N·C float32 per example) and, with hidden states, ``hidden.t<i>.l<j>`` (teacher
i's state for student layer j, flattened [tokens × width]) stored as ``cache.dtype``: float32, or the
16-bit patterns of float16 / bfloat16 as uint16 (``data.floats``; read back as float32 by ``PadCollate``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import torch

from mtbert_ray.core.collate import inputs_for
from mtbert_ray.data.floats import encode_floats
from mtbert_ray.models.align import align_states, alignment_from_batches
from mtbert_ray.models.teachers import TeacherEnsemble

LOGITS = "teacher_logits"
TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids", "special_tokens_mask", "offset_start", "offset_end")


def hidden_column(teacher: int, student_layer: int) -> str:
    """Cache column of teacher i's state for student layer j (1-based), aligned to the student's tokens."""
    return f"hidden.t{teacher}.l{student_layer}"


@torch.no_grad()
def teacher_targets(
    ensemble: TeacherEnsemble,
    batch: dict[str, torch.Tensor],
    teacher_tokenizations: Sequence[str],
    student_tokenization: str,
    layer_maps: Sequence[Sequence[int]] | None = None,
    hidden_teachers: Sequence[int] | None = None,
) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:
    """(logits [N, B, C], states) of frozen teachers; ``states[k]`` holds, for the k-th teacher i of
    ``hidden_teachers`` (default: every teacher), its layers ``layer_maps[i]`` seen from the student's tokens,
    [B, Ls, Ht_i] each (None without ``layer_maps``). Teachers outside ``hidden_teachers`` give logits only: their
    states are neither kept nor aligned."""
    inputs = [inputs_for(batch, t) for t in teacher_tokenizations]
    if layer_maps is None:
        return ensemble(inputs).logits, None
    chosen = range(len(teacher_tokenizations)) if hidden_teachers is None else hidden_teachers
    out = ensemble(inputs, hidden_layers=[layer_maps[i] if i in chosen else [] for i in range(len(inputs))])
    student = inputs_for(batch, student_tokenization)
    states = []
    for i in chosen:
        if teacher_tokenizations[i] == student_tokenization:
            states.append(list(out.hidden_states[i]))
        else:
            alignment = alignment_from_batches(student, inputs[i])
            states.append([align_states(h, alignment) for h in out.hidden_states[i]])
    return out.logits, states


def cached_targets(
    batch: dict[str, torch.Tensor], n_teachers: int, num_labels: int, num_student_layers: int,
    hidden_teachers: Sequence[int] = (),
) -> tuple[torch.Tensor, list[list[torch.Tensor]] | None]:
    """The same (logits [N, B, C], states) as ``teacher_targets``, read from a collated cache batch; states of the
    teachers ``hidden_teachers`` only, in that order (None when it is empty)."""
    logits = batch[LOGITS].view(-1, n_teachers, num_labels).permute(1, 0, 2)
    if not hidden_teachers:
        return logits, None
    # 16-bit states are widened here, on the batch's device (they crossed to it in half the bytes)
    states = [[batch[hidden_column(i, j)].float() for j in range(1, num_student_layers + 1)] for i in hidden_teachers]
    return logits, states


def cache_float_columns(teacher_widths: Sequence[int], num_student_layers: int,
                        hidden_teachers: Sequence[int] = ()) -> dict[str, int]:
    """Float columns of a cache and their row width, for ``PadCollate`` (0 = a flat vector per example): the logits
    and the states of the teachers ``hidden_teachers``."""
    columns = {LOGITS: 0}
    columns.update(
        {hidden_column(i, j): teacher_widths[i] for i in hidden_teachers for j in range(1, num_student_layers + 1)}
    )
    return columns


def _list_array(flat: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def cache_columns(
    batch: dict[str, torch.Tensor],
    logits: torch.Tensor,
    states: list[list[torch.Tensor]] | None,
    student_tokenization: str,
    dtype: str = "float16",
) -> pa.Table:
    """One collated batch's cache rows as an Arrow table: ids, labels, the student's token columns
    (unpadded), teacher logits [N·C] and, with ``states``, every aligned state [Ls · Ht_i] in ``dtype``."""
    student = inputs_for(batch, student_tokenization)
    lengths = student["attention_mask"].sum(-1).cpu().numpy().astype(np.int64)
    real = student["attention_mask"].bool().cpu()
    n = len(lengths)
    columns: dict[str, pa.Array] = {
        "example_id": pa.array(batch["example_id"].cpu().numpy(), pa.int64()),
        "label": pa.array(batch["label"].cpu().numpy(), pa.int64()),
    }
    for key in TOKEN_KEYS:
        if key in ("offset_start", "offset_end"):
            if "offsets" not in student:
                continue
            tensor = student["offsets"][..., 0 if key == "offset_start" else 1]
        elif key in student:
            tensor = student[key]
        else:
            continue
        flat = tensor.cpu()[real].numpy().astype(np.int32)
        columns[f"{student_tokenization}.{key}"] = _list_array(flat, lengths)
    per_example = logits.permute(1, 0, 2).reshape(n, -1).float().cpu().numpy()
    columns[LOGITS] = _list_array(per_example.reshape(-1), np.full(n, per_example.shape[1]))
    if states is not None:
        for i, per_layer in enumerate(states):
            for j, h in enumerate(per_layer, start=1):
                kept = h.detach()[real.to(h.device)]  # [Σ tokens, width], row-major by example
                columns[hidden_column(i, j)] = _list_array(encode_floats(kept, dtype).reshape(-1), lengths * h.shape[-1])
    return pa.table(columns)
