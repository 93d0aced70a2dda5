"""MIND/MNLI-size behaviour at test size: shuffled training order, no row dropped or counted twice on any number
of workers, a cache whose size is checked before it is built, keys that say what changed."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import validate_config
from tests import data_fixtures as fx
from tests.conftest import RT_POLARITY, tiny_experiment


def _label_sorted(folder: Path, train: int, validation: int) -> Path:
    """A files source whose rows are sorted by label (all negatives first): the worst case for a local shuffle."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", train), ("validation", validation), ("test", validation)):
        half = n // 2
        texts = [fx.NEG[i % 3] for i in range(half)] + [fx.POS[i % 3] for i in range(n - half)]
        pd.DataFrame({"text": texts, "label": [0] * half + [1] * (n - half)}).to_parquet(folder / f"{split}.parquet")
    return folder


@pytest.mark.slow
def test_a_label_sorted_source_gives_mixed_batches_from_the_first_step_and_a_new_order_each_epoch(ray_session, tiny_models, tmp_path):
    from mtbert_ray.core.collate import PadCollate
    from mtbert_ray.data.columns import view_columns
    from mtbert_ray.data.shards import prepare_data
    from mtbert_ray.distributed.loader import batches_of, read_split

    cfg = validate_config(tiny_experiment(tiny_models, tmp_path))
    data_cfg = cfg.data.model_copy(update={"path": str(_label_sorted(tmp_path / "sorted", 3000, 64)), "text_fields": ["text"],
                                           "limit_train": None, "limit_eval": None})
    data = prepare_data(data_cfg, [tiny_models["bert"]])
    tokenization = data.model_tokenization[tiny_models["bert"]]
    collate = PadCollate({tokenization: 0})

    def order(epoch: int) -> list[list[int]]:
        ds = read_split(data.splits["train"], view_columns([tokenization], with_offsets=False), shuffle_seed=7)
        return [b["example_id"].tolist() for b in batches_of(ds, 32, collate, shuffle=(7, epoch))]

    first = pd.read_parquet(data.splits["train"])
    batches = [b for b in batches_of(read_split(data.splits["train"], shuffle_seed=7), 32, collate, shuffle=(7, 0))]
    labels = batches[0]["label"].tolist()
    assert 0.2 < sum(labels) / len(labels) < 0.8, f"first batch of a label-sorted source is one-sided: {labels}"
    assert sum(len(b["label"]) for b in batches) == len(first) == 3000
    epoch0, epoch1 = order(0), order(1)
    assert sorted(sum(epoch0, [])) == sorted(sum(epoch1, [])) == sorted(first["example_id"].tolist())
    assert epoch0 != epoch1, "every epoch has a new order"
    assert order(0) == epoch0, "the order of an epoch is reproducible from (seed, epoch)"


def test_a_cache_larger_than_max_gb_is_refused_with_the_switches_that_shrink_it(tiny_models, tmp_path):
    from mtbert_ray.experiment.cache_size import check_cache_size, estimate_cache

    cfg = validate_config(tiny_experiment(tiny_models, tmp_path, cache={"hidden": True, "max_gb": 1}))
    estimate = estimate_cache(cfg, {"train": 393_702}, {"train": 25.0}, [768, 768, 768], 3, hidden=True)
    # 393,702 rows × 25 tokens × (20 index bytes + 3 × 768 × 1 layer × 2 bytes) + 393,702 × 2 teachers × 3 classes × 4 bytes
    assert estimate.bytes == pytest.approx(393_702 * (25 * (20 + 3 * 768 * 2) + 2 * 3 * 4))
    with pytest.raises(ConfigError, match=r"cache: the teacher cache would take ~45.6 GB \(393,702 rows × 25.0 tokens .*"
                                          r"more than cache.max_gb=1; shrink it with cache.hidden: false"):
        check_cache_size(cfg, estimate)
    check_cache_size(cfg, estimate_cache(cfg, {"train": 393_702}, {"train": 25.0}, [768, 768, 768], 3, hidden=False))  # 0.2 GB


def test_a_changed_cofinetuning_key_is_reported(tmp_path, capsys):
    from mtbert_ray.store.stage import Built, reuse_or_build

    def build(folder: Path) -> Built:
        (folder / "a").mkdir(parents=True)
        (folder / "a" / "weights.bin").write_bytes(b"w")
        return Built(folder / "a")

    first = {"teachers": ["x"], "cofinetune": {"batch_size": 32}, "num_workers": 1}
    reuse_or_build(tmp_path, "cofinetune", "k1", build, what="stage 1", inputs=first, identity="teachers-x")
    second = {"teachers": ["x"], "cofinetune": {"batch_size": 64}, "num_workers": 2}
    reuse_or_build(tmp_path, "cofinetune", "k2", build, what="stage 1", inputs=second, identity="teachers-x")
    out = capsys.readouterr().out
    assert "with other settings, so it is not reused: cofinetune.batch_size: 32 → 64; num_workers: 1 → 2" in out
    again = reuse_or_build(tmp_path, "cofinetune", "k2", build, what="stage 1", inputs=second, identity="teachers-x")
    assert again.reused and json.loads((again.folder / "mtbert_stage.json").read_text())["inputs"] == second


def test_the_cofinetuning_key_counts_the_global_batch_and_the_workers(tiny_models, tmp_path):
    from types import SimpleNamespace

    from mtbert_ray.experiment.context import StageContext
    from mtbert_ray.experiment.stages import cofinetune_key

    def key(**resources) -> str:
        cfg = validate_config(tiny_experiment(tiny_models, tmp_path, resources=resources))
        data = SimpleNamespace(model_tokenization={t: t for t in cfg.teachers}, dataset_key="d", unlabeled_key=None, splits={})
        return cofinetune_key(StageContext(cfg, data))

    one, two = key(num_workers=1), key(num_workers=2)
    assert one != two, "2 workers at global batch 32 train other teachers (dropout per rank, data shards) than 1"
    assert key(num_workers=1, precision="bf16") != one
    with pytest.raises(ConfigError, match="not divisible by resources.num_workers"):
        key(num_workers=3)  # global batch 32 cannot be split over 3 workers


@pytest.mark.slow
def test_three_workers_on_an_odd_row_count_cover_every_row_and_export_what_they_report(ray_session, tiny_models, tmp_path):
    """1,001 training rows (cached teacher outputs with hidden states) and 65 validation / test rows on three
    data-parallel workers: the cache holds every training row once, in the view's order, validation and test count every row once,
    and the exported student scores what the run reported."""
    import pyarrow.parquet as pq
    import torch

    from mtbert_ray.core.metrics import accuracy, confusion_matrix
    from mtbert_ray.deploy.classifier import StudentClassifier
    from mtbert_ray.experiment.pipeline import run_experiment

    raw = tiny_experiment(tiny_models, tmp_path, cache={"enabled": True, "hidden": True},
                          cofinetune={"batch_size": 33}, distill={"epochs": 1, "batch_size": 33},
                          resources={"num_workers": 3, "cpus_per_worker": 1})
    raw["data"].update(limit_train=1001, limit_eval=65)
    result = run_experiment(validate_config(raw), storage=tmp_path / "results")
    cache_rows = [pq.read_table(f, columns=["example_id"])["example_id"].to_pylist()
                  for f in sorted(Path(result.teacher_cache.checkpoint).rglob("*.parquet"))]
    ids = sum(cache_rows, [])
    assert len(ids) == len(set(ids)) == 1001, "the cache dropped or repeated training rows"
    view = [i for f in sorted((tmp_path / "data-cache").rglob("views/*/data/train/*.parquet"))
            for i in pq.read_table(f, columns=["example_id"])["example_id"].to_pylist()]
    assert ids == view, "three cache actors: the rows in the view's order"
    assert result.student.validation["examples"] == 65 and result.student.test["examples"] == 65
    assert all(t.validation["examples"] == 65 for t in result.teachers.values())
    val = pd.read_parquet(RT_POLARITY / "validation.parquet").sample(n=65, random_state=0).sort_index()
    model = StudentClassifier.from_pretrained(result.student_dir)
    predicted = torch.tensor([int(p.label) for p in model.predict(val["sentence"].tolist())])
    exported = accuracy(confusion_matrix(predicted, torch.tensor(val["label"].tolist()), 2))
    assert exported == pytest.approx(result.student.validation["accuracy"], abs=1e-9)


@pytest.fixture(scope="module")
def two_worker_storage(tmp_path_factory) -> Path:
    """One data cache and results folder for both cases below: the second reuses the first's co-finetuning."""
    return tmp_path_factory.mktemp("two-workers")


@pytest.mark.slow
@pytest.mark.parametrize("hidden_teachers", ["all", "roberta"])
def test_hidden_loss_alone_trains_on_two_workers(ray_session, tiny_models, two_worker_storage, hidden_teachers):
    """Only L_MT-Hid on two DDP workers: W_ij and the student are inside the wrapped forward, so both learn
    (the loss falls) and the workers stay in step (the head, which gets no gradient, is frozen). With
    ``loss.hidden_teachers`` naming the second teacher only, its W (48 → 32) is the one map built, trained and
    checkpointed (a subset that does not start at teacher 0). Both cases share stage 1 (its key has no loss)."""
    import torch
    from safetensors.torch import load_file

    from mtbert_ray.core.history import HISTORY_FILE, read_history
    from mtbert_ray.core.steps.distill import PROJECTIONS_FILE
    from mtbert_ray.experiment.pipeline import run_experiment
    from mtbert_ray.models.projection import build_projections

    selection = "all" if hidden_teachers == "all" else [tiny_models[hidden_teachers]]
    loss = {"hidden": True, "distill": False, "task": False, "hidden_teachers": selection}
    raw = tiny_experiment(tiny_models, two_worker_storage, loss=loss, cache={"enabled": False},
                          distill={"epochs": 2, "lr": 3e-3}, resources={"num_workers": 2, "cpus_per_worker": 1})
    result = run_experiment(validate_config(raw), storage=two_worker_storage / "results")
    history = read_history(result.run_dir / "distill" / HISTORY_FILE, last_per_epoch=True)
    assert history[1]["train_hidden"] < history[0]["train_hidden"], "the hidden loss did not fall"
    latest = Path(history[-1]["checkpoint"])
    trained = load_file(str(latest / PROJECTIONS_FILE))
    widths = [32, 48] if hidden_teachers == "all" else [48]
    initial = build_projections(widths, 32, 1).state_dict()
    assert trained.keys() == initial.keys(), "one W per selected teacher, no more"
    assert any(not torch.equal(trained[k], v) for k, v in initial.items()), "W_ij did not learn"
