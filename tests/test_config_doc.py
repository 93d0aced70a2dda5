"""docs/config.md is generated from the config models' field descriptions and must not go stale."""
from __future__ import annotations

from mtbert_ray.config import ExperimentConfig
from mtbert_ray.config.doc import config_markdown, sections
from tests.conftest import REPO


def test_docs_config_md_is_the_generated_page():
    committed = (REPO / "docs" / "config.md").read_text()
    assert committed == config_markdown(), "docs/config.md is stale: run `python -m mtbert_ray.config.doc > docs/config.md`"


def test_every_config_field_has_a_description():
    missing = [f"{prefix}{name}" for prefix, model in sections(ExperimentConfig)
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"fields without help text: {missing}"


def test_the_readme_links_the_config_reference():
    assert "docs/config.md" in (REPO / "README.md").read_text()


def test_docs_spaces_md_is_the_generated_page():
    from mtbert_ray.config.doc import spaces_markdown

    committed = (REPO / "docs" / "spaces.md").read_text()
    assert committed == spaces_markdown(), "docs/spaces.md is stale: run `python -m mtbert_ray.config.doc --spaces > docs/spaces.md`"


def test_every_space_file_setting_has_a_description():
    from mtbert_ray.config.space import SpaceFile

    missing = [f"{prefix}{name}" for prefix, model in sections(SpaceFile)
               for name, field in model.model_fields.items() if not (field.description or "").strip()]
    assert not missing, f"space-file settings without help text: {missing}"
