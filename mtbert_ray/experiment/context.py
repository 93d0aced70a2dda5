"""What every stage of one experiment needs to know, in one typed object on the driver.

``StageContext`` holds the experiment config, the prepared data, the co-finetuned teachers (once
stage 1 has run), the layer maps and the teacher cache (once stage 2 has run). Derived facts —
each model's tokenization, the selection metric — are properties here, computed in one place. The layers below
never see it: it hands them small typed specs (``cofinetune_spec``, ``distill_spec``, ``loop_spec``), which cross
the Ray boundary as dicts.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.common.metric_names import DEFAULT_METRICS, UNLABELED, computed_metrics
from mtbert_ray.config import ExperimentConfig, distill_seed, micro_batch
from mtbert_ray.core.loop import LoopSpec
from mtbert_ray.core.steps import cofinetune as cofinetune_step
from mtbert_ray.core.steps.cofinetune import CofinetuneSpec
from mtbert_ray.core.steps.distill import DistillSpec
from mtbert_ray.core.targets import cache_float_columns
from mtbert_ray.data.glue_tasks import GLUE_TASKS
from mtbert_ray.data.shards import PreparedData
from mtbert_ray.models.hub import load_config


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

    # ---- what the layers below are handed ---------------------------------------------------------------------------
    def cofinetune_spec(self) -> CofinetuneSpec:
        """Stage 1's step settings (``core.steps.cofinetune``)."""
        cfg = self.config
        section = cfg.cofinetune
        return CofinetuneSpec(
            teachers=list(cfg.teachers), num_labels=self.data.num_labels, teacher_tokenizations=self.teacher_tokenizations,
            pad_ids=self.pad_ids, lr=section.lr, head_lr=section.head_lr, query_dim=section.query_dim,
            shared_head=section.shared_head, head_width=self.head_width, gradient_checkpointing=section.gradient_checkpointing,
            trust_remote_code=cfg.trust_remote_code)

    def distill_spec(self) -> DistillSpec:
        """Stage 3's step settings (``core.steps.distill``): teachers on the fly, or the cache once stage 2 has run."""
        cfg = self.config
        return DistillSpec(
            student=cfg.student, loss=cfg.loss, lr=cfg.distill.lr, projection_lr=cfg.distill.projection_lr,
            num_labels=self.data.num_labels, label_names=list(self.data.label_names),
            teacher_tokenizations=self.teacher_tokenizations, student_tokenization=self.student_tokenization,
            pad_ids=self.pad_ids, teacher_widths=list(self.teacher_widths), layer_maps=[list(m) for m in self.layer_maps],
            hidden_teachers=self.hidden_teachers, head_folder=self.head_source, teachers_checkpoint=self.teachers_checkpoint,
            cache_columns=self.cache_float_columns if self.cache is not None else None,
            cache_dtype=self.cache.dtype if self.cache is not None else "float32", trust_remote_code=cfg.trust_remote_code)

    def loop_spec(self, step: str) -> LoopSpec:
        """The epoch loop's settings for ``step`` (``core.steps.STEPS``; batch sizes per worker and micro-batch)."""
        cfg, data = self.config, self.data
        cofinetune = step == cofinetune_step.NAME
        section = cfg.cofinetune if cofinetune else cfg.distill
        return LoopSpec(
            stage=step,
            epochs=section.epochs,
            micro_batch=self.micro_batch("cofinetune" if cofinetune else "distill"),
            grad_accum_steps=section.grad_accum_steps,
            seed=cfg.seed if cofinetune else distill_seed(cfg),
            select=self.select_metric,
            mode=cfg.select.mode,
            precision=cfg.resources.precision,
            use_gpu=cfg.resources.use_gpu,
            threads=None if cfg.resources.use_gpu else cfg.resources.cpus_per_worker,
            train_rows=data.rows["train"] + (0 if cofinetune else data.rows.get(UNLABELED, 0)),
            num_labels=data.num_labels,
            weight_decay=section.weight_decay,
            submission=(data.submission_file or "test.tsv", data.submission_labels or data.label_names),
            test_labelled=data.labelled.get("test", True),
        )

    def with_updates(self, **changes: Any) -> "StageContext":
        return replace(self, **changes)


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
