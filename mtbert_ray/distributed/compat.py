"""Every private Ray API mtbert-ray uses, in one place (Ray 2.60, pinned ``ray<2.61``), each with a test
(``tests/test_ray_compat.py``) that fails when Ray changes under it.

Nothing else in the package imports a ``_``-prefixed Ray name or a ``ray._private`` / ``ray.data._internal``
module: a Ray upgrade is checked by running that test file, and fixed here. Each function imports its private name
itself (deferred on purpose): a name Ray moves breaks the one feature that uses it, named by its test, not every import
of the package.
"""
from __future__ import annotations

import os
from typing import Any

#: ``ray._private.ray_constants.DEBUG_AUTOSCALING_STATUS``: the GCS key the autoscaler's monitor writes its status to.
AUTOSCALING_STATUS_KEY = "__autoscaling_status"


def in_tune_session() -> bool:
    """Whether this process runs a Tune trial's function (``ray.tune`` has no public test for it)."""
    from ray.tune.trainable.trainable_fn_utils import _in_tune_session

    return bool(_in_tune_session())


def execution_options(data_config: Any, dataset_name: str) -> Any:
    """The ``ExecutionOptions`` Ray Train's ``DataConfig`` gives the dataset ``dataset_name`` on a worker."""
    return data_config._resolve_execution_options(dataset_name)


def shard_locality(data_config: Any) -> bool:
    """Whether a ``DataConfig`` asks for locality-aware shards (``enable_shard_locality``)."""
    return bool(data_config._enable_shard_locality)


def restart_execution_count(dataset: Any) -> None:
    """Start a dataset's execution count at 0: Ray Data seeds ``randomize_block_order`` and a file shuffle per execution (epoch) from it,
    and copies the count from the process's current context, which a reused worker process has advanced."""
    dataset.context._execution_idx = 0


def internal_kv_ready() -> bool:
    """Whether this process can read the GCS internal key-value store (connected to a cluster)."""
    from ray.experimental.internal_kv import _internal_kv_initialized

    return bool(_internal_kv_initialized())


def internal_kv_get(key: str) -> bytes | None:
    """A value of the GCS internal key-value store (None when this process is not connected to a cluster)."""
    from ray.experimental.internal_kv import _internal_kv_get

    return _internal_kv_get(key) if internal_kv_ready() else None


def job_config_json() -> str | None:
    """The submitted job's config (JSON, its runtime env included) from the environment Ray gives a job's driver."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    return os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR)


def create_ray_data_actors() -> None:
    """Create Ray Data's detached stats actor and autoscaling coordinator from this process (pinned to its node)."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import get_or_create_autoscaling_coordinator
    from ray.data._internal.stats import get_or_create_stats_actor

    get_or_create_stats_actor()
    get_or_create_autoscaling_coordinator()


def free_resources_per_node() -> dict[str, dict[str, float]]:
    """Node id → the resources free on it now (what other work does not hold): the GCS's per-node availability."""
    from ray._private.state import available_resources_per_node

    return {node: {k: float(v) for k, v in res.items()} for node, res in available_resources_per_node().items()}
