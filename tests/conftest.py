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


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole test run (4 logical CPUs: Train workers + Ray Data on 2 cores)."""
    import ray

    from mtbert_ray.distributed.runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    init_ray(required_cpus=4, object_store_memory=400 * 2**20, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_storage(tmp_path_factory) -> Path:
    """One results root for the test session: tests whose experiments share teachers, data and
    co-finetuning config reuse the co-finetuned teachers instead of training them again."""
    return tmp_path_factory.mktemp("shared-results")


def tiny_experiment(tiny_models: dict[str, str], tmp_path: Path, **sections) -> dict:
    """A tiny, fast experiment config (dict): tiny BERT + tiny RoBERTa teachers, 1-layer student, 128 sentences."""
    config = {
        "name": "tiny",
        "seed": 0,
        "teachers": [tiny_models["bert"], tiny_models["roberta"]],
        "student": {"init_from": tiny_models["bert"], "num_layers": 1, "query_dim": 16},
        "data": {
            "source": "files", "path": str(RT_POLARITY), "text_fields": ["sentence"],
            "limit_train": 128, "limit_eval": 64, "max_length": 32, "cache_dir": str(tmp_path / "data-cache"),
        },
        "cofinetune": {"epochs": 1, "lr": 1e-3, "head_lr": 1e-3, "batch_size": 32, "query_dim": 16},
        "distill": {"epochs": 2, "lr": 1e-3, "batch_size": 32},
        "loss": {"hidden": True},  # the paper's three terms: the tests cover the hidden loss's whole path
        "resources": {"num_workers": 1, "cpus_per_worker": 1},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config
