"""Plans placed on a real multi-node cluster before anything runs: three raylets of 2 CPUs each on loopback (Ray's
own ``ray.cluster_utils.Cluster``), a study submitted with ``ray job submit`` as a user would. The plans the totals
check accepted and that then waited forever are refused up front, in one line naming the trial and the setting."""
from __future__ import annotations

import os
import time

import pytest
import yaml

from tests.cluster_helpers import multi_node_cluster
from tests.conftest import REPO
from tests.test_job_submit import SMALL, submit_job

pytestmark = pytest.mark.slow

REFUSAL_S = 180  # the bound: refused (or finished) within 3 minutes


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # this process's job client
    try:
        with multi_node_cluster(3, 2, env) as (dashboard, address):
            yield dashboard, env, address
    finally:
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


def _sweep(cluster, storage, name, *args):
    dashboard, env, _ = cluster
    started = time.time()
    status, logs = submit_job(dashboard, env, ["-m", "mtbert_ray.sweep", "--space", "tune_spaces/demo.yaml", "--storage",
                                               str(storage), "--name", name, *SMALL, *args])
    return status, logs, time.time() - started


def _errors(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if line.startswith("error:")]


def test_workers_whose_pieces_do_not_pack_are_refused_with_the_setting_that_packs(cluster, tmp_path):
    """3 Train workers × 1.5 CPU + a 0.5-CPU driver + a 1-CPU read task = 6 = the cluster's total; placed, no node keeps a
    whole CPU for the read task. Refused before anything is written, with whole CPUs per worker as the way out."""
    status, logs, seconds = _sweep(cluster, tmp_path / "results", "pieces", "--set", "resources.execution=trainer",
                                   "--set", "resources.num_workers=3", "--set", "resources.cpus_per_worker=1.5",
                                   "--set", "cofinetune.batch_size=48", "--set", "distill.batch_size=48")
    assert status == "FAILED", logs[-3000:]
    errors = _errors(logs)
    assert len(errors) == 1 and errors[0].startswith("error: resources: each trial can never start on this cluster's 3 "
                                                     "node(s): Ray Data read tasks (1 CPU) finds no node with room"), errors
    assert "with resources.cpus_per_worker: 1 (from 1.5) it would pack" in errors[0]
    assert "Traceback" not in logs and "co-finetuning 2" not in logs
    assert not (tmp_path / "results" / "sweeps" / "pieces").exists()
    assert seconds < REFUSAL_S, f"the refusal took {seconds:.0f} s"


def test_a_variant_larger_than_the_cluster_is_refused_before_the_first_trial(cluster, tmp_path):
    """The base trial fits; the variant with 8 workers never can on 6 CPUs (only the base was sized before)."""
    space = yaml.safe_load((REPO / "tune_spaces" / "demo.yaml").read_text())
    space.update(name="variants", variants={"small": {}, "wide": {"resources.num_workers": 8, "resources.execution": "trainer",
                                                                    "cofinetune.batch_size": 64, "distill.batch_size": 64}},
                 space={"variant": {"grid": "all"}}, search={"searcher": "grid"})
    # beside its base file, inside the uploaded folder (and not git-ignored: the working_dir upload skips ignored files)
    path = REPO / "tune_spaces" / f".test-variants-{os.getpid()}.yaml"
    path.write_text(yaml.safe_dump(space))
    try:
        dashboard, env, _ = cluster
        started = time.time()
        status, logs = submit_job(dashboard, env, ["-m", "mtbert_ray.sweep", "--space", str(path.relative_to(REPO)),
                                                   "--storage", str(tmp_path / "results"), *SMALL])
        seconds = time.time() - started
    finally:
        path.unlink()
    assert status == "FAILED", logs[-3000:]
    errors = _errors(logs)
    assert len(errors) == 1 and errors[0].startswith("error: resources: the trial of variant 'wide' can never start on "
                                                     "this cluster's 3 node(s)"), errors
    assert "[mtbert] stage 3" not in logs and not (tmp_path / "results" / "sweeps" / "variants").exists()
    assert seconds < REFUSAL_S, f"the refusal took {seconds:.0f} s"


def test_a_study_on_a_busy_cluster_is_placed_on_what_is_free(cluster, tmp_path):
    """Another job's placement group holds 5 of the 6 CPUs: the demo trial (2 CPUs + 1 for reads) cannot start now —
    refused naming what other work holds, not started to wait behind it."""
    holder = _hold_cpus(cluster, 5)
    try:
        status, logs, seconds = _sweep(cluster, tmp_path / "results", "busy")
    finally:
        holder.kill()
        holder.wait()
    assert status == "FAILED", logs[-3000:]
    errors = _errors(logs)
    assert len(errors) == 1 and "can never start" in errors[0] and "5 CPU held by other work now" in errors[0], errors
    assert seconds < REFUSAL_S, f"the refusal took {seconds:.0f} s"


def _hold_cpus(cluster, cpus: int):
    """Another driver on the cluster holding ``cpus`` CPUs in a placement group (spread over the nodes) until killed."""
    import subprocess
    import sys

    _, env, address = cluster
    code = ("import ray, sys, time\n"
            "from ray.util.placement_group import placement_group\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "pg = placement_group([{'CPU': 1}] * int(sys.argv[2]), strategy='SPREAD')\n"
            "ray.get(pg.ready())\n"
            "print('held', flush=True)\n"
            "time.sleep(3600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, address, str(cpus)], env=env, stdout=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc
