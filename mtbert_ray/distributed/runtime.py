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

import json
import logging
import math
import os
from typing import Any

import ray
from ray.train import ScalingConfig

from mtbert_ray.distributed.compat import create_ray_data_actors, job_config_json

log = logging.getLogger(__name__)

#: Variables workers need to find models and caches as the driver does. Never a secret: an HF token
#: travelling in a runtime_env shows in the dashboard and job info; it comes from each node's own
#: environment instead (cluster/README.md), and tests/test_cluster.py keeps secrets out of this list.
ENV_PASSTHROUGH = (
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "HF_HOME",
    "HF_DATASETS_CACHE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "MTBERT_RAY_CACHE",
    "MTBERT_FAULT",
    "RAY_DATA_DISABLE_PROGRESS_BARS",
)


def runtime_env_vars() -> dict[str, str]:
    """The variables workers need to find models and caches as the driver does.

    Inside a ``ray job submit`` driver, variables the job's own ``runtime_env`` already sets are
    left out: the job's runtime env reaches every worker anyway, and Ray refuses a driver
    ``runtime_env`` that repeats one of its keys.
    """
    env = {k: os.environ[k] for k in ENV_PASSTHROUGH if k in os.environ}
    job_env = _job_runtime_env_vars()
    return {k: v for k, v in env.items() if k not in job_env}


def _job_runtime_env_vars() -> dict[str, str]:
    """``env_vars`` of the submitted job's runtime env (empty outside ``ray job submit``)."""
    raw = job_config_json()
    if not raw:
        return {}
    try:
        return dict((json.loads(raw).get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        return {}


DRIVER_RESOURCE = "mtbert_driver"
LOCAL_DRIVER_SLOTS = 1000


def has_resource(name: str) -> bool:
    """Whether any node of the connected cluster offers the custom resource ``name``."""
    return ray.cluster_resources().get(name, 0) > 0


def local_cpu_count(required: float) -> int:
    """Logical CPUs for an embedded Ray: at least the cores, and ``required`` (``distributed.needs``: the stages' peak,
    Ray Data's read CPU included)."""
    return max(os.cpu_count() or 1, math.ceil(required))


def callers_ray_driver() -> bool:
    """Whether this process is a Ray driver the caller already connected (``ray.init`` before mtbert-ray's own):
    not a Ray worker or actor (a sweep's trial), and not a Ray that ``init_ray`` would start."""
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is None


def init_ray(required_cpus: float = 1.0, **kwargs: Any) -> None:
    """Join the cluster named by ``RAY_ADDRESS``, or start an embedded one sized for ``required_cpus``."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env_vars = runtime_env_vars()
    runtime_env = {"env_vars": env_vars} if env_vars else None
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining the Ray cluster at %s", address)
        ray.init(address=address, runtime_env=runtime_env, **kwargs)
        pin_ray_data_actors_here()
        return
    cpus = local_cpu_count(required_cpus)
    log.info("starting an embedded Ray with %d logical CPUs", cpus)
    ray.init(
        address="local",
        num_cpus=cpus,
        resources={DRIVER_RESOURCE: LOCAL_DRIVER_SLOTS},  # this one node is where trial drivers may run
        include_dashboard=True,  # Ray Train's placement-group cleaner queries the State API, served by it
        dashboard_host="127.0.0.1",
        runtime_env=runtime_env,
        **kwargs,
    )


def pin_ray_data_actors_here() -> None:
    """Create Ray Data's two detached singleton actors (stats, autoscaling coordinator) on this node.

    Ray Data creates them, detached and pinned to the calling node, the first time a dataset is
    used. In a sweep that is inside a trial running on an autoscaled worker node, and a detached
    actor keeps that node from ever becoming idle: it was never scaled down (measured with the
    fake multi-node provider). Creating them from the driver first pins them to the head node.
    Private Ray Data helpers, so a best effort: a Ray without them only loses the pinning.
    """
    try:
        create_ray_data_actors()
    except Exception as exc:  # noqa: BLE001 - optional optimisation, never fatal
        log.warning("could not pin Ray Data's actors to the driver's node (%s)", exc)


def scaling_config(resources) -> "ray.train.ScalingConfig":  # noqa: F821
    """``ScalingConfig`` from ``resources.*`` (GPU settings pass through unchanged)."""
    return ScalingConfig(
        num_workers=resources.num_workers,
        use_gpu=resources.use_gpu,
        resources_per_worker=resources.worker_resources(),
    )


def worker_start_timeout(resources) -> float | None:
    """``resources.worker_start_timeout_s``; by default 900 s when joined to a cluster (a cold GPU node
    boots, pulls an image and starts Ray in minutes), else Ray's own 60 s."""
    if resources.worker_start_timeout_s is not None:
        return resources.worker_start_timeout_s
    return 900.0 if os.environ.get("RAY_ADDRESS") else None
