"""Starting or joining Ray, and the Ray Train configs every stage shares.

- With ``RAY_ADDRESS`` set (``ray job submit`` sets it; or ``RAY_ADDRESS=auto`` for a ``ray start``
  cluster) the project joins that cluster. Otherwise it starts an embedded local Ray.
- The embedded Ray gets more *logical* CPUs than the machine has cores when needed: Ray Data
  read tasks need a CPU that no Train worker holds, and on a 2-core machine two 1-CPU workers
  would otherwise deadlock the data pipeline (measured; RAY_NOTES.md). Its dashboard binds to
  127.0.0.1 only (Ray Train's clean-up helper needs the State API it serves).
- Hugging Face / offline / cache variables are passed to every worker through ``runtime_env``:
  on a cluster, workers do not inherit the submitting shell.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any

log = logging.getLogger(__name__)

ENV_PASSTHROUGH = (
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_DATASETS_OFFLINE",
    "HF_TOKEN",
    "TRANSFORMERS_OFFLINE",
    "MTBERT_RAY_CACHE",
    "MTBERT_FAULT",
    "TOKENIZERS_PARALLELISM",
    "RAY_DATA_DISABLE_PROGRESS_BARS",
)


def runtime_env_vars() -> dict[str, str]:
    """The variables workers need to find models and caches as the driver does."""
    env = {k: os.environ[k] for k in ENV_PASSTHROUGH if k in os.environ}
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def local_cpu_count(required: float) -> int:
    """Logical CPUs for an embedded Ray: at least the cores, and ``required`` + 1 spare for Ray Data."""
    return max(os.cpu_count() or 1, math.ceil(required) + 1)


def init_ray(required_cpus: float = 1.0, **kwargs: Any) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, or start an embedded one sized for ``required_cpus``."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    runtime_env = {"env_vars": runtime_env_vars()}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        return
    cpus = local_cpu_count(required_cpus)
    log.info("starting an embedded Ray with %d logical CPUs", cpus)
    ray.init(
        address="local",
        num_cpus=cpus,
        include_dashboard=True,  # Ray Train's placement-group cleaner queries the State API, served by it
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        **kwargs,
    )


def scaling_config(resources) -> "ray.train.ScalingConfig":  # noqa: F821
    """``ScalingConfig`` from ``resources.*`` (GPU settings pass through unchanged)."""
    from ray.train import ScalingConfig

    return ScalingConfig(
        num_workers=resources.num_workers,
        use_gpu=resources.use_gpu,
        resources_per_worker=resources.worker_resources(),
    )


def data_config() -> "ray.train.DataConfig":  # noqa: F821
    """Every dataset split across workers; block order preserved (reproducible single-worker runs)."""
    from ray.train import DataConfig

    options = DataConfig.default_ingest_options()
    options.preserve_order = True
    return DataConfig(datasets_to_split="all", execution_options=options)
