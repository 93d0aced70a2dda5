"""What every stage needs to know, in one typed object that crosses the Ray boundary as a dict.

``StageContext`` holds the experiment config, the prepared data, the co-finetuned teachers (once
stage 1 has run), the layer maps and the teacher cache (once stage 2 has run). Derived facts —
each model's tokenization, the selection metric — are properties here, computed in one place.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mtbert_ray.config import ExperimentConfig, micro_batch
from mtbert_ray.data.shards import PreparedData
from mtbert_ray.errors import ConfigError
from mtbert_ray.metric_names import DEFAULT_METRICS, computed_metrics


@dataclass
class CacheInfo:
    """A published teacher cache: its Parquet files per split and how its float columns are stored."""

    files: dict[str, list[str]]
    hidden: bool
    dtype: str


@dataclass
class StageContext:
    config: ExperimentConfig
    data: PreparedData
    teachers_checkpoint: str | None = None  # folder of the co-finetuned TeacherEnsemble (after stage 1)
    teacher_widths: list[int] = field(default_factory=list)
    teacher_depths: list[int] = field(default_factory=list)
    layer_maps: list[list[int]] = field(default_factory=list)  # teacher layer for student layer j, per teacher
    cache: CacheInfo | None = None  # the teacher cache (after stage 2), None: teachers on the fly
    head_checkpoint: str | None = None  # student.head_init: <teacher>: that teacher co-finetuned alone (after stage 1)

    # ---- derived ------------------------------------------------------------------------------
    @property
    def teacher_tokenizations(self) -> list[str]:
        return [self.data.model_tokenization[t] for t in self.config.teachers]

    @property
    def student_tokenization(self) -> str:
        return self.data.model_tokenization[self.config.student.init_from]

    @property
    def hidden_teachers(self) -> list[int]:
        """Indices of the teachers L_MT-Hid learns from (``loss.hidden_teachers``); empty without the hidden loss."""
        cfg = self.config
        if not cfg.loss.hidden:
            return []
        return select_hidden_teachers(cfg.loss.hidden_teachers, cfg.teachers, self.teacher_tokenizations,
                                      self.student_tokenization)

    @property
    def cache_float_columns(self) -> dict[str, int]:
        """The teacher cache's float columns stage 3 reads, with their row widths (``targets.cache_float_columns``):
        the logits, and the states of ``hidden_teachers`` when the cache holds states (a logits-only run reading a
        cache with states leaves them on disk)."""
        from mtbert_ray.targets import cache_float_columns

        hidden = self.hidden_teachers if self.cache is not None and self.cache.hidden else ()
        return cache_float_columns(self.teacher_widths, self.config.student.num_layers, hidden)

    @property
    def head_source(self) -> str | None:
        """The co-finetuned ensemble whose head the student copies: the named teacher's own stage 1
        (``student.head_init: <teacher>``), else this run's teachers."""
        return self.head_checkpoint or self.teachers_checkpoint

    @property
    def student_width(self) -> int:
        """Hidden width of the student (its checkpoint's config.json)."""
        from mtbert_ray.models.hub import load_config

        cfg = self.config
        return int(load_config(cfg.student.init_from, trust_remote_code=cfg.trust_remote_code).hidden_size)

    @property
    def head_width(self) -> int | None:
        """Width of the co-finetuned shared head: the student's with ``cofinetune.head_width: student``, else None
        (the first teacher's)."""
        return self.student_width if self.config.cofinetune.head_width == "student" else None

    @property
    def pad_ids(self) -> dict[str, int]:
        """Pad token id of every tokenization the experiment uses."""
        return {t: spec.pad_token_id for t, spec in self.data.tokenizations.items()}

    @property
    def select_metric(self) -> str:
        """The validation metric that decides "best" (``select.metric``; auto = the task's main metric)."""
        return resolve_select_metric(self.config, self.data)

    def micro_batch(self, section: str) -> int:
        return micro_batch(self.config, section)  # type: ignore[arg-type]

    def with_updates(self, **changes: Any) -> "StageContext":
        return replace(self, **changes)

    # ---- the Ray boundary ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.model_dump(mode="json"),
            "data": self.data.to_dict(),
            "teachers_checkpoint": self.teachers_checkpoint,
            "teacher_widths": list(self.teacher_widths),
            "teacher_depths": list(self.teacher_depths),
            "layer_maps": [list(m) for m in self.layer_maps],
            "cache": None if self.cache is None else {"files": self.cache.files, "hidden": self.cache.hidden, "dtype": self.cache.dtype},
            "head_checkpoint": self.head_checkpoint,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageContext":
        cache = data.get("cache")
        return cls(
            config=ExperimentConfig.model_validate(data["config"]),
            data=PreparedData.from_dict(data["data"]),
            teachers_checkpoint=data.get("teachers_checkpoint"),
            teacher_widths=list(data.get("teacher_widths") or []),
            teacher_depths=list(data.get("teacher_depths") or []),
            layer_maps=[list(m) for m in data.get("layer_maps") or []],
            cache=CacheInfo(**cache) if cache else None,
            head_checkpoint=data.get("head_checkpoint"),
        )


def select_hidden_teachers(choice: str | list[str], teachers: list[str], teacher_tokenizations: list[str],
                           student_tokenization: str) -> list[int]:
    """Indices i of the teachers in Σ_i of L_MT-Hid: every teacher ("all"), those whose tokenization is the
    student's ("same_tokenizer"), or the named ones; in the order of ``teachers``. Raises ``ConfigError`` when none
    is left (the hidden loss would have no term: switch it off with ``loss.hidden: false``)."""
    if choice == "all":
        chosen = list(range(len(teachers)))
    elif choice == "same_tokenizer":
        chosen = [i for i, t in enumerate(teacher_tokenizations) if t == student_tokenization]
    else:
        chosen = [i for i, name in enumerate(teachers) if name in choice]
    if not chosen:
        raise ConfigError(f"loss.hidden_teachers: {choice} selects none of the teachers {teachers}; "
                          "set loss.hidden: false for a run without the hidden loss")
    return chosen


def task_metrics(config: ExperimentConfig) -> list[str]:
    """The metrics reported for the configured task without loading the data, main metric first: GLUE's
    leaderboard metrics for a GLUE task, accuracy and macro-F1 for MIND and files sources."""
    if config.data.source == "glue" and config.data.task:
        from mtbert_ray.data.glue_tasks import GLUE_TASKS

        task = GLUE_TASKS.get(config.data.task.lower().replace("-", ""))
        if task is not None:
            return list(task.metrics)
    return list(DEFAULT_METRICS)


def select_metric_name(config: ExperimentConfig) -> str:
    """``select.metric`` as a bare name without loading the data (auto → the task's main metric:
    the GLUE leaderboard's for a GLUE task, accuracy otherwise)."""
    name = config.select.metric
    return task_metrics(config)[0] if name == "auto" else name


def resolve_select_metric(config: ExperimentConfig, data: PreparedData) -> str:
    """``select.metric`` as a bare name (auto → the task's main metric); a one-line error when the task
    does not report it."""
    name = config.select.metric
    if name == "auto":
        return data.metrics[0]
    available = computed_metrics(data.num_labels)
    if name not in available:
        raise ConfigError(
            f"select.metric: {name!r} is not reported for this task ({data.num_labels} classes); expected one of {', '.join(available)}"
        )
    return name
