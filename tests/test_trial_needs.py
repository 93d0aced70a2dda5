"""What a trial asks Ray for, and whether a cluster holds it (``mtbert_ray.distributed.needs``): the arithmetic alone."""
from __future__ import annotations

import pytest

from mtbert_ray.common.errors import ConfigError, ResourcesError
from mtbert_ray.config import validate_config
from mtbert_ray.distributed.needs import Cluster, autoscaler_headroom, fit_plan, trial_needs
from mtbert_ray.distributed.waiting import patiently
from tests.conftest import tiny_experiment


def _config(tiny_models, tmp_path, **resources):
    return validate_config(tiny_experiment(tiny_models, tmp_path, resources=resources))


def _cluster(*nodes: tuple[float, float]) -> Cluster:
    return Cluster.of_nodes(*({"CPU": c, "GPU": g} for c, g in nodes), source="the test cluster")


def test_an_in_process_trial_builds_everything_inside_its_reservation(tiny_models, tmp_path):
    """The issue's plan: one 2-CPU in-process worker. The trial reserves 2 CPU; the cache adds no actor pool
    (it is built in the trial), only Ray Data's read task may run beside it: peak 3, which a 4- and a 3-CPU
    cluster hold and a 2-CPU one refuses."""
    needs = trial_needs(_config(tiny_models, tmp_path, cpus_per_worker=2), trial_cpus=0.5)
    assert needs.tune_resources() == {"cpu": 2}
    assert needs.peak == {"CPU": 3, "GPU": 0}
    assert fit_plan(needs, _cluster((4, 0)), wanted=2) == 1  # two trials at once would need 6
    assert fit_plan(needs, _cluster((3, 0)), wanted=1) == 1
    with pytest.raises(ConfigError, match=r"the trial can never start on the test cluster: Ray Data read tasks \(1 CPU\) finds "
                                          r"no node with room in its data reads stage .* the closest is node 1 \(0 CPU free\)"):
        fit_plan(needs, _cluster((2, 0)), wanted=1)


def test_an_in_process_gpu_trial_needs_its_one_gpu_not_two(tiny_models, tmp_path):
    """Fake GPU resources: the in-process GPU trial's cache runs on the trial's own GPU, so one trial needs 1 GPU
    (the old plan asked the cache's actor pool for another) and a 2-GPU node runs two trials at once."""
    needs = trial_needs(_config(tiny_models, tmp_path, use_gpu=True, gpus_per_worker=1, execution="in_process"), 1)
    assert needs.tune_resources() == {"cpu": 1, "gpu": 1}
    assert needs.peak == {"CPU": 2, "GPU": 1}
    assert fit_plan(needs, _cluster((8, 2)), wanted=4) == 2
    with pytest.raises(ConfigError, match=r"trial \(1 CPU \+ 1 GPU\) finds no node with room"):
        fit_plan(needs, _cluster((8, 0)), wanted=1)


def test_trainer_trials_add_their_largest_stage_to_the_driver(tiny_models, tmp_path):
    """Ray Train workers: driver 0.5 + 2 workers × 1 CPU + a read task at the peak; the cache's actor pool is the
    workers' size, so it does not raise the peak; each worker must fit on one node."""
    needs = trial_needs(_config(tiny_models, tmp_path, num_workers=2, cpus_per_worker=1), trial_cpus=0.5)
    assert needs.tune_resources() == {"cpu": 0.5}
    assert set(needs.stages) == {"co-finetuning", "distillation"}  # the tiny experiment distils from teachers on the fly
    assert needs.peak == {"CPU": 3.5, "GPU": 0}
    assert fit_plan(needs, _cluster((4, 0), (4, 0)), wanted=3) == 2
    big = trial_needs(_config(tiny_models, tmp_path, num_workers=2, cpus_per_worker=3), trial_cpus=0.5)
    with pytest.raises(ConfigError, match=r"Ray Train worker \(3 CPU\) finds no node with room in its co-finetuning stage"):
        fit_plan(big, _cluster((2, 0), (2, 0), (2, 0), (2, 0)), wanted=1)


def test_an_autoscalers_worker_types_count_up_to_its_max_workers():
    cluster = {
        "max_workers": 3, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 1}, "max_workers": 0},
            "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 2},
            "cpu4": {"resources": {"CPU": 4}, "max_workers": 5},
        },
    }
    launchable, budget = autoscaler_headroom(cluster)
    reachable = Cluster((), launchable, budget).reachable()
    # both GPU nodes first, then one CPU node: 3 workers in all
    assert [n.free for n in reachable] == [{"CPU": 8, "GPU": 1}, {"CPU": 8, "GPU": 1}, {"CPU": 4}]


def test_a_stream_that_yields_nothing_is_reported_then_given_up(capfd):
    """``patiently``: a notice once nothing came for notice_s, naming what is waited for; after timeout_s a one-line
    error naming the setting; items that do come pass through in order."""
    import threading

    assert list(patiently(iter([1, 2, 3]), "x", "nothing", 5, "some.setting")) == [1, 2, 3]
    never = threading.Event()

    def stuck():
        never.wait(30)
        yield 1

    with pytest.raises(ResourcesError, match=r"stage 2: nothing came for 2.5 s while waiting for 2 actors \(9 free\).*"
                                             r"raise resources.worker_start_timeout_s"):
        list(patiently(stuck(), "stage 2", "2 actors", 2.5, "resources.worker_start_timeout_s", notice_s=1.0,
                       free=lambda: "9 free"))
    never.set()
    assert "stage 2: nothing for 1 s — waiting for 2 actors (9 free)" in capfd.readouterr().out


def test_an_error_in_the_stream_reaches_the_consumer():
    def broken():
        yield 1
        raise ValueError("block 2 failed")

    with pytest.raises(ValueError, match="block 2 failed"):
        list(patiently(broken(), "x", "y", 5, "z"))


def test_a_fixed_cluster_is_told_apart_from_an_autoscaling_one(monkeypatch):
    """Every head runs Ray's monitor. On ``ray start --head`` without a config its read-only provider names each node's
    type ``node_<id>`` (measured on a 3-CPU loopback head); an autoscaler names its node types."""
    import json

    import ray.experimental.internal_kv as kv

    from mtbert_ray.distributed import needs as tn

    status = {}
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    monkeypatch.setattr(kv, "_internal_kv_initialized", lambda: True)
    monkeypatch.setattr(kv, "_internal_kv_get", lambda key: json.dumps(status).encode())
    status["autoscaler_report"] = {"node_type_mapping": {"fac04": "node_fac04"}, "pending_launches": {}}
    assert not tn._autoscaler_running(wait_s=0)
    status["autoscaler_report"] = {"node_type_mapping": {"fac04": "ray.head.default"}, "pending_launches": {}}
    assert tn._autoscaler_running(wait_s=0)
    monkeypatch.delenv("RAY_ADDRESS")
    assert not tn._autoscaler_running(wait_s=0)  # an embedded Ray sizes itself


def test_a_train_stage_whose_workers_wait_says_so(capfd):
    """A placement group that stays PENDING past notice_s is reported (what it asks, what is free, the limit); one that
    was pending before the stage started is not this stage's."""
    import time

    from mtbert_ray.distributed.waiting import PendingPlacementNotice

    groups = {"old": {"state": "PENDING", "bundles": {0: {"CPU": 9.0}}}}
    with PendingPlacementNotice("stage distill", 900, notice_s=0.3, poll_s=0.05, table=lambda: groups,
                                free=lambda: "0/4 CPU free") as notice:
        groups["new"] = {"state": "PENDING", "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}}
        time.sleep(1.0)
    assert notice.notices, "no notice"
    assert notice.notices[0].startswith("[mtbert] stage distill: its workers have waited ")
    assert "for 2 bundle(s) of [1 CPU + 1 CPU] (0/4 CPU free); Ray Train gives up after 900 s" in notice.notices[0]
    assert "9 CPU" not in " ".join(notice.notices)


def test_an_experiment_on_a_ray_already_running_too_small_is_refused_before_any_stage(ray_session, tiny_models, tmp_path):
    """The caller started Ray (the test session's 4 CPUs) and asks for 4 workers × 1 CPU + Ray Data's read CPU: one
    line naming the numbers at ``prepare``, where the cache's actor pool used to wait out its 900 s (seen in
    ``benchmarks/scale.py``, which starts its own Ray) — and no run folder or stage written."""
    from mtbert_ray.experiment.pipeline import Experiment

    raw = tiny_experiment(tiny_models, tmp_path, cache={"enabled": True},
                          resources={"num_workers": 4, "cpus_per_worker": 1, "execution": "trainer"})
    experiment = Experiment(validate_config(raw), storage=tmp_path / "results")
    with pytest.raises(ConfigError, match=r"^resources: the experiment can never start on this cluster's 1 node\(s\): Ray Data "
                                          r"read tasks \(1 CPU\) finds no node with room in its co-finetuning stage .*; "
                                          r"with resources.num_workers: 3 \(from 4\) it would pack"):
        experiment.prepare()
    assert not (tmp_path / "results" / "stages").exists() and not experiment.run_dir.exists()
