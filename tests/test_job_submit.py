"""The design card's first use, as a new user tries it: ``ray start --head --num-cpus=N`` on loopback, then
``ray job submit --working-dir . -- python -m mtbert_ray.sweep --space tune_spaces/demo.yaml ...``.

On 4 CPUs this once deadlocked at the teacher cache (the trial held 2 CPUs, the cache's actor pool the other 2,
its read task none). 3 CPUs is exactly what the plan says one demo trial needs at its peak (2 reserved + 1 for
Ray Data's reads), and a plan whose one trial cannot fit is refused before anything is written.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.cluster_helpers import forget_cluster_address, free_ports
from tests.conftest import REPO, RT_POLARITY

JOB_WAIT_S = 600  # the two-trial sweep took 74 s here on 4 CPUs (2026-12); a loaded CI machine gets room


@contextmanager
def loopback_cluster(num_cpus: int):
    """A one-node Ray cluster of ``num_cpus`` CPUs with its dashboard (job server) on 127.0.0.1; stopped afterwards.
    Yields (dashboard URL, environment for ``ray`` commands)."""
    from ray._private.services import get_node_ip_address

    ip = get_node_ip_address()
    gcs, dash, client, agent, metrics = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={gcs}", f"--num-cpus={num_cpus}",
         "--num-gpus=0", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
         f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}", "--object-store-memory=400000000",
         "--disable-usage-stats"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        yield f"http://127.0.0.1:{dash}", env
    finally:
        try:
            os.killpg(head.pid, signal.SIGKILL)  # the head and every process it started, only those
        except ProcessLookupError:
            pass
        forget_cluster_address(f"{ip}:{gcs}")


def submit_sweep(dashboard: str, env: dict, storage: Path, name: str, *args: str) -> tuple[str, str]:
    """The user's sweep command, from the repository root. Returns (status, logs)."""
    return submit_job(dashboard, env, ["-m", "mtbert_ray.sweep", "--space", "tune_spaces/demo.yaml", "--storage", str(storage),
                                       "--name", name, *args])


def submit_job(dashboard: str, env: dict, entrypoint: list[str]) -> tuple[str, str]:
    """``ray job submit --working-dir . -- python ENTRYPOINT`` from the repository root; waits (bounded) for the job,
    stopping it if it runs out of time. Returns (status, logs)."""
    from ray.job_submission import JobSubmissionClient

    job_env = {k: os.environ[k] for k in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "HF_HOME", "MTBERT_RAY_CACHE") if k in os.environ}
    job_env.update(RAY_DATA_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    command = [sys.executable, "-m", "ray.scripts.scripts", "job", "submit", f"--address={dashboard}", "--no-wait",
               "--working-dir", ".", "--runtime-env-json", json.dumps({"env_vars": job_env}), "--",
               sys.executable, *entrypoint]
    deadline = time.time() + 300  # a loaded 2-core machine: the agents of a fresh multi-raylet cluster take minutes
    while True:  # the head's job agent may still be starting ("No available agent to submit job")
        submitted = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
        if submitted.returncode == 0 or time.time() > deadline:
            break
        time.sleep(3)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = re.search(r"raysubmit_\w+", submitted.stdout + submitted.stderr).group(0)
    client = JobSubmissionClient(dashboard)
    deadline, status = time.time() + JOB_WAIT_S, None
    while time.time() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(3)
    logs = client.get_job_logs(job_id)
    if status not in ("SUCCEEDED", "FAILED", "STOPPED"):
        client.stop_job(job_id)
    return status, logs


SMALL = ("--set", f"data.path={RT_POLARITY}", "--set", "data.limit_train=300", "--set", "data.limit_eval=200",
         "--set", "cofinetune.epochs=1")


@pytest.mark.slow
def test_a_job_submitted_sweep_finishes_on_a_small_cluster(monkeypatch, tmp_path):
    """Co-finetuning, the teacher cache and both trials' distillation finish on 3 CPUs, exactly one demo trial's
    peak (2 reserved + 1 for Ray Data's reads): the sweep says what a trial needs and runs one at a time where two
    were asked for. The 4-CPU deadlock (the trial's 2 CPUs + a cache actor pool asking 2 more) would hang here
    too, and a plan that under-counts its peak by a CPU cannot pass on a cluster of exactly that peak."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # this test's job client
    with loopback_cluster(3) as (dashboard, env):
        status, logs = submit_sweep(dashboard, env, tmp_path / "results", "small", "--num-samples", "2",
                                    "--set", "search.max_concurrent_trials=2", *SMALL)
    assert status == "SUCCEEDED", f"job {status}: {logs[-4000:]}"
    assert "sweep finished: 2 trials (0 errored)" in logs
    assert "reserves 2 CPU for the trial; beside it, data reads: Ray Data read tasks 1 CPU; peak 3 CPU" in logs
    assert "up to 1 trial(s) at once" in logs
    assert "search.max_concurrent_trials 2 → 1: at most 1 trial(s) pack together on this cluster's 1 node(s)" in logs
    assert "teacher cache: estimated" in logs  # the cache was built here, not reused
    assert (tmp_path / "results" / "sweeps" / "small" / "analysis" / "table.md").is_file()


@pytest.mark.slow
def test_a_plan_whose_one_trial_cannot_fit_is_refused_before_anything_runs(monkeypatch, tmp_path):
    """4 CPUs per worker + a read task on a 3-CPU cluster: a one-line error naming the numbers and the setting,
    within the time the job takes to start, and no sweep folder written (the same --name works once fixed)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with loopback_cluster(3) as (dashboard, env):
        started = time.time()
        status, logs = submit_sweep(dashboard, env, tmp_path / "results", "big", "--set", "resources.cpus_per_worker=4", *SMALL)
        seconds = time.time() - started
    assert status == "FAILED", logs[-4000:]
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, logs[-3000:]
    assert re.fullmatch(r"error: resources: each trial can never start on this cluster's 1 node\(s\): trial \(4 CPU\) finds no "
                        r"node with room \(placed first: nothing else\); the closest is \S+ \(node\) \(3 CPU free\); with "
                        r"resources.cpus_per_worker: 1 \(from 4\) it would pack \(a batch size must still divide by the workers\)",
                        errors[0]), errors[0]
    assert "Traceback" not in logs and "co-finetuning" not in logs
    assert not (tmp_path / "results" / "sweeps" / "big").exists()
    assert seconds < 120, f"the refusal took {seconds:.0f} s"


@pytest.mark.slow
def test_the_cache_actor_pool_runs_on_a_cluster_exactly_the_size_the_plan_asks(monkeypatch, tmp_path, tiny_models):
    """Ray Train workers (2 × 0.5 CPU) and a teacher cache with hidden states, as a ``run`` job on a 2-CPU cluster:
    the plan's peak (2 × 0.5 for the workers or cache actors + 1 for Ray Data's read task) is the whole cluster."""
    import yaml

    from mtbert_ray.config import validate_config
    from mtbert_ray.distributed.needs import trial_needs
    from tests.conftest import tiny_experiment

    experiment = tiny_experiment(tiny_models, tmp_path, distill={"epochs": 1}, cache={"enabled": True, "hidden": True},
                                 resources={"num_workers": 2, "cpus_per_worker": 0.5, "execution": "trainer"})
    needs = trial_needs(validate_config(experiment))
    assert "teacher cache" in needs.stages and needs.peak == {"CPU": 2, "GPU": 0}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(experiment))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with loopback_cluster(2) as (dashboard, env):
        status, logs = submit_job(dashboard, env, ["-m", "mtbert_ray.run", "--config", str(config), "--storage",
                                                   str(tmp_path / "results")])
    assert status == "SUCCEEDED", f"job {status}: {logs[-4000:]}"
    assert "teacher cache: estimated" in logs and "Ray Train workers" in logs
    assert list((tmp_path / "results" / "runs").glob("*/result.json"))
