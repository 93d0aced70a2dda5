"""Stage keys declared once (``mtbert_ray.config.keys``): every config field is in a key or opts out with its reason,
a section's new field is in its key by default, and the keys of the published stages do not drift."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pydantic import BaseModel

from mtbert_ray.common.hashing import stable_hash
from mtbert_ray.config import CofinetuneConfig, ExperimentConfig, validate_config
from mtbert_ray.config.keys import COFINETUNE, EVERY_STAGE, SPECS, marker, section_values, uncovered_fields
from mtbert_ray.experiment.key_facts import KeyFacts, cofinetune_inputs, teacher_cache_inputs

BASE = {"teachers": ["a", "b"], "student": {"init_from": "a", "num_layers": 2},
        "data": {"source": "files", "path": "/x", "text_fields": ["s"]}}
FACTS = KeyFacts("d", None, ("train", "validation"), {"a": "tok_a", "b": "tok_b"}, None, {"a": 6, "b": 12})


def _cfg(**sections) -> ExperimentConfig:
    return validate_config({**BASE, **sections})


def test_every_config_field_is_in_a_key_or_says_why_not():
    assert uncovered_fields(ExperimentConfig) == []
    for model in _models(ExperimentConfig):
        for name in [None, *model.model_fields]:
            mark = marker(model, name)
            if mark is not None:
                assert mark["reason"].strip() and set(mark["stages"]) <= set(EVERY_STAGE), (model.__name__, name)


def test_a_field_neither_keyed_nor_marked_is_reported():
    class Extra(BaseModel):
        knob: int = 1

    class Config(ExperimentConfig):
        extra: Extra = Extra()

    assert uncovered_fields(Config) == ["extra.knob"]


def test_a_new_field_of_a_section_taken_whole_is_in_its_key():
    class Wider(CofinetuneConfig):
        warmup: int = 3

    values = section_values(Wider(), "cofinetune")
    assert values["warmup"] == 3 and "reuse" not in values and "grad_accum_steps" not in values


def test_the_published_keys_have_not_changed():
    """Keys of stages users already published (the project's cached teachers stay valid): a change of what goes into
    a key must be deliberate, and bump the spec's version when it changes what the key means."""
    assert stable_hash(cofinetune_inputs(_cfg(), FACTS)) == "5d24266491d33186"
    # the dataset key (the shards, and through them every stage) as every release computed it: a new data field that
    # is not marked not_in_key would change these, and with them every published artefact's key
    from mtbert_ray.config import DataConfig
    from mtbert_ray.config.keys import DATASET

    plain = DataConfig(source="files", path="/x", text_fields=["s"])
    assert DATASET.key(plain, root="data", fingerprint="f", labels=["0", "1"]) == "82fb9438ed9a8f79"
    full = DataConfig(source="files", path="/x", text_fields=["s"], limit_train=100, max_length=64, unlabeled="/t.txt")
    assert DATASET.key(full, root="data", fingerprint="f", labels=["0", "1"]) == "2bcb7f3172986a02"
    assert stable_hash(cofinetune_inputs(_cfg(resources={"num_workers": 2}), FACTS)) == "ecc492cbe8ae4eff"
    assert stable_hash(teacher_cache_inputs(_cfg(), FACTS, "5d24266491d33186", ["train"], True)) == \
        stable_hash(teacher_cache_inputs(_cfg(cache={"max_gb": 3}), FACTS, "5d24266491d33186", ["train"], True))


def test_stage_one_key_follows_what_changes_the_teachers():
    base = stable_hash(cofinetune_inputs(_cfg(), FACTS))
    same = [_cfg(cofinetune={"grad_accum_steps": 2}), _cfg(cofinetune={"gradient_checkpointing": True}),
            _cfg(resources={"cpus_per_worker": 2}), _cfg(name="other"), _cfg(loss={"temperature": 3}),
            _cfg(data={**BASE["data"], "path": "/elsewhere", "cache_dir": "/c", "unlabeled": "/u.txt"}),
            _cfg(select={"metric": "macro_f1"})]  # one epoch: nothing to select among
    assert {stable_hash(cofinetune_inputs(c, FACTS)) for c in same} == {base}
    changed = [_cfg(cofinetune={"lr": 1e-4}), _cfg(seed=1), _cfg(data={**BASE["data"], "max_length": 64}),
               _cfg(resources={"precision": "bf16"})]
    assert len({base, *(stable_hash(cofinetune_inputs(c, FACTS)) for c in changed)}) == 1 + len(changed)
    two = _cfg(cofinetune={"epochs": 2})
    assert stable_hash(cofinetune_inputs(two, FACTS)) != stable_hash(
        cofinetune_inputs(_cfg(cofinetune={"epochs": 2}, select={"metric": "macro_f1"}), FACTS)), \
        "the selection metric picks which of two co-finetuning epochs is kept"


def test_the_teacher_cache_key_follows_states_dtype_and_unlabelled_text():
    def key(cfg=None, facts=FACTS, splits=("train",), states=True):
        return stable_hash(teacher_cache_inputs(cfg or _cfg(), facts, "k", list(splits), states))

    base = key()
    assert key(_cfg(cache={"dtype": "bfloat16"})) != base and key(_cfg(cache={"dtype": "bfloat16"}), states=False) == key(states=False)
    assert key(_cfg(student={"init_from": "a", "num_layers": 3})) != base
    text = KeyFacts("d", "u1", ("train", "unlabeled"), FACTS.model_tokenization, None, FACTS.teacher_depths)
    other = KeyFacts("d", "u2", ("train", "unlabeled"), FACTS.model_tokenization, None, FACTS.teacher_depths)
    assert key(facts=text, splits=("train", "unlabeled")) != key(facts=other, splits=("train", "unlabeled")) != base


def test_an_undeclared_input_is_refused():
    with pytest.raises(TypeError, match="not declared"):
        COFINETUNE.inputs(_cfg(), tokenizations=[], surprise=1)


def test_every_spec_reads_real_config_paths():
    known = {path for model_path in _paths(ExperimentConfig) for path in _prefixes(model_path)}
    for spec in SPECS:
        assert spec.paths() <= known, spec.kind


def _models(model: type[BaseModel]):
    yield model
    for f in model.model_fields.values():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _models(f.annotation)


def _paths(model: type[BaseModel], prefix: str = ""):
    for name, f in model.model_fields.items():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            yield from _paths(f.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def _prefixes(path: str):
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def test_key_facts_of_a_context():
    from mtbert_ray.experiment.context import StageContext

    data = SimpleNamespace(model_tokenization={"a": "tok_a", "b": "tok_b"}, dataset_key="d", unlabeled_key="u",
                           splits={"train": [], "unlabeled": []})
    facts = KeyFacts.of(StageContext(_cfg(), data, teacher_depths=[6, 12]))
    assert facts.splits == ("train", "unlabeled") and facts.teacher_depths == {"a": 6, "b": 12} and facts.unlabeled_key == "u"
