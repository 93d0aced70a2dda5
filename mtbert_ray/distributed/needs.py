"""What one trial (or one ``run``) asks Ray for — the one place the sweep, its dry run and the embedded Ray read it.

A trial holds its reservation (``tune.with_resources``) for its whole life and its stages run one after another,
each asking for more beside it:

- **in process** (one CPU worker, or ``resources.execution: in_process``): the trial reserves the worker's CPUs
  (and GPU) and every stage runs inside that reservation — co-finetuning, the teacher cache (built by the trial's
  own process, ``distributed.teacher_cache``) and distillation. Beside it only Ray Data's read tasks of a split too large to be
  read in the trial's process: ``DATA_READ_CPUS``.
- **Ray Train workers**: the trial reserves its driver (``search.trial_cpus``); each stage then asks for its
  workers — the TorchTrainer's ``num_workers × (cpus_per_worker [+ gpus_per_worker])`` or the cache's actor pool of
  the same size — plus ``DATA_READ_CPUS`` for the read tasks that feed them (Ray Data schedules them outside any
  placement group, and they need a CPU the workers do not hold).

A trial's *peak* is its reservation plus the largest stage's asks (the stages never overlap). Trials that run at
once must all be able to hold their peak together, or one trial's workers can wait on a CPU that another trial's
workers hold: the measured deadlock of a ``ray job submit`` sweep on a 4-CPU cluster, where an in-process trial held
2 CPUs, the cache's actor pool took the other 2 and its read task never started. ``fit_plan`` refuses a plan whose one
trial cannot fit the cluster and caps the concurrent trials to ``floor(capacity / peak)``.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import read_yaml, uses_cache
from mtbert_ray.distributed.compat import AUTOSCALING_STATUS_KEY, internal_kv_get, internal_kv_ready

DATA_READ_CPUS = 1.0  # a Ray Data read task's CPU (ListFiles / ReadFiles ask for 1 CPU, whatever ray_remote_args say)


@dataclass(frozen=True)
class Ask:
    """A set of identical bundles: ``count`` × {CPU: cpus, GPU: gpus}; each bundle must fit on one node."""

    what: str
    count: int
    cpus: float
    gpus: float = 0.0

    @property
    def total(self) -> dict[str, float]:
        return {"CPU": self.count * self.cpus, "GPU": self.count * self.gpus}

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.what} {self.count} × {each}" if self.count != 1 else f"{self.what} {each}"


@dataclass(frozen=True)
class TrialNeeds:
    """A trial's reservation, what each of its stages asks for beside it, and the peak of the two together."""

    reserved: Ask
    stages: dict[str, tuple[Ask, ...]] = field(default_factory=dict)
    driver_resource: str | None = None  # a custom resource the reservation also asks (a node where drivers may run)

    @property
    def peak(self) -> dict[str, float]:
        """reserved + max over stages of Σ its asks, per resource."""
        out = dict(self.reserved.total)
        for resource in ("CPU", "GPU"):
            out[resource] += max((sum(a.total[resource] for a in asks) for asks in self.stages.values()), default=0.0)
        return out

    @property
    def bundles(self) -> list[Ask]:
        """Every distinct bundle shape this trial asks for: each must fit on one node."""
        return [self.reserved, *dict.fromkeys(a for asks in self.stages.values() for a in asks)]

    def tune_resources(self) -> dict[str, float]:
        """The reservation as ``tune.with_resources`` takes it."""
        out = {"cpu": self.reserved.cpus}
        if self.reserved.gpus:
            out["gpu"] = self.reserved.gpus
        if self.driver_resource:
            out[self.driver_resource] = 0.001
        return out

    def describe(self) -> str:
        peak = self.peak
        stages = "; ".join(f"{name}: {' + '.join(a.describe() for a in asks)}" for name, asks in self.stages.items())
        return (f"reserves {self.reserved.describe().removeprefix(self.reserved.what + ' ')} for the trial"
                + (f"; beside it, {stages}" if stages else "")
                + f"; peak {peak['CPU']:g} CPU" + (f" + {peak['GPU']:g} GPU" if peak["GPU"] else ""))


def trial_needs(config, trial_cpus: float = 0.0, driver_resource: str | None = None) -> TrialNeeds:
    """The needs of one experiment of ``config`` (an ``ExperimentConfig``), run as a sweep trial whose driver
    reserves ``trial_cpus`` (``search.trial_cpus``; 0 for ``python -m mtbert_ray.run``, which runs in the caller)."""
    r = config.resources
    gpus = r.gpus_per_worker if r.use_gpu else 0.0
    read = Ask("Ray Data read tasks", 1, DATA_READ_CPUS)
    if r.in_process:
        return TrialNeeds(Ask("trial", 1, r.cpus_per_worker, gpus), {"data reads": (read,)}, None)
    workers = Ask("Ray Train workers", r.num_workers, r.cpus_per_worker, gpus)
    stages = {"co-finetuning": (workers, read)}
    if uses_cache(config):
        stages["teacher cache"] = (Ask("cache actors", r.num_workers, r.cpus_per_worker, gpus), read)
    stages["distillation"] = (workers, read)
    return TrialNeeds(Ask("trial driver", 1, trial_cpus), stages, driver_resource)


# ---- the cluster ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Capacity:
    """What a cluster can offer: its totals (at most, with an autoscaler's nodes) and the largest node shapes."""

    cpus: float
    gpus: float
    nodes: tuple[tuple[float, float], ...]  # (CPU, GPU) of each node shape that exists or may be launched
    source: str  # how it was learnt, for messages ("this cluster's 1 node", "… + autoscaler max")

    def fits(self, ask: Ask) -> bool:
        return any(ask.cpus <= c + 1e-9 and ask.gpus <= g + 1e-9 for c, g in self.nodes)


def fit_plan(needs: TrialNeeds, capacity: Capacity, wanted: int, setting: str = "search.max_concurrent_trials") -> int:
    """How many trials may run at once: ``wanted`` capped to what the capacity holds at every trial's peak.

    Raises ``ConfigError`` (one line: the numbers and the setting to change) when not even one trial fits."""
    peak = needs.peak
    short = [f"{peak[r]:g} {r}" for r, have in (("CPU", capacity.cpus), ("GPU", capacity.gpus)) if peak[r] > have + 1e-9]
    if short:
        raise ConfigError(
            f"resources: one trial needs {' and '.join(short)} at its peak ({needs.describe()}), but {capacity.source} "
            f"has {capacity.cpus:g} CPU / {capacity.gpus:g} GPU; lower resources.num_workers or "
            "resources.cpus_per_worker, or start a larger cluster")
    for bundle in needs.bundles:
        if bundle.count and (bundle.cpus or bundle.gpus) and not capacity.fits(bundle):
            largest = max(capacity.nodes, default=(0.0, 0.0))
            raise ConfigError(
                f"resources: {bundle.describe()} must fit on one node, but the largest node of {capacity.source} has "
                f"{largest[0]:g} CPU / {largest[1]:g} GPU; lower resources.cpus_per_worker / gpus_per_worker "
                "(or search.trial_cpus), or add a larger node type")
    fits = [math.floor((have + 1e-9) / peak[r]) for r, have in (("CPU", capacity.cpus), ("GPU", capacity.gpus)) if peak[r] > 0]
    return max(1, min([wanted, *fits]))


def cluster_capacity(autoscaling_config: str | None = None) -> Capacity | None:
    """The connected Ray cluster's capacity: its live nodes, plus the nodes an autoscaler may launch when its
    config is known (``autoscaling_config``, else ``~/ray_bootstrap_config.yaml`` on the head, where ``ray up`` puts it).
    None when an autoscaler runs whose node types cannot be read (nothing can be refused then)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    live = [(float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))) for n in nodes]
    cpus, gpus = sum(c for c, _ in live), sum(g for _, g in live)
    source = f"this cluster's {len(live)} node(s)"
    path = autoscaling_config or os.environ.get("MTBERT_AUTOSCALING_CONFIG")
    if path is None and _autoscaler_running():
        bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
        if not bootstrap.is_file():
            return None
        path = str(bootstrap)
    if path is None:
        return Capacity(cpus, gpus, tuple(live), source)
    extra_cpus, extra_gpus, shapes = autoscaler_headroom(_read_yaml(path))
    return Capacity(cpus + extra_cpus, gpus + extra_gpus, tuple(live) + shapes,
                    f"{source} + the autoscaler's worker nodes ({path})")


def autoscaler_headroom(cluster: dict) -> tuple[float, float, tuple[tuple[float, float], ...]]:
    """(CPUs, GPUs, node shapes) the autoscaler of a cluster config may add: each worker type's
    ``resources`` × its ``max_workers``, the largest types first, up to the cluster's ``max_workers`` nodes."""
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    budget = int(cluster.get("max_workers", sum(int(t.get("max_workers", 0)) for t in types.values())))
    workers = []
    for name, spec in types.items():
        if name == head:
            continue
        res = spec.get("resources") or {}
        workers.append((float(res.get("CPU", 0)), float(res.get("GPU", 0)), int(spec.get("max_workers", budget))))
    cpus = gpus = 0.0
    for c, g, count in sorted(workers, key=lambda w: (w[1], w[0]), reverse=True):
        take = min(count, budget)
        cpus, gpus, budget = cpus + take * c, gpus + take * g, budget - take
    return cpus, gpus, tuple((c, g) for c, g, count in workers if count > 0)


def _autoscaler_running(wait_s: float = 15.0) -> bool:
    """Whether an autoscaler that launches nodes manages this cluster. Every head runs Ray's monitor, which writes its
    status to the GCS each update; on a fixed cluster (``ray start`` without ``--autoscaling-config``) its read-only
    provider names each node's type after the node itself, an autoscaler after its node types. An embedded Ray has none."""
    if not os.environ.get("RAY_ADDRESS") or not internal_kv_ready():
        return False
    deadline = time.monotonic() + wait_s  # the monitor's first status comes a few seconds after the head starts
    while True:
        raw = internal_kv_get(AUTOSCALING_STATUS_KEY)
        if raw or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    try:
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except ValueError:
        return False
    mapping = report.get("node_type_mapping") or {}
    readonly = {node: READONLY_NODE_TYPE.format(node) for node in mapping}  # ray.autoscaler's format_readonly_node_type
    return any(kind != readonly[node] for node, kind in mapping.items()) or bool(report.get("pending_launches"))


READONLY_NODE_TYPE = "node_{}"  # the type the read-only provider of a fixed cluster gives each node


def _read_yaml(path: str) -> dict:
    try:
        return read_yaml(path)
    except ConfigError as exc:
        raise ConfigError(f"search.autoscaling_config: {exc}") from None
