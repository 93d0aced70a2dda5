"""What each reusable artefact's key is made of, declared once and used by the stages and the dry run alike.

A ``StageSpec`` lists the config paths whose values enter a key (``fields``) and the key entries computed from facts
outside the config (``derived``: the data's content hash, each model's tokenization, the teachers' depths) together
with the config paths they stand for. A path naming a section takes every field of it — a field added to the section
later is in the key by default — except the fields that opt out with a marker and its reason::

    reuse: bool = Field(True, ..., json_schema_extra=not_in_key("a switch for this run, not an input", stages=("cofinetune",)))

``tests/test_stage_keys.py`` fails when a config field is neither in a key (directly, in a section taken whole, or
behind a derived entry) nor marked; stage 3 is a run of its own folder, shared with no other run, so the sections only
it reads carry one marker for the whole section (``STAGE3_ONLY``). The key is ``stable_hash(inputs)``; changing what a
key means (not what goes into it) bumps the spec's ``version``.

``mtbert_ray.experiment.key_facts`` computes the inputs: ``KeyFacts`` are the derived facts: the stages take them from
the prepared data (``KeyFacts.of``), the dry run from the source files and the models' config and tokenizer files
(``study.dryrun``), so both compute the same key.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from mtbert_ray.common.hashing import stable_hash

NOT_IN_KEY = "not_in_key"
EVERY_STAGE = ("dataset", "cofinetune", "teacher_cache")

#: The reason carried by the sections only stage 3 reads (its run folder is its key: nothing is shared between runs).
STAGE3_ONLY = "stage 3 only: the student is trained in its own run folder, shared with no other run"


def not_in_key(reason: str, stages: tuple[str, ...] = EVERY_STAGE) -> dict[str, Any]:
    """The marker of a field left out of the keys of ``stages`` (``Field(json_schema_extra=...)`` or a section's
    ``model_config``), with the reason: what it changes is not what the stage computes, or it is keyed otherwise."""
    return {NOT_IN_KEY: {"reason": reason, "stages": list(stages)}}


def marker(model: type[BaseModel], name: str | None = None) -> dict[str, Any] | None:
    """The ``not_in_key`` marker of field ``name`` of ``model`` (None: of the section class itself)."""
    if name is None:
        extra = model.model_config.get("json_schema_extra")
    else:
        extra = model.model_fields[name].json_schema_extra
    return extra.get(NOT_IN_KEY) if isinstance(extra, dict) else None


def excluded(model: type[BaseModel], name: str, stage: str) -> bool:
    """Whether field ``name`` of ``model`` opts out of ``stage``'s key."""
    mark = marker(model, name)
    return mark is not None and stage in mark["stages"]


def section_values(obj: BaseModel, stage: str) -> dict[str, Any]:
    """A config section as it enters ``stage``'s key: every field but those marked ``not_in_key`` for that stage."""
    return obj.model_dump(mode="json", exclude={n for n in type(obj).model_fields if excluded(type(obj), n, stage)})


def _resolve(obj: Any, path: str) -> Any:
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class StageSpec:
    """The inputs of one kind of published artefact's key."""

    kind: str
    version: int | None  # None: no "stage"/"v" header (the dataset key, unchanged since the first release)
    fields: Mapping[str, str]  # key entry → config path (a section: its fields minus the marked ones)
    derived: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # key entry → the config paths it stands for

    def config_values(self, cfg: BaseModel, root: str = "") -> dict[str, Any]:
        """The entries taken from the config; ``root``: the path of ``cfg`` itself (``"data"`` for a DataConfig)."""
        values = {}
        for entry, path in self.fields.items():
            relative = path.removeprefix(root).lstrip(".") if root and path.startswith(root) else path
            value = _resolve(cfg, relative)
            values[entry] = section_values(value, self.kind) if isinstance(value, BaseModel) else _jsonable(value)
        return values

    def inputs(self, cfg: BaseModel, root: str = "", **derived: Any) -> dict[str, Any]:
        """Everything the key is computed from: the header, the config entries and the derived ones given (an entry
        given as None is left out, so an optional input does not change the keys of the runs without it)."""
        unknown = set(derived) - set(self.derived)
        if unknown:
            raise TypeError(f"{self.kind}: {sorted(unknown)} are not declared inputs of its key")
        header = {"stage": self.kind, "v": self.version} if self.version is not None else {}
        return {**header, **self.config_values(cfg, root), **{k: v for k, v in derived.items() if v is not None}}

    def key(self, cfg: BaseModel, root: str = "", **derived: Any) -> str:
        return stable_hash(self.inputs(cfg, root, **derived))

    def paths(self) -> set[str]:
        """Every config path this key reads, directly or through a derived entry."""
        return set(self.fields.values()) | {p for paths in self.derived.values() for p in paths}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


DATASET = StageSpec(
    "dataset", None,
    fields={"options": "data"},
    derived={"fingerprint": ("data.path", "data.revision"), "labels": ("data.label_field", "data.num_labels")},
)

COFINETUNE = StageSpec(
    "cofinetune", 2,
    fields={"teachers": "teachers", "max_length": "data.max_length", "cofinetune": "cofinetune", "seed": "seed",
            "num_workers": "resources.num_workers",  # per-rank dropout seeds and data shards
            "precision": "resources.precision"},
    derived={
        "tokenizations": ("teachers", "trust_remote_code"),
        "data": ("data",),  # the dataset key
        "head_width_value": ("cofinetune.head_width", "student.init_from"),  # cofinetune.head_width: student
        "select": ("select.metric", "select.mode"),  # picks the best of several co-finetuning epochs
        "nonce": ("cofinetune.reuse",),  # reuse: false keys the teachers to one run folder
    },
)

TEACHER_CACHE = StageSpec(
    "teacher_cache", 2,
    fields={"max_length": "data.max_length"},
    derived={
        "teachers": ("teachers", "cofinetune", "seed", "resources.num_workers", "resources.precision"),  # stage 1's key
        "data": ("data",),
        "student_tokenization": ("student.init_from",),
        "layer_maps": ("student.num_layers", "loss.layer_map", "loss.hidden", "cache.hidden"),  # None: logits only
        "dtype": ("cache.dtype",),  # None: logits only
        "splits": ("data.unlabeled", "data.augment.copies"),
        "unlabeled": ("data.unlabeled", "data.limit_unlabeled", "data.missing_labels", "data.augment"),  # its content hash
        "layout": ("data.unlabeled", "data.augment.copies"),  # "interleaved": both kinds of rows in one folder (None: one split)
    },
)

SPECS = (DATASET, COFINETUNE, TEACHER_CACHE)


def uncovered_fields(model: type[BaseModel]) -> list[str]:
    """Config fields of ``model`` (dotted paths) that are in no key of ``SPECS`` — not named, not in a section taken
    whole, not behind a derived entry — and carry no ``not_in_key`` marker (nor does their section): a field here could
    let a stage silently reuse an artefact made with another value."""
    read = set().union(*(spec.paths() for spec in SPECS))
    out = []

    def walk(cls: type[BaseModel], prefix: str, section_marked: bool) -> None:
        for name, info in cls.model_fields.items():
            path = f"{prefix}{name}"
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                walk(info.annotation, path + ".", section_marked or marker(info.annotation) is not None)
                continue
            keyed = any(path == p or path.startswith(p + ".") for p in read)
            if not (keyed or section_marked or marker(cls, name) is not None):
                out.append(path)

    walk(model, "", marker(model) is not None)
    return out
