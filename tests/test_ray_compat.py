"""Each private Ray API of ``mtbert_ray.distributed.compat`` still exists and behaves as the package relies on: a Ray upgrade
that changes one fails here, by name, instead of deep inside a sweep."""
from __future__ import annotations

import json

from mtbert_ray.distributed import compat as ray_compat


def test_internal_kv_reads_nothing_when_not_connected():
    """In a fresh process (this one may have joined the tests' Ray)."""
    import subprocess
    import sys

    code = ("from mtbert_ray.distributed import compat as ray_compat\n"
            "assert ray_compat.internal_kv_ready() is False and ray_compat.internal_kv_get('anything') is None\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_the_autoscaler_status_key_is_rays():
    from ray._private import ray_constants

    assert ray_compat.AUTOSCALING_STATUS_KEY == ray_constants.DEBUG_AUTOSCALING_STATUS


def test_outside_a_trial_there_is_no_tune_session():
    assert ray_compat.in_tune_session() is False


def test_train_data_config_resolves_options_and_locality():
    from ray.data import ExecutionOptions

    from mtbert_ray.distributed.loader import split_config

    config = split_config()
    options = ray_compat.execution_options(config, "train")
    assert isinstance(options, ExecutionOptions) and options.preserve_order is True
    assert ray_compat.shard_locality(config) in (True, False)


def test_a_dataset_execution_count_restarts_at_zero(ray_session):
    import ray.data

    ds = ray.data.range(4)
    ds.context._execution_idx = 7
    ray_compat.restart_execution_count(ds)
    assert ds.context._execution_idx == 0


def test_the_job_config_comes_from_rays_variable(monkeypatch):
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    monkeypatch.setenv(RAY_JOB_CONFIG_JSON_ENV_VAR, json.dumps({"runtime_env": {"env_vars": {"A": "1"}}}))
    assert json.loads(ray_compat.job_config_json())["runtime_env"]["env_vars"] == {"A": "1"}
    from mtbert_ray.distributed.runtime import _job_runtime_env_vars

    assert _job_runtime_env_vars() == {"A": "1"}


def test_ray_data_actor_helpers_exist():
    from ray.data._internal import stats
    from ray.data._internal.cluster_autoscaler import default_autoscaling_coordinator

    assert callable(default_autoscaling_coordinator.get_or_create_autoscaling_coordinator)
    assert callable(stats.get_or_create_stats_actor)
