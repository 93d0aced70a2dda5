"""Faults on tiny models (CPU): a worker dies, two builders race, the disk fills. Nothing finished
is lost, nothing broken is trusted.

Elsewhere: the sweep driver killed by SIGKILL and resumed (``test_sweep.py``); an altered teacher
cache rebuilt and the same seed giving the same metrics (``test_pipeline.py``, which reuses the
stages its first run built).
"""
from __future__ import annotations

import errno
import json
import multiprocessing
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.config import validate_config
from mtbert_ray.core.history import HISTORY_FILE, read_history
from mtbert_ray.data.shards import prepare_data
from mtbert_ray.store.files import atomic_write_text
from mtbert_ray.store.stage import read_stage
from tests.conftest import tiny_experiment


@pytest.mark.slow
def test_worker_death_restarts_from_the_checkpoint_and_the_epoch_counter_continues(ray_session, tiny_models, tmp_path, monkeypatch):
    """Rank 0 exits mid-epoch 2; with max_failures=1 Ray Train restarts the workers from the epoch-1
    checkpoint, and the run completes without a second call."""
    from mtbert_ray.experiment.pipeline import Experiment

    cfg = validate_config(tiny_experiment(tiny_models, tmp_path, teachers=[tiny_models["bert"]], cofinetune={"epochs": 2},
                                          max_failures=1, resources={"num_workers": 1, "cpus_per_worker": 1,
                                                                     "execution": "trainer"}))
    fired = tmp_path / "fault-fired"
    monkeypatch.setenv("MTBERT_FAULT", f"cofinetune:0:1:1:{fired}")  # rank 0, epoch index 1, step 1
    stage = Experiment(cfg, storage=tmp_path / "results").cofinetune()
    assert fired.exists(), "the worker did not die: the fault was not injected"
    assert 0 <= stage.meta["metrics"]["val_teacher0_accuracy"] <= 1 and stage.meta["epoch"] in (1, 2)
    # the stage's history holds both attempts' reports: epoch 1 of the first, epoch 2 of the restart,
    # which continued from the epoch-1 checkpoint (start_epoch 1)
    history = read_history(stage.path.parent / HISTORY_FILE)
    assert [(h["epoch"], h["start_epoch"]) for h in history] == [(1, 0), (2, 1)], \
        "the restarted attempt did not continue from the epoch-1 checkpoint"


def _prepare_in_child(config: dict, models: list[str], out: multiprocessing.Queue) -> None:
    cfg = validate_config(config)
    prepared = prepare_data(cfg.data, models)
    out.put({"view": str(prepared.view_dir), "splits": prepared.splits})


def test_two_processes_preparing_the_same_shards_build_one_valid_cache(tiny_models, tmp_path):
    config = tiny_experiment(tiny_models, tmp_path)
    models = [tiny_models["bert"], tiny_models["roberta"]]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(config, models, out)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1], "both builders must end with the same published folders"
    cache = tmp_path / "data-cache"
    shard_dirs = [d for d in (cache / "shards").iterdir()]
    assert len(shard_dirs) == 2 and all(read_stage(d, verify=True) is not None for d in shard_dirs)
    leftovers = [p.name for p in cache.rglob(".*") if ".tmp-" in p.name or ".trash-" in p.name or ".build-" in p.name]
    assert not leftovers, f"temporary folders left behind: {leftovers}"


def test_a_full_disk_fails_the_write_cleanly_and_keeps_the_earlier_file(tmp_path, monkeypatch):
    result = tmp_path / "run" / "result.json"
    atomic_write_text(result, '{"accuracy": 0.81}')

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("mtbert_ray.store.files.os.fsync", disk_full)
    with pytest.raises(ResultsError, match=r"result.json: cannot write it \(No space left on device\)"):
        atomic_write_text(result, '{"accuracy": 0.99}')
    assert json.loads(result.read_text()) == {"accuracy": 0.81}, "the earlier result was damaged"
    assert [p.name for p in result.parent.iterdir()] == ["result.json"], "a temporary file was left behind"


def test_a_full_disk_while_tokenizing_publishes_nothing_and_keeps_earlier_shards(tiny_models, tmp_path, monkeypatch):
    cfg = validate_config(tiny_experiment(tiny_models, tmp_path))
    prepare_data(cfg.data, [tiny_models["bert"]])  # shards of one tokenizer already published
    earlier = list((tmp_path / "data-cache" / "shards").iterdir())
    real_write = pq.write_table
    calls = {"n": 0}

    def fills_up(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr("mtbert_ray.data.shards.pq.write_table", fills_up)
    with pytest.raises(ResultsError, match=r"No space left on device"):
        prepare_data(cfg.data, [tiny_models["bert"], tiny_models["roberta"]])
    monkeypatch.undo()
    cache = tmp_path / "data-cache"
    assert earlier and all(read_stage(d, verify=True) is not None for d in earlier), "earlier shards were damaged"
    leftovers = [p.name for p in cache.rglob(".*") if ".tmp-" in p.name or ".build-" in p.name]
    assert not leftovers, f"half-written folders left behind: {leftovers}"
    assert len(list((cache / "shards").iterdir())) == 1, "nothing new was published"


def _context(cfg):
    from types import SimpleNamespace

    from mtbert_ray.experiment.context import StageContext

    data = SimpleNamespace(model_tokenization={"a": "tok_a", "b": "tok_b"}, dataset_key="d", unlabeled_key=None, splits={})
    return StageContext(cfg, data)


def test_cofinetune_reuse_false_gives_each_run_its_own_stage_key():
    """``cofinetune.reuse: false`` retrains the teachers for one run; the switch itself is not part of the key."""
    from mtbert_ray.experiment.stages import cofinetune_key

    cfg = validate_config(tiny_experiment({"bert": "a", "roberta": "b"}, Path("/tmp")))
    shared = cofinetune_key(_context(cfg))
    private = cfg.model_copy(update={"cofinetune": cfg.cofinetune.model_copy(update={"reuse": False})})
    assert cofinetune_key(_context(private)) == shared
    keys = {shared, cofinetune_key(_context(cfg), "/results/runs/r1"), cofinetune_key(_context(cfg), "/results/runs/r2")}
    assert len(keys) == 3


@pytest.mark.slow
def test_two_runs_on_one_run_folder_one_writes_the_other_is_refused(tiny_models, tmp_path):
    """Two ``run`` commands with different settings on the same --run-dir: the second meets the first's writer lock and
    exits 2 naming it; the first finishes, and the folder holds its config, its student and only its epochs."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    from mtbert_ray.store.lock import LOCK_DIR
    from tests.conftest import REPO

    run_dir, storage = tmp_path / "shared-run", tmp_path / "results"
    configs = []
    for temperature in (1.0, 3.0):
        path = tmp_path / f"t{temperature:g}.yaml"
        path.write_text(yaml.safe_dump(tiny_experiment(tiny_models, tmp_path, loss={"temperature": temperature, "hidden": False},
                                                       cache={"enabled": False}, distill={"epochs": 12})))
        configs.append(path)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}

    def command(config):
        return [sys.executable, "-m", "mtbert_ray.run", "--config", str(config), "--storage", str(storage), "--run-dir", str(run_dir)]

    first = subprocess.Popen(command(configs[0]), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (run_dir / LOCK_DIR).exists():
            assert first.poll() is None, first.stdout.read()[-3000:]
            time.sleep(0.2)
        second = subprocess.run(command(configs[1]), cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                                start_new_session=True)
        output, _ = first.communicate(timeout=600)
    finally:
        try:
            os.killpg(first.pid, 9)  # the first run's own Ray processes, and nothing else
        except ProcessLookupError:
            pass
    assert second.returncode == 2, second.stderr[-2000:]
    refusal = second.stderr.strip().splitlines()[-1]
    assert refusal.startswith(f"error: run folder {run_dir} is being written by pid {first.pid} on "), refusal
    assert first.returncode == 0, output[-3000:]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["loss"]["temperature"] == 1.0
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "distill" / "history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13)), epochs
    assert (run_dir / "student" / "config.json").is_file() and not (run_dir / LOCK_DIR).exists()
