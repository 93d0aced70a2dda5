"""Typed experiment configuration: YAML in, validated (unknown keys are errors), CLI overrides.

One ``ExperimentConfig`` describes one MT-BERT experiment (data → co-finetuning → teacher
cache → distillation). Defaults follow the paper (§3.1) and ARCHITECTURE.md's decisions.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mtbert_ray.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    """Where the labelled text comes from and how it is tokenized (see ``mtbert_ray.data``)."""

    source: Literal["glue", "mind", "files"] = "files"
    path: str | None = None  # local folder (files: train/validation/test files; glue: GLUE TSVs; mind: MIND folders)
    task: str | None = None  # GLUE task name (sst2, rte, …)
    text_fields: list[str] | None = None  # files: one column, or two for sentence pairs
    label_field: str = "label"
    num_labels: int | None = Field(default=None, ge=2)  # inferred from the training split when omitted
    mind_text: Literal["title", "title_abstract"] = "title"
    unseen_labels: Literal["error", "drop"] = "error"  # evaluation labels missing from the training split
    max_length: int = Field(default=128, ge=8, le=4096)
    limit_train: int | None = Field(default=None, ge=1)
    limit_eval: int | None = Field(default=None, ge=1)
    seed: int = 0
    revision: str | None = None  # hub dataset revision (glue from the hub)
    cache_dir: str | None = None  # default: $MTBERT_RAY_CACHE or ~/.cache/mtbert_ray

    @field_validator("text_fields")
    @classmethod
    def _one_or_two_fields(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not 1 <= len(value) <= 2:
            raise ValueError(f"expected one text column, or two for sentence pairs; got {len(value)}")
        return value

    @model_validator(mode="after")
    def _source_needs(self) -> "DataConfig":
        if self.source == "glue" and not self.task:
            raise ValueError("data.source 'glue' needs data.task (e.g. sst2, rte)")
        if self.source in ("mind", "files") and not self.path:
            raise ValueError(f"data.source '{self.source}' needs data.path (a local folder)")
        if self.source == "files" and not self.text_fields:
            raise ValueError("data.source 'files' needs data.text_fields (the text column, or two for pairs)")
        return self


class StudentConfig(_Strict):
    init_from: str  # hub id or folder of a pretrained encoder; the student keeps its first num_layers layers
    num_layers: int = Field(ge=1)
    query_dim: int = Field(default=200, ge=1)
    head_init: Literal["shared_head", "random"] = "shared_head"  # copy pooling + dense from the co-finetuned head


class CofinetuneConfig(_Strict):
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=2e-6, gt=0)  # teachers
    head_lr: float = Field(default=1e-3, gt=0)  # shared pooling + dense head (randomly initialised)
    batch_size: int = Field(default=64, ge=1)
    shared_head: bool = True  # false: each teacher finetuned alone (the paper's "w/o co-finetuning")
    weight_decay: float = Field(default=0.0, ge=0)
    query_dim: int = Field(default=200, ge=1)
    reuse: bool = True  # false: train the teachers afresh for this run even when the stage exists (not part of the key)


class DistillConfig(_Strict):
    epochs: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-6, gt=0)  # student
    projection_lr: float | None = Field(default=None, gt=0)  # W_ij; default: the student lr
    batch_size: int = Field(default=64, ge=1)
    temperature: float = Field(default=1.0, gt=0)
    t2_scale: bool = False
    weight_decay: float = Field(default=0.0, ge=0)


class LossConfig(_Strict):
    hidden: bool = True  # L_MT-Hid
    distill: bool = True  # L_MT-Dis (or an ensemble baseline, see `ensemble`)
    task: bool = True  # L_Task
    weighted: bool = True  # per-sample weights 1/(1+CE(y, y_i)) in L_MT-Dis
    ensemble: Literal["none", "average", "average_logits", "weighted"] = "none"  # Fig. 3 baselines replace L_MT-Dis
    project: Literal["teacher", "student"] = "teacher"  # side of W_ij in the hidden loss

    @model_validator(mode="after")
    def _at_least_one_term(self) -> "LossConfig":
        if not (self.hidden or self.distill or self.task):
            raise ValueError("at least one of hidden, distill, task must be true")
        if self.ensemble != "none" and not self.distill:
            raise ValueError("ensemble replaces the distillation term: it needs loss.distill: true")
        return self


class CacheConfig(_Strict):
    enabled: bool = True  # stage 2: precompute teacher outputs once; false = run teachers on the fly
    hidden: bool = False  # also cache the mapped-layer states (large: rows × tokens × width × layers × teachers)


class ResourcesConfig(_Strict):
    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=1.0, gt=0)  # only used with use_gpu

    def worker_resources(self) -> dict[str, float]:
        resources = {"CPU": self.cpus_per_worker}
        if self.use_gpu:
            resources["GPU"] = self.gpus_per_worker
        return resources


class ExperimentConfig(_Strict):
    name: str = "mtbert"
    seed: int = 0
    teachers: list[str]
    student: StudentConfig
    data: DataConfig
    cofinetune: CofinetuneConfig = CofinetuneConfig()
    distill: DistillConfig = DistillConfig()
    loss: LossConfig = LossConfig()
    cache: CacheConfig = CacheConfig()
    resources: ResourcesConfig = ResourcesConfig()
    trust_remote_code: bool = False
    max_failures: int = Field(default=0, ge=0)  # Ray Train worker-failure retries per stage

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


def check_plain_name(value: str) -> str:
    """A name used as one folder under the results root: no separators, not hidden, not ``..``.

    Names from configs, space files and ``--name`` pass here, so none can write outside the results root.
    """
    if not value or any(c in value for c in "/\\\0") or value.startswith("."):
        raise ValueError(f"expected a plain name (no path separators, not starting with '.'), got {value!r}")
    return value


# ---- loading, overrides, errors -----------------------------------------------------------------

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
        data = yaml.safe_load(text)
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
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
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
    return f"{source}: {where}: {message}{more}"


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
