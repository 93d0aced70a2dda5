"""``docs/config.md`` and ``docs/spaces.md`` generated from the config and space-file models' field descriptions.

    python -m mtbert_ray.config.doc > docs/config.md
    python -m mtbert_ray.config.doc --spaces > docs/spaces.md

A test regenerates both pages and fails when a committed copy is stale.
"""
from __future__ import annotations

import sys
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from mtbert_ray.config.experiment import ExperimentConfig
from mtbert_ray.config.keys import EVERY_STAGE, marker
from mtbert_ray.config.space import SpaceFile

HEADER = """# Experiment configuration

Generated from the field descriptions in `mtbert_ray/config/experiment.py` by `python -m mtbert_ray.config.doc`
(a test fails when this page is stale). An experiment YAML holds these keys; unknown keys are
errors, `--set dotted.key=value` overrides any of them, and the resolved config (every default
written out) is saved as `config.yaml` in each run folder.
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " \\| ".join(parts) + (" \\| null" if type(None) in args else "")
    if origin is list:
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is PydanticUndefined:
        return ""
    if isinstance(value, BaseModel):
        return "(section)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value}`"


def sections(model: type[BaseModel] = ExperimentConfig, prefix: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(dotted prefix, model) for the top level and every nested section, in declaration order."""
    found = [(prefix, model)]
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += sections(annotation, f"{prefix}{name}.")
    return found


SPACES_HEADER = """# Space files

Generated from the field descriptions in `mtbert_ray/config/space.py` by `python -m mtbert_ray.config.doc --spaces`
(a test fails when this page is stale). A space file (`tune_spaces/*.yaml`) is a study for
`python -m mtbert_ray.sweep --space FILE`: a base experiment (docs/config.md), what varies, how Tune searches and
how the analysis tabulates; unknown keys are errors, and `--set` overrides any of them
(`--set space.variant={grid: [a, b]}`, `--set search.num_samples=8`, or an experiment key).
"""


def config_markdown() -> str:
    return models_markdown(ExperimentConfig, HEADER)


def spaces_markdown() -> str:
    return models_markdown(SpaceFile, SPACES_HEADER)


def _key_note(model: type[BaseModel], name: str) -> str:
    """A field's ``not_in_key`` marker (``config.keys``), said in the docs: which stage keys leave it out, and why."""
    mark = marker(model, name) if hasattr(model, "model_fields") else None
    if mark is None:
        return ""
    which = "any stage key" if set(mark["stages"]) == set(EVERY_STAGE) else "the " + " and ".join(mark["stages"]) + " key"
    return f" *Not part of {which}: {mark['reason']}.*"


def models_markdown(root: type[BaseModel], header: str) -> str:
    """A page of every field of ``root`` and its nested sections: key, type, default, description."""
    lines = [header]
    for prefix, model in sections(root):
        title = prefix.rstrip(".") or "top level"
        lines += [f"## `{title}`" if prefix else "## Top level", ""]
        doc = (model.__doc__ or "").strip().splitlines()
        if doc:
            lines += [" ".join(d.strip() for d in doc), ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                lines.append(f"| `{prefix}{name}` | section | | {field.description} See `{prefix}{name}` below. |")
                continue
            lines.append(f"| `{prefix}{name}` | {_type_name(annotation)} | {_default(field)} | {field.description or ''}{_key_note(model, name)} |")
        lines.append("")
    return "\n".join(lines)


def settable_keys(model: type[BaseModel] = ExperimentConfig) -> str:
    """Every key ``--set`` takes (``mtbert-ray run --list-keys``): its dotted path, type and default, and its meaning's
    first sentence, from the same field descriptions as docs/config.md."""
    rows = []
    for prefix, section in sections(model):
        for name, field in section.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                continue
            meaning = (field.description or "").split(". ")[0].rstrip(".")
            rows.append((f"{prefix}{name}", _type_name(annotation).replace("\\|", "|"), _default(field).strip("`*"), meaning))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{k:<{widths[0]}}  {t:<{widths[1]}}  {d:<{widths[2]}}  {m}" for k, t, d, m in rows)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    print(spaces_markdown() if "--spaces" in args else config_markdown(), end="")


if __name__ == "__main__":
    main()
