"""Typed experiment configuration: YAML in, validated (unknown keys are errors), CLI overrides.

One ``ExperimentConfig`` describes one MT-BERT experiment (data → co-finetuning → teacher
cache → distillation). Defaults follow the paper (§3.1) and the decisions in docs/design.md.
Every field carries its help text (``Field(description=...)``); ``docs/config.md`` is generated
from it (``python -m mtbert_ray.config.doc``).
"""
from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.common.metric_names import METRICS, Split
from mtbert_ray.config.keys import STAGE3_ONLY, not_in_key


class _Strict(BaseModel):
    # allow_inf_nan=False: every float setting is a finite number (an lr of .inf once trained a NaN student)
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: The data.* fields each source needs (``DataConfig`` refuses a config without them); their readers are registered
#: by name in ``mtbert_ray.data.sources`` (``register_source``, which declares a new source's needs here too).
DATA_SOURCES: dict[str, tuple[str, ...]] = {"glue": ("task",), "mind": ("path",), "files": ("path", "text_fields")}
NEEDS_HELP = {"task": "e.g. sst2, rte", "path": "a local folder", "text_fields": "the text column, or two for pairs"}


def declare_data_source(name: str, needs: tuple[str, ...]) -> None:
    """Make ``data.source: NAME`` valid, requiring the fields ``needs`` (called by ``data.sources.register_source``)."""
    known = DATA_SOURCES.get(name)
    if known is not None and tuple(known) != tuple(needs):
        raise ValueError(f"data source {name!r} is declared twice with other needs ({known} and {needs})")
    DATA_SOURCES[name] = tuple(needs)


class AugmentConfig(_Strict):
    """Transfer-set augmentation (Tang et al. 2019): ``copies`` variants of every training sentence (and of
    data.unlabeled's text) by word dropout, replacement and n-gram sampling, labelled by the teachers like unlabelled
    text (``mtbert_ray.data.augment``)."""

    copies: int = Field(0, ge=0, le=64, description="Variants made of each sentence (0: no augmentation).")
    word_dropout: float = Field(0.1, ge=0, lt=1, description="Probability each word is left out.")
    replace: float = Field(0.1, ge=0, lt=1, description="Probability each word is replaced: by a word drawn from the "
                           "training text's unigram distribution, or by mlm_model's likeliest words in its place.")
    ngram: float = Field(0.25, ge=0, le=1, description="Probability a variant is cut to a random window of 1–5 words.")
    mlm_model: str | None = Field(None, description="A masked language model (hub id or folder with an MLM head) whose "
                                  "top-5 words replace words (TinyBERT); null: unigram replacement.")
    from_unlabeled: bool = Field(True, description="Also augment data.unlabeled's text (when given).")
    seed: int = Field(0, ge=0, description="Seed of the rules.")

    @model_validator(mode="after")
    def _probabilities(self) -> "AugmentConfig":
        if self.word_dropout + self.replace >= 1:
            raise ValueError("word_dropout + replace must be below 1 (some words must stay)")
        return self


class DataConfig(_Strict):
    """Where the labelled text comes from and how it is tokenized (see ``mtbert_ray.data``)."""

    source: str = Field(
        "files", description="Dataset kind: glue (a GLUE task), mind (a MIND news folder), files (local "
        "train/validation/test files), or a source registered with mtbert_ray.data.sources.register_source.")
    path: str | None = Field(
        None, description="Local folder: files → train/validation[/test] files; glue → the GLUE TSVs "
        "(or hub parquet layout); mind → MIND{small,large}_{train,dev,test}/ folders. glue without a path loads from the hub.",
        json_schema_extra=not_in_key("its files' content is hashed instead (the fingerprint): a moved copy is the same data", stages=("dataset",)))
    task: str | None = Field(None, description="GLUE task name (sst2, rte, mnli, cola, mrpc, qqp, qnli, wnli).")
    text_fields: list[str] | None = Field(
        None, description="files: the text column, or two columns for sentence pairs.")
    label_field: str = Field("label", description="files: the label column (class ids 0..C-1 or names).")
    num_labels: int | None = Field(
        default=None, ge=2, description="Number of classes; inferred from the training split when omitted.")
    mind_text: Literal["title", "title_abstract"] = Field(
        "title", description="mind: classify the title alone (the paper) or title + abstract.")
    unseen_labels: Literal["error", "drop"] = Field(
        "error", description="Evaluation labels that never occur in training: an error, or drop those rows.")
    missing_labels: Literal["error", "unlabeled"] = Field(
        "error", description="Training rows without a label (an empty cell, null, NaN, or a word such as None / NaN in a "
        "column of class ids): an error naming the row, or unlabeled = use them as transfer text for distillation (as "
        "data.unlabeled; the teachers never train on them). Validation and test rows always need their label.",
        json_schema_extra=not_in_key("with error, data that has such rows is never prepared; where it has none, both settings "
                                     "give the same rows; the rows it moves are keyed as unlabelled text (data.unlabeled_key)",
                                     stages=("dataset",)))
    max_length: int = Field(default=128, ge=8, le=4096, description="Tokens per example (pairs truncated longest-first).",
        json_schema_extra=not_in_key('the shards key it, and so does every stage that reads them', stages=("dataset",)))
    limit_train: int | None = Field(
        default=None, ge=1, description="Use a seeded random subset of this many training rows.")
    limit_eval: int | None = Field(
        default=None, ge=1, description="Use a seeded random subset of this many rows of validation and of test.")
    unlabeled: str | None = Field(
        None, description="Unlabelled transfer text for distillation: a file (Parquet, CSV, TSV, JSON Lines with the "
        "text_fields columns; or .txt, one text a line) or a folder of such files. The teachers are co-finetuned on the "
        "labelled rows only; the student learns their soft labels (and hidden states) on both (loss.unlabeled_rows).",
        json_schema_extra=not_in_key("stage 3's rows only, keyed by their content; the teachers never see them", stages=("dataset",)))
    augment: AugmentConfig = Field(
        AugmentConfig(), description="Transfer-set augmentation: more unlabelled text made from the training sentences.",
        json_schema_extra=not_in_key("stage 3's rows only, keyed with the unlabelled text (data.unlabeled_key)",
                                     stages=("dataset",)))
    limit_unlabeled: int | None = Field(
        default=None, ge=1, description="Use a seeded random subset of this many unlabelled rows.",
        json_schema_extra=not_in_key("part of the unlabelled text's content key (data.unlabeled_key)", stages=("dataset",)))
    seed: int = Field(0, ge=0, description="Seed of the limit_train / limit_eval subsets and of the stored row order.")
    revision: str | None = Field(None, description="glue from the hub: dataset revision (commit or tag).",
        json_schema_extra=not_in_key("part of the source's fingerprint (the hub's dataset fingerprints and the revision)", stages=("dataset",)))
    cache_dir: str | None = Field(
        None, description="Tokenized shards and views (default $MTBERT_RAY_CACHE, else ~/.cache/mtbert_ray).",
        json_schema_extra=not_in_key('where shards and views are stored, not what they hold'))

    @field_validator("text_fields")
    @classmethod
    def _one_or_two_fields(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not 1 <= len(value) <= 2:
            raise ValueError(f"expected one text column, or two for sentence pairs; got {len(value)}")
        return value

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in DATA_SOURCES:
            raise ValueError(f"expected one of {', '.join(DATA_SOURCES)} (or a source registered with "
                             f"mtbert_ray.data.sources.register_source), got {value!r}")
        return value

    @model_validator(mode="after")
    def _source_needs(self) -> "DataConfig":
        for name in DATA_SOURCES.get(self.source, ()):
            if not getattr(self, name):
                raise ValueError(f"data.source '{self.source}' needs data.{name} ({NEEDS_HELP.get(name, 'see docs/config.md')})")
        return self


class StudentConfig(_Strict):
    """The K-layer student (docs/design.md, decision i)."""

    model_config = ConfigDict(**_Strict.model_config, json_schema_extra=not_in_key(STAGE3_ONLY))

    init_from: str = Field(
        description="Hub id or folder of a pretrained encoder; the student keeps its embeddings and first num_layers layers.")
    num_layers: int = Field(ge=1, description="K, the student's depth.")
    query_dim: int = Field(default=200, ge=1, description="Attentive-pooling query dimension of the student's head.")
    head_init: str = Field(
        "from_teachers", min_length=1, description="Start of the student's pooling + dense layer: from_teachers = copied "
        "from this run's co-finetuned shared head (when the widths match); random = seeded random weights; a teacher's "
        "name (hub id or folder, in this run's teachers or not) = copied from the head of that teacher co-finetuned alone "
        "(a stage-1 run of its own, reused by key), so rows of different teacher sets start from the same student.")


class CofinetuneConfig(_Strict):
    """Stage 1: the teachers finetuned together with one shared pooling + dense head (MT-BERT §2.1)."""

    epochs: int = Field(default=1, ge=1, description="Co-finetuning epochs.")
    lr: float = Field(default=2e-6, gt=0, description="Adam learning rate of the teacher encoders (paper: 2e-6).")
    head_lr: float = Field(default=1e-3, gt=0, description="Learning rate of the shared pooling + dense head (randomly initialised).")
    batch_size: int = Field(
        default=64, ge=1, description="Global batch size (split across Train workers; see grad_accum_steps).")
    grad_accum_steps: int = Field(
        default=1, ge=1, description="Micro-batches per optimizer step: each worker runs batch_size / (workers × steps) "
        "examples at a time, so the effective batch stays batch_size while activation memory shrinks.",
        json_schema_extra=not_in_key('the effective batch (batch_size) stays the same', stages=("cofinetune",)))
    gradient_checkpointing: bool = Field(
        False, description="Recompute the teachers' activations in the backward pass (Hugging Face gradient "
        "checkpointing): ~30 % slower, far less activation memory.",
        json_schema_extra=not_in_key('recomputes the same activations in the backward pass', stages=("cofinetune",)))
    shared_head: bool = Field(
        True, description="false: each teacher is finetuned with its own head (the paper's 'w/o co-finetuning').")
    head_width: Literal["first_teacher", "student"] = Field(
        "first_teacher", description="Width of the shared pooling + dense head: the first teacher's (the paper's "
        "teachers and student are all 768 wide), or the student's, so the student can start from the co-finetuned head "
        "whatever the teachers' widths (a teacher of another width reaches the head through a learned linear adapter).")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay.")
    query_dim: int = Field(default=200, ge=1, description="Attentive-pooling query dimension of the shared head (paper: 200).")
    reuse: bool = Field(
        True, description="false: train the teachers afresh for this run even when a stage with the same key exists "
        "(not part of the key).",
        json_schema_extra=not_in_key('a switch for this run: false keys the teachers to its run folder (the nonce)', stages=("cofinetune",)))


class DistillConfig(_Strict):
    """Stage 3: the student learns from the teachers (Eq. 1–3)."""

    model_config = ConfigDict(**_Strict.model_config, json_schema_extra=not_in_key(STAGE3_ONLY))

    epochs: int = Field(default=1, ge=1, description="Distillation epochs.")
    lr: float = Field(default=5e-6, gt=0, description="Adam learning rate of the student (paper: 5e-6).")
    projection_lr: float | None = Field(default=None, gt=0, description="Learning rate of the maps W_ij (default: lr).")
    batch_size: int = Field(default=64, ge=1, description="Global batch size (split across Train workers).")
    grad_accum_steps: int = Field(default=1, ge=1, description="Micro-batches per optimizer step (as in cofinetune).")
    weight_decay: float = Field(default=0.0, ge=0, description="Adam weight decay.")
    seed: int | None = Field(
        None, ge=0, description="Seed of the student's initialisation, dropout and data order; default: the experiment seed. "
        "A study that varies only distill.seed distils several students from the same co-finetuned teachers.")


class LossConfig(_Strict):
    """Which terms of L = λ_hid·L_MT-Hid + λ_dis·L_MT-Dis + λ_task·L_Task the student trains with (Fig. 4–5 ablations;
    the paper sums them, λ = 1)."""

    model_config = ConfigDict(**_Strict.model_config, json_schema_extra=not_in_key(STAGE3_ONLY))

    hidden: bool = Field(
        False, description="L_MT-Hid: MSE between student layers and mapped, projected teacher layers (Eq. 1). Off by default: "
        "the paper trains with it, but measured here it never helped a 2-layer student and cost it 0.8–0.95 points in 3 "
        "of 4 pairings (docs/design.md, row w); true for the paper's loss (its study files set it).")
    distill: bool = Field(True, description="L_MT-Dis: soft cross-entropy with every teacher's soft labels (Eq. 2), or an ensemble baseline.")
    task: bool = Field(True, description="L_Task: cross-entropy with the gold labels.")
    hidden_weight: float = Field(1.0, gt=0, description="λ_hid, the hidden loss's weight in the sum (the paper: 1).")
    distill_weight: float = Field(1.0, gt=0, description="λ_dis, the distillation loss's weight in the sum (the paper: 1).")
    task_weight: float = Field(1.0, gt=0, description="λ_task, the task loss's weight in the sum (the paper: 1).")
    temperature: float = Field(default=1.0, gt=0, description="Softmax temperature t of the soft labels (Eq. 2). "
        "(Was distill.temperature, still read with a warning until 0.3.)")
    t2_scale: bool = Field(False, description="Multiply the distillation loss by t² (Hinton et al.; not in the paper). "
        "(Was distill.t2_scale, still read with a warning until 0.3.)")
    weighted: bool = Field(True, description="Per-sample teacher weights 1/(1+CE(y, y_i)) in L_MT-Dis (Eq. 2).")
    teacher_weighting: Literal["paper", "normalized", "confidence"] = Field(
        "paper", description="How L_MT-Dis mixes the teachers per sample (losses.mixture_weights): paper = Eq. 2, "
        "N·α_i/(1+CE) (up to N teachers' worth); normalized = the same weights divided by their sum over teachers; "
        "confidence = softmax over teachers of log α_i − CE/τ (loss.confidence_temperature).")
    teacher_prior: list[float] | None = Field(
        None, description="Fixed per-teacher priors α_i >= 0 (one per teacher, normalised to sum 1; default uniform) in the "
        "soft-label mixture and in the hidden loss's per-teacher weights. A one-hot α is the student of that one teacher.")
    confidence_temperature: float = Field(
        1.0, gt=0, description="τ of teacher_weighting: confidence (smaller: the most correct teacher takes more of the weight).")
    unlabeled_rows: Literal["confidence", "uniform"] = Field(
        "confidence", description="Rows without a gold label (data.unlabeled) take no task loss; their correctness weights "
        "use the prior-weighted teachers' majority class as the label, and the row weighs u_b in the soft-label term: "
        "confidence = max_c p̄_b,c of that mixture (an ambiguous sentence teaches less), uniform = 1.")
    ensemble: Literal["none", "average", "average_logits", "weighted"] = Field(
        "none", description="Fig. 3 baselines: distil one ensembled soft label instead of L_MT-Dis.")
    project: Literal["teacher", "student"] = Field(
        "teacher", description="Side of W_ij in the hidden loss: MSE(H_s, W H_t) (paper) or MSE(W H_s, H_t).")
    projection_init: Literal["auto", "identity", "least_squares", "xavier"] = Field(
        "auto", description="Start of W_ij: least_squares fits each W_ij (ridge, closed form) to the states of the first "
        "training batch before the first step; identity needs equal widths; auto = identity where the widths match, "
        "least squares where they differ.")
    layer_map: Literal["uniform", "last"] = Field(
        "uniform", description="Teacher layer that teaches student layer j (of K; the teacher has L): uniform = "
        "round_half_up(j·L/K), the paper's T·j; last = L − K + j, the teacher's top K layers.")
    hidden_teachers: Literal["all", "same_tokenizer"] | list[str] = Field(
        "all", description="Teachers L_MT-Hid learns from (the soft labels come from every teacher either way): all; "
        "same_tokenizer = those whose tokenization is the student's, so their states need no averaging onto the "
        "student's tokens; or a list of teacher names (a subset of teachers).")

    @model_validator(mode="after")
    def _at_least_one_term(self) -> "LossConfig":
        if not (self.hidden or self.distill or self.task):
            raise ValueError("at least one of hidden, distill, task must be true")
        if self.ensemble != "none" and not self.distill:
            raise ValueError("ensemble replaces the distillation term: it needs loss.distill: true")
        return self


class CacheConfig(_Strict):
    """Stage 2: the teachers' outputs computed once and stored as Parquet, read by every distillation."""

    enabled: bool = Field(True, description="Precompute teacher outputs once; false = run the teachers on the fly.",
        json_schema_extra=not_in_key('decides whether stage 2 runs at all, not what it holds'))
    hidden: bool = Field(
        False, description="Also cache the mapped-layer states aligned to the student's tokens "
        "(rows × tokens × Σ teacher widths × student layers × dtype bytes).")
    dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="Storage type of cached hidden states (read back as float32).")
    max_gb: float = Field(
        default=50.0, gt=0, description="Refuse to build a cache whose estimated size exceeds this many GB.",
        json_schema_extra=not_in_key("a guard on the cache's estimated size, not an input"))


class ResourcesConfig(_Strict):
    """How each stage runs: workers, devices, precision, start-up patience."""

    num_workers: int = Field(default=1, ge=1, description="Data-parallel Train workers per stage.")
    use_gpu: bool = Field(False, description="One GPU share per worker (gpus_per_worker).",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))
    cpus_per_worker: float = Field(
        default=1.0, gt=0, description="CPUs per worker; also torch's thread count on a CPU worker.",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))
    gpus_per_worker: float = Field(default=1.0, gt=0, description="GPUs per worker (with use_gpu).",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of forward passes (fp16 adds a gradient scaler); "
        "TF32 matmuls are enabled on GPUs that have them.")
    execution: Literal["auto", "in_process", "trainer"] = Field(
        "auto", description="auto: one worker without a GPU runs in the calling process (no TorchTrainer "
        "start-up); more workers or a GPU use Ray Train's TorchTrainer. in_process / trainer force a path.",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))
    worker_start_timeout_s: float | None = Field(
        default=None, gt=0, description="Seconds a stage waits for its workers' resources (e.g. an autoscaled GPU "
        "node booting). Default: 900 when joined to a cluster, Ray's 60 on a local Ray. The teacher cache's actor pool "
        "gives up after this long without a row (default 900), with a notice every minute.",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))
    controller_failure_limit: int = Field(
        default=2, ge=0, description="Times a stage retries when its workers could not be started in time.",
        json_schema_extra=not_in_key('where and how fast a stage runs, not what it computes'))

    @model_validator(mode="after")
    def _whole_gpus_for_several_workers(self) -> "ResourcesConfig":
        # two NCCL ranks on one GPU fail ("Duplicate GPU detected"): several workers need a GPU each
        if self.use_gpu and self.num_workers > 1 and self.gpus_per_worker < 1:
            raise ValueError(f"gpus_per_worker={self.gpus_per_worker:g} with num_workers={self.num_workers}: data-parallel "
                             "workers need a whole GPU each (NCCL refuses two ranks on one GPU); set gpus_per_worker: 1 "
                             "or num_workers: 1")
        return self

    def worker_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources

    @property
    def in_process(self) -> bool:
        """Whether stages run in the calling process (``execution``; auto: one worker, no GPU)."""
        if self.execution == "auto":
            return self.num_workers == 1 and not self.use_gpu
        return self.execution == "in_process"


class SelectConfig(_Strict):
    """Which checkpoint is "best": read by checkpoint selection, the sweep's ranking and the analysis
    (like transformers' metric_for_best_model + greater_is_better). Always measured on validation."""

    model_config = ConfigDict(**_Strict.model_config, json_schema_extra=not_in_key(STAGE3_ONLY))

    metric: str = Field(
        "auto", description="Validation metric that selects the best epoch and ranks trials: accuracy, macro_f1, "
        "mcc or f1 (two classes); auto = the task's main metric (MCC for CoLA, F1 for MRPC/QQP, else accuracy).")
    mode: Literal["max", "min"] = Field("max", description="Whether a larger metric is better.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        name = value.removeprefix(Split.VALIDATION.prefix)
        if name != "auto" and name not in METRICS:
            raise ValueError(f"expected auto or one of {', '.join(METRICS)}, got {value!r}")
        return name


class ExperimentConfig(_Strict):
    """One MT-BERT experiment: co-finetune the teachers, cache their outputs, distil the student."""

    name: str = Field("mtbert", description="Run name (a plain folder name under <storage>/runs).",
        json_schema_extra=not_in_key("the run folder's name, not an input"))
    seed: int = Field(0, ge=0, description="Seed of model initialisation, dropout and data order (per rank: seed + rank).")
    teachers: list[str] = Field(description="Teacher encoders: hub ids or folders (any tokenizer, width and depth).")
    student: StudentConfig = Field(description="The student.")
    data: DataConfig = Field(description="The dataset.")
    cofinetune: CofinetuneConfig = Field(CofinetuneConfig(), description="Stage 1.")
    distill: DistillConfig = Field(DistillConfig(), description="Stage 3.")
    loss: LossConfig = Field(LossConfig(), description="Loss terms.")
    cache: CacheConfig = Field(CacheConfig(), description="Stage 2.")
    resources: ResourcesConfig = Field(ResourcesConfig(), description="Workers, devices, precision.")
    select: SelectConfig = Field(SelectConfig(), description="The selection metric.")
    trust_remote_code: bool = Field(False, description="Let models run code from their repository (warned).")
    max_failures: int = Field(
        default=0, ge=0, description="Ray Train restarts of a stage after a worker died (from its latest checkpoint).",
        json_schema_extra=not_in_key('a restarted stage resumes from its checkpoint'))

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        """Keys that moved keep working for one release, each with a one-line ``FutureWarning`` (``MOVED_KEYS``)."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for old, new in MOVED_KEYS.items():
            (old_section, old_key), (new_section, new_key) = old.split("."), new.split(".")
            section = data.get(old_section)
            if not isinstance(section, Mapping) or old_key not in section:
                continue
            section = dict(section)
            value = section.pop(old_key)
            target = dict(data.get(new_section) or {}) if isinstance(data.get(new_section) or {}, Mapping) else data.get(new_section)
            if not isinstance(target, dict):
                continue  # not a section: its own validation error names it
            if new_key in target and target[new_key] != value:
                raise ValueError(f"{old} ({value!r}) and {new} ({target[new_key]!r}) are both set; {old} is the old name of "
                                 f"{new}: keep {new} only")
            target.setdefault(new_key, value)
            data[old_section], data[new_section] = section, target
            warnings.warn(f"{old} is deprecated: write {new} (read as {new} until mtbert-ray 0.3)", FutureWarning, stacklevel=2)
        return data

    @field_validator("teachers")
    @classmethod
    def _teachers_unique(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one teacher (hub id or folder)")
        seen = [t for i, t in enumerate(value) if t in value[:i]]
        if seen:
            raise ValueError(f"duplicated teacher {seen[0]!r}")
        return value

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        return check_plain_name(value)

    @model_validator(mode="after")
    def _hidden_teachers_known(self) -> "ExperimentConfig":
        chosen = self.loss.hidden_teachers
        if isinstance(chosen, list):
            if not chosen:
                raise ValueError("loss.hidden_teachers: expected all, same_tokenizer or a non-empty list of teachers")
            unknown = [t for t in chosen if t not in self.teachers]
            if unknown:
                raise ValueError(f"loss.hidden_teachers: {unknown[0]!r} is not one of the teachers {self.teachers}")
        prior = self.loss.teacher_prior
        if prior is not None:
            if len(prior) != len(self.teachers):
                raise ValueError(f"loss.teacher_prior: {len(prior)} weights for {len(self.teachers)} teachers; expected one per teacher")
            if any(a < 0 for a in prior) or not sum(prior) > 0:
                raise ValueError(f"loss.teacher_prior: expected weights >= 0 with a positive sum, got {prior}")
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> "ExperimentConfig":
        n = self.resources.num_workers
        for section in ("cofinetune", "distill"):
            stage = getattr(self, section)
            parts = n * stage.grad_accum_steps
            if stage.batch_size % parts:
                raise ValueError(
                    f"{section}.batch_size={stage.batch_size} is not divisible by resources.num_workers × "
                    f"{section}.grad_accum_steps = {parts} (the batch size is global)"
                )
        return self


#: Keys that moved to where their kind of setting lives (old → new), read at their old place with a warning.
MOVED_KEYS = {"distill.temperature": "loss.temperature", "distill.t2_scale": "loss.t2_scale"}

HEAD_INITS = ("from_teachers", "random")  # student.head_init values that are not a teacher's name


def head_teacher(config: ExperimentConfig) -> str | None:
    """The teacher whose head, co-finetuned alone, the student copies (``student.head_init: <teacher>``), else None."""
    choice = config.student.head_init
    return None if choice in HEAD_INITS else choice


def experiment_models(config: ExperimentConfig) -> list[str]:
    """Every model an experiment loads: its teachers, the student's checkpoint and a ``head_teacher`` (once each)."""
    return list(dict.fromkeys([*config.teachers, config.student.init_from, *filter(None, [head_teacher(config)])]))


def check_plain_name(value: str) -> str:
    """A name used as one folder under the results root: no separators, not hidden, not ``..``.

    Names from configs, space files and ``--name`` pass here, so none can write outside the results root.
    """
    if not value or any(c in value for c in "/\\\0") or value.startswith("."):
        raise ValueError(f"expected a plain name (no path separators, not starting with '.'), got {value!r}")
    return value


def uses_cache(cfg: ExperimentConfig) -> bool:
    """Whether stage 2 runs: the cache replaces the teachers only when it holds everything the loss needs (logits for
    the soft labels; the states too when the hidden loss is on)."""
    return cfg.cache.enabled and (cfg.loss.distill or cfg.loss.hidden) and (not cfg.loss.hidden or cfg.cache.hidden)


def distill_seed(cfg: ExperimentConfig) -> int:
    """Stage 3's seed: ``distill.seed``, else derived from the experiment seed."""
    return cfg.distill.seed if cfg.distill.seed is not None else cfg.seed + 1000


def micro_batch(cfg: ExperimentConfig, section: Literal["cofinetune", "distill"]) -> int:
    """Examples one worker puts through one forward/backward: batch_size / (workers × grad_accum_steps)."""
    stage = getattr(cfg, section)
    return stage.batch_size // (cfg.resources.num_workers * stage.grad_accum_steps)


# ---- loading, overrides, errors -----------------------------------------------------------------

class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses a key given twice in one mapping (PyYAML keeps the last one silently,
    which once dropped a whole config section)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key].start_mark.line + 1})", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """``yaml.safe_load`` with ``UniqueKeyLoader`` (safe tags only; a key given twice is an error)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """``yaml.safe_load`` of a mapping, with one-line errors naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    try:
        data = safe_load_unique(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``dotted.key=value`` → (["dotted", "key"], value parsed as YAML: numbers, booleans, lists)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(data: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``data`` with every ``dotted.key=value`` set (intermediate mappings are created)."""
    result = copy.deepcopy(dict(data))
    for text in overrides:
        parts, value = parse_override(text)
        set_dotted(result, parts, value, label=text)
    return result


def set_dotted(data: dict[str, Any], parts: list[str], value: Any, label: str | None = None) -> None:
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {label or '.'.join(parts)}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def validate_config(data: Mapping[str, Any], source: str = "config") -> ExperimentConfig:
    """``ExperimentConfig`` from a mapping; the first problem becomes one ``ConfigError`` line."""
    try:
        return ExperimentConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override and validate an experiment YAML."""
    return validate_config(apply_overrides(read_yaml(path), overrides), source=str(path))


def format_validation_error(exc: ValidationError, source: str) -> str:
    """``source: field.path: what was expected (got value)`` for the first error (+ how many more)."""
    errors = exc.errors()
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        message = "unknown key"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if "input" in first and not isinstance(first["input"], (dict, list)) and f"got {first['input']!r}" not in message:
            message += f" (got {first['input']!r})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: {where}: {message}{more}" if where else f"{source}: {message}{more}"


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
