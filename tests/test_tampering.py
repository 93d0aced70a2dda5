"""Stage folders are never trusted when altered, and never crash when their marker is damaged; a non-finite loss stops
a stage with one line; a user's error raised on a Ray Train worker reaches the command line as that one line."""
from __future__ import annotations

import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mtbert_ray.common.errors import NonFiniteLossError
from mtbert_ray.store.stage import MARKER, Built, build_dir, read_stage, reuse_or_build


def _stage(root, labels=(0, 1, 1, 0)):
    """A published stage holding one Parquet file of labels; returns (published, how many times it was built)."""
    builds = []

    def build(folder):
        builds.append(folder)
        with build_dir(folder) as tmp:
            pq.write_table(pa.table({"label": list(labels)}), tmp / "part-0.parquet")
            return Built(tmp, {"rows": len(labels)})

    return reuse_or_build(root, "views", "k1", build, what="view"), builds


def test_a_file_altered_at_the_same_size_is_caught_without_verify(tmp_path):
    """The issue's case: labels flipped in a view file, its size unchanged. The stat signature recorded at publish
    differs, so the file is hashed again on reuse, found altered and the stage rebuilt from its source."""
    published, _ = _stage(tmp_path)
    part = published.path / "part-0.parquet"
    original = part.read_bytes()
    altered = pa.table({"label": [1, 0, 0, 1]})
    pq.write_table(altered, part)
    assert part.stat().st_size == len(original), "the alteration keeps the size (the case size checks miss)"
    assert read_stage(published.folder) is None  # not trusted, even without --verify
    again, builds = _stage(tmp_path)
    assert len(builds) == 1 and pq.read_table(again.path / "part-0.parquet")["label"].to_pylist() == [0, 1, 1, 0]


def test_an_untouched_stage_is_reused_without_hashing(tmp_path, monkeypatch):
    published, _ = _stage(tmp_path)
    import mtbert_ray.store.files as storage

    monkeypatch.setattr(storage, "file_sha256", lambda path: pytest.fail(f"{path} hashed although unchanged"))
    assert read_stage(published.folder) is not None
    _, builds = _stage(tmp_path)
    assert builds == []


def test_a_touched_but_identical_file_is_still_reused(tmp_path):
    """A copy or a restore changes the file's time, not its content: it is hashed, found equal, and reused."""
    published, _ = _stage(tmp_path)
    part = published.path / "part-0.parquet"
    os.utime(part, ns=(part.stat().st_atime_ns, part.stat().st_mtime_ns + 10**9))
    _, builds = _stage(tmp_path)
    assert builds == []


@pytest.mark.parametrize("marker", ["{}", "[]", '{"kind": "views", "key": "k1", "artefact": "../../elsewhere"}', "null"])
def test_a_damaged_marker_is_a_missing_stage_that_is_rebuilt(tmp_path, marker):
    """A marker rewritten as ``{}`` made every later prepare/run crash with KeyError: 'artefact'. Now the stage is
    treated as not there, rebuilt, and published again."""
    published, _ = _stage(tmp_path)
    (published.folder / MARKER).write_text(marker)
    assert read_stage(published.folder) is None
    again, builds = _stage(tmp_path)
    assert len(builds) == 1 and json.loads((again.folder / MARKER).read_text())["artefact"] == again.path.name


# ---- a non-finite loss --------------------------------------------------------------------------------------------

class _NaNAfter:
    """An Optimization stand-in whose loss becomes NaN at micro-batch ``bad`` (0-based)."""

    def __init__(self, bad: int) -> None:
        self.bad, self.calls, self.flushed = bad, 0, False

    def micro_step(self, step, module, batch):
        value = float("nan") if self.calls == self.bad else 0.5
        self.calls += 1
        return {"loss": torch.tensor(value)}

    def flush(self):
        self.flushed = True


def _spec():
    from mtbert_ray.core.loop import LoopSpec

    return LoopSpec(stage="distill", epochs=3, micro_batch=4, grad_accum_steps=1, seed=0, select="accuracy", mode="max",
                    precision="fp32", use_gpu=False, threads=None, train_rows=40, num_labels=2)


def test_a_nan_loss_stops_the_epoch_with_the_stage_epoch_and_step():
    from mtbert_ray.common.progress import Progress
    from mtbert_ray.core.loop import _train_pass

    optimization = _NaNAfter(bad=2)
    with pytest.raises(NonFiniteLossError, match=r"^distill: the loss is nan at epoch 2, step 3; the stage stopped and keeps "
                                                 r"its last good checkpoint \(epoch 1 at most\); lower distill.lr"):
        _train_pass(None, None, optimization, iter([{}] * 10), Progress("x", 10, enabled=False), _spec(), epoch=1, rank=0)
    assert optimization.calls == 3 and not optimization.flushed  # nothing after the bad step, no epoch-end step


def test_an_error_raised_on_a_train_worker_comes_back_as_itself():
    from ray.train import WorkerGroupError

    from mtbert_ray.distributed.train import worker_user_error

    original = NonFiniteLossError("distill: the loss is nan at epoch 1, step 2")
    wrapped = WorkerGroupError("Training failed due to worker errors", {0: RuntimeError("x"), 1: original})
    assert worker_user_error(wrapped) is original
    assert worker_user_error(WorkerGroupError("boom", {0: RuntimeError("x")})) is None


@pytest.mark.slow
def test_a_run_whose_loss_explodes_exits_with_one_line_and_exports_nothing(ray_session, tiny_models, tmp_path, capsys):
    """``distill.lr: 1e30`` is a finite setting that sends the student to NaN within a few steps: the run stops with one
    line naming the stage, epoch and step (exit 2), exports no student and writes no result."""
    import yaml

    from mtbert_ray.cli.run import main
    from tests.conftest import tiny_experiment

    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(tiny_experiment(tiny_models, tmp_path, distill={"epochs": 1, "lr": 1e30})))
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as exited:
        main(["--config", str(config), "--storage", str(tmp_path / "results"), "--run-dir", str(run_dir)])
    text = capsys.readouterr().err
    errors = [line for line in text.splitlines() if line.startswith("error:")]  # Ray's own log lines aside
    assert exited.value.code == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert re.match(r"error: distill: the loss is (nan|inf|-inf) at epoch 1, step \d+; the stage stopped", errors[0]), errors[0]
    assert not (run_dir / "student").exists() and not (run_dir / "result.json").exists()
