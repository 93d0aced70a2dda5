"""The inputs of the published stages' keys (declared in ``mtbert_ray.config.keys``) from facts outside the config.

``KeyFacts`` are the derived facts: the stages take them from the prepared data (``KeyFacts.of``), the dry run from
the source files and the models' config and tokenizer files (``study.dryrun``), so both compute the same key.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtbert_ray.common.metric_names import UNLABELED
from mtbert_ray.config.keys import COFINETUNE, TEACHER_CACHE
from mtbert_ray.models.layer_map import layer_map


@dataclass(frozen=True)
class KeyFacts:
    """What the keys need besides the config: the labelled data's key, the unlabelled text's, the splits the data has,
    each model's tokenization, the student's width (``cofinetune.head_width: student``) and each teacher's depth."""

    dataset_key: str
    unlabeled_key: str | None
    splits: tuple[str, ...]
    model_tokenization: Mapping[str, str]
    student_width: int | None = None
    teacher_depths: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, ctx) -> "KeyFacts":
        """The facts of a ``StageContext`` (its prepared data; the teachers' depths once stage 1 has run)."""
        return cls(ctx.data.dataset_key, ctx.data.unlabeled_key, tuple(ctx.data.splits), dict(ctx.data.model_tokenization),
                   ctx.head_width, dict(zip(ctx.config.teachers, ctx.teacher_depths)))


def cofinetune_inputs(cfg, facts: KeyFacts, nonce: str | None = None) -> dict[str, Any]:
    """Stage 1's key inputs: everything that changes the trained teachers. Left out (marked on their fields):
    ``reuse``, ``grad_accum_steps`` (the effective batch stays the same), ``gradient_checkpointing`` and where the
    loop runs. ``nonce`` (a run folder, with ``cofinetune.reuse: false``) makes the key private to one run."""
    return COFINETUNE.inputs(
        cfg,
        tokenizations=[facts.model_tokenization[t] for t in cfg.teachers],
        data=facts.dataset_key,
        head_width_value=facts.student_width if cfg.cofinetune.head_width == "student" else None,
        select={"metric": cfg.select.metric, "mode": cfg.select.mode} if cfg.cofinetune.epochs > 1 else None,
        nonce=nonce,
    )


def teacher_cache_inputs(cfg, facts: KeyFacts, teachers_key: str, splits: list[str], with_states: bool) -> dict[str, Any]:
    """Stage 2's key inputs: the co-finetuned teachers (stage 1's key), the data, the student's tokenization, the
    splits cached (with unlabelled text, their interleaved layout) and, with hidden states, the layer maps and the
    storage dtype."""
    maps = [layer_map(cfg.student.num_layers, facts.teacher_depths[t], cfg.loss.layer_map) for t in cfg.teachers]
    inputs = TEACHER_CACHE.inputs(
        cfg, teachers=teachers_key, data=facts.dataset_key, student_tokenization=facts.model_tokenization[cfg.student.init_from],
        splits=list(splits), unlabeled=facts.unlabeled_key if UNLABELED in splits else None,
        layout="interleaved" if UNLABELED in splits else None)
    inputs["layer_maps"] = maps if with_states else None  # present as null without states, as keys have always been
    inputs["dtype"] = cfg.cache.dtype if with_states else None
    return inputs
