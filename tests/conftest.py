"""Shared fixtures. The shared models/data folder is passed in (MTBERT_SHARED), never hard-coded in the package."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MTBERT_SHARED", REPO.parent / "shared")).resolve()

# Must be set before huggingface_hub is imported anywhere: it reads them at import time.
os.environ.setdefault("HF_HUB_CACHE", str(SHARED / "hf-home" / "hub"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="mtbert-hf-home-"))  # anything else HF writes goes here
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.tiny_models import make_tiny_bert, make_tiny_roberta  # noqa: E402

MINILM_L6 = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
RT_POLARITY = REPO / "data" / "rt_polarity"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """Paths of a tiny WordPiece BERT (width 32) and a tiny byte-level-BPE RoBERTa (width 48)."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {
        "bert": str(make_tiny_bert(root / "tiny-bert")),
        "roberta": str(make_tiny_roberta(root / "tiny-roberta")),
    }


@pytest.fixture(scope="session")
def rt_polarity() -> Path:
    """The vendored rt_polarity Parquet folder (train/validation/test)."""
    return RT_POLARITY
