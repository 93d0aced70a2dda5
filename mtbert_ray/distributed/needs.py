"""What one trial (or one ``run``) asks Ray for, and whether a cluster can place it — the one place the sweep, its dry
run and the embedded Ray read it.

A trial holds its reservation (``tune.with_resources``) for its whole life and its stages run one after another,
each asking for more beside it:

- **in process** (one CPU worker, or ``resources.execution: in_process``): the trial reserves the worker's CPUs
  (and GPU) and every stage runs inside that reservation — co-finetuning, the teacher cache (built by the trial's
  own process, ``distributed.teacher_cache``) and distillation. Beside it only Ray Data's read tasks of a split too
  large to be read in the trial's process: ``DATA_READ_CPUS``.
- **Ray Train workers**: the trial reserves its driver (``search.trial_cpus``); each stage then asks for its
  workers — the TorchTrainer's ``num_workers × (cpus_per_worker [+ gpus_per_worker])`` or the cache's actor pool of
  the same size — plus ``DATA_READ_CPUS`` for the read tasks that feed them (Ray Data schedules them outside any
  placement group, and they need a CPU the workers do not hold).

Whether a plan runs is a question of *packing*, not of totals (``distributed.packing``): three nodes of 2 CPUs hold
6 CPUs, but not 3 workers of 1.5 CPUs beside a 0.5-CPU driver and a 1-CPU read task. ``fit_plan`` places every
kind of trial of a study (each variant, each searched ``resources.*`` value) on the cluster's nodes — the live ones
with what they have free, plus every node its autoscaler can still launch (each node type's ``max_workers`` less those
up, within the cluster's ``max_workers``, node types' resources detected from their instance type where the file says
``resources: {}``) — refuses in one line a plan one of whose trials can never start, naming the trial, its bundle,
the closest node and the setting that would make it pack, and caps the trials at once to what packs together.
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import ray

from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config import read_yaml, uses_cache
from mtbert_ray.distributed.compat import AUTOSCALING_STATUS_KEY, free_resources_per_node, internal_kv_get, internal_kv_ready
from mtbert_ray.distributed.packing import Bundle, Node, NoRoom, TrialShape, concurrent, place_trial

DATA_READ_CPUS = 1.0  # a Ray Data read task's CPU (ListFiles / ReadFiles ask for 1 CPU, whatever ray_remote_args say)


@dataclass(frozen=True)
class Ask:
    """A set of identical bundles: ``count`` × {CPU: cpus, GPU: gpus, + ``extra`` resources}; each on one node."""

    what: str
    count: int
    cpus: float
    gpus: float = 0.0
    extra: tuple[tuple[str, float], ...] = ()  # custom resources (the driver resource) and memory, per bundle

    @property
    def total(self) -> dict[str, float]:
        return {"CPU": self.count * self.cpus, "GPU": self.count * self.gpus}

    def bundles(self) -> list[Bundle]:
        one = Bundle.of(self.what if self.count == 1 else self.what.removesuffix("s"),
                        {"CPU": self.cpus, "GPU": self.gpus, **dict(self.extra)})
        return [one] * self.count

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

    def shape(self, label: str) -> TrialShape:
        """The trial as packing sees it: its reservation and each stage's bundles (``distributed.packing``)."""
        return TrialShape(label, tuple(self.reserved.bundles()),
                          {name: tuple(b for ask in asks for b in ask.bundles()) for name, asks in self.stages.items()})

    def tune_resources(self) -> dict[str, float]:
        """The reservation as ``tune.with_resources`` takes it."""
        out = {"cpu": self.reserved.cpus}
        if self.reserved.gpus:
            out["gpu"] = self.reserved.gpus
        if self.driver_resource:
            out[self.driver_resource] = DRIVER_MARK
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
    driver = ((driver_resource, DRIVER_MARK),) if driver_resource else ()
    return TrialNeeds(Ask("trial driver", 1, trial_cpus, extra=driver), stages, driver_resource)


DRIVER_MARK = 0.001  # how much of the driver resource a trial's reservation asks (``search.driver_resource``)





# ---- the cluster ----------------------------------------------------------------------------------------------

#: vCPUs and GPUs of the instance types a cluster file may leave as ``resources: {}`` (Ray's autoscaler detects them
#: through the EC2 API, which a planning driver may not reach): the EC2 GPU families and common CPU types. A type not
#: here, with ``resources: {}``, is refused with the line that says which resources to state.
INSTANCE_TYPES: dict[str, tuple[float, float]] = {
    **{f"g5.{s}": v for s, v in {"xlarge": (4, 1), "2xlarge": (8, 1), "4xlarge": (16, 1), "8xlarge": (32, 1), "16xlarge": (64, 1),
                                 "12xlarge": (48, 4), "24xlarge": (96, 4), "48xlarge": (192, 8)}.items()},
    **{f"g6.{s}": v for s, v in {"xlarge": (4, 1), "2xlarge": (8, 1), "4xlarge": (16, 1), "8xlarge": (32, 1), "16xlarge": (64, 1),
                                 "12xlarge": (48, 4), "24xlarge": (96, 4), "48xlarge": (192, 8)}.items()},
    **{f"g4dn.{s}": v for s, v in {"xlarge": (4, 1), "2xlarge": (8, 1), "4xlarge": (16, 1), "8xlarge": (32, 1),
                                   "16xlarge": (64, 1), "12xlarge": (48, 4), "metal": (96, 8)}.items()},
    "p3.2xlarge": (8, 1), "p3.8xlarge": (32, 4), "p3.16xlarge": (64, 8), "p3dn.24xlarge": (96, 8),
    "p4d.24xlarge": (96, 8), "p4de.24xlarge": (96, 8), "p5.48xlarge": (192, 8),
    **{f"{family}.{s}": (v, 0) for family in ("m5", "m6i", "m7i", "c5", "c6i", "c7i", "r5", "r6i")
       for s, v in {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48, "16xlarge": 64,
                    "24xlarge": 96}.items()},
}


def node_type_resources(name: str, spec: dict) -> dict[str, float]:
    """A node type's resources as the autoscaler reads them: its ``resources`` where given (an empty mapping is not a
    node of no CPUs: Ray fills it from the instance type), else detected from ``node_config.InstanceType`` (AWS) or
    ``machineType`` + ``guestAccelerators`` (GCP). A ``ConfigError`` names the type where nothing tells them."""
    given = {k: float(v) for k, v in (spec.get("resources") or {}).items()}
    if "CPU" in given:
        return given
    node_config = spec.get("node_config") or {}
    instance = node_config.get("InstanceType")
    if instance in INSTANCE_TYPES:
        cpus, gpus = INSTANCE_TYPES[instance]
        return {"CPU": cpus, **({"GPU": gpus} if gpus else {}), **given}
    machine = str(node_config.get("machineType", "")).rsplit("/", 1)[-1]
    if machine and machine.split("-")[-1].isdigit():  # GCP: n2-standard-8, g2-standard-48, a2-highgpu-4g is not
        gpus = sum(int(a.get("acceleratorCount", 0)) for a in node_config.get("guestAccelerators") or [])
        return {"CPU": float(machine.split("-")[-1]), **({"GPU": float(gpus)} if gpus else {}), **given}
    raise ConfigError(f"search.autoscaling_config: node type {name!r} has no resources and its "
                      f"{'instance type ' + repr(instance) if instance else 'machine type'} is not one mtbert-ray knows; "
                      "state them in the cluster file (resources: {CPU: n, GPU: m}) so plans can be checked against it")


@dataclass(frozen=True)
class Cluster:
    """What a plan is placed on: the live nodes (their free resources, or all of them when the plan may wait), what the
    autoscaler can still launch (node type, its resources, how many more) within ``launch_budget`` nodes, and in words
    where this was learnt (``source``) and what other work holds (``held``)."""

    live: tuple[Node, ...]
    launchable: tuple[tuple[str, tuple[tuple[str, float], ...], int], ...] = ()
    launch_budget: int | None = None
    source: str = "the cluster"
    held: str | None = None

    def reachable(self) -> list[Node]:
        """The live nodes and every node the autoscaler can still launch, the largest types first."""
        nodes = [Node(n.name, n.kind, dict(n.free)) for n in self.live]
        budget = self.launch_budget
        for kind, res, count in sorted(self.launchable, key=lambda t: (dict(t[1]).get("GPU", 0), dict(t[1]).get("CPU", 0)),
                                       reverse=True):
            take = count if budget is None else min(count, budget)
            nodes += [Node(f"{kind} #{i + 1} (launched by the autoscaler)", kind, dict(res)) for i in range(take)]
            budget = None if budget is None else budget - take
        return nodes

    @classmethod
    def of_nodes(cls, *nodes: Mapping[str, float], source: str = "the cluster") -> Cluster:
        """A fixed cluster of the given nodes (tests, and a machine's embedded Ray)."""
        return cls(tuple(Node(f"node {i + 1}", f"node {i + 1}", dict(n)) for i, n in enumerate(nodes)), source=source)


def autoscaler_headroom(cluster: dict, running: Mapping[str, int] | None = None
                        ) -> tuple[tuple[tuple[str, tuple[tuple[str, float], ...], int], ...], int | None]:
    """(node types the autoscaler of a cluster config can still launch, with their resources and how many more,
    the nodes it may still add in all): each worker type's ``max_workers`` less its ``running`` workers, within the
    cluster's ``max_workers`` less every running worker — the workers already up counted once."""
    running = dict(running or {})
    types = cluster.get("available_node_types") or {}
    head = cluster.get("head_node_type")
    up = sum(n for kind, n in running.items() if kind != head)
    total = cluster.get("max_workers")
    budget = None if total is None else max(0, int(total) - up)
    out = []
    for name, spec in types.items():
        if name == head:
            continue
        res = node_type_resources(name, spec)
        more = max(0, int(spec.get("max_workers", total if total is not None else 0)) - running.get(name, 0))
        if more:
            out.append((name, tuple(sorted(res.items())), more))
    return tuple(out), budget


def cluster_state(autoscaling_config: str | None = None, wait_for_resources: bool = False) -> Cluster:
    """The connected Ray cluster as a plan is placed on it: each live node with what it has free now (with
    ``wait_for_resources``: all it has — the plan then waits for other work), and what its autoscaler can still launch
    (``autoscaling_config``, else $MTBERT_AUTOSCALING_CONFIG, else ``~/ray_bootstrap_config.yaml`` on the head).

    An autoscaler whose node types cannot be read is a ``ConfigError`` (the plan cannot be checked) unless
    ``wait_for_resources``, where the live nodes are all that is checked."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    free = free_resources_per_node()
    kinds = _node_kinds()
    live, held = [], {"CPU": 0.0, "GPU": 0.0}
    for n in alive:
        total = {k: float(v) for k, v in n["Resources"].items() if not k.startswith("node:")}
        node_free = free.get(n["NodeID"])  # a resource all of which is held is absent from it
        now = total if node_free is None else {k: node_free.get(k, 0.0) for k in total}
        room = total if wait_for_resources else now
        for k in held:
            held[k] += total.get(k, 0.0) - now.get(k, 0.0)
        address = n.get("NodeManagerAddress", "?")
        live.append(Node(f"{address} ({kinds.get(address, 'node')})", kinds.get(address, f"node {address}"), room))
    source = f"this cluster's {len(live)} node(s)"
    busy = (f"{held['CPU']:g} CPU" + (f" / {held['GPU']:g} GPU" if held["GPU"] else "")
            + " held by other work now (another job or sweep: ray status shows what)") if held["CPU"] > 1e-6 or held["GPU"] > 1e-6 else None
    path = autoscaling_config or os.environ.get("MTBERT_AUTOSCALING_CONFIG")
    if path is None and _autoscaler_running():
        bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
        if not bootstrap.is_file():
            if wait_for_resources:
                return Cluster(tuple(live), source=source + " (an autoscaler may add more: not checked)", held=busy)
            raise ConfigError("resources: an autoscaler manages this cluster but its node types cannot be read (no "
                              "search.autoscaling_config, $MTBERT_AUTOSCALING_CONFIG or ~/ray_bootstrap_config.yaml), so "
                              "the plan cannot be checked against what it may launch; give its cluster YAML as "
                              "search.autoscaling_config, or pass --wait-for-resources to start unchecked")
        path = str(bootstrap)
    if path is None:
        return Cluster(tuple(live), source=source, held=busy if not wait_for_resources else None)
    running: dict[str, int] = {}
    for kind in kinds.values():
        running[kind] = running.get(kind, 0) + 1
    launchable, budget = autoscaler_headroom(_read_yaml(path), running)
    return Cluster(tuple(live), launchable, budget, f"{source} + what the autoscaler can still launch ({path})",
                   held=busy if not wait_for_resources else None)


def _node_kinds() -> dict[str, str]:
    """Node IP → node type, as the autoscaler's status reports them (empty without an autoscaler's report)."""
    raw = internal_kv_get(AUTOSCALING_STATUS_KEY) if os.environ.get("RAY_ADDRESS") else None
    try:
        report = (json.loads(raw) if raw else {}).get("autoscaler_report") or {}
    except ValueError:
        return {}
    mapping = report.get("node_type_mapping") or {}
    return {ip: kind for ip, kind in mapping.items() if kind != READONLY_NODE_TYPE.format(ip)}


def fit_plan(trials: TrialNeeds | Mapping[str, TrialNeeds], cluster: Cluster, wanted: int,
             advise: Callable[[str], str | None] | None = None) -> int:
    """How many trials may run at once: ``wanted`` capped to how many pack together on the cluster (its live nodes'
    free room and the nodes its autoscaler can add), every kind of trial of the plan counted.

    Raises ``ConfigError`` — one line naming the trial, its bundle that finds no room, the closest node, what other
    work holds, and (``advise(label)``) the setting that would make it pack — when one trial can never start.
    """
    kinds = {"the trial": trials} if isinstance(trials, TrialNeeds) else dict(trials)
    nodes = cluster.reachable()
    shapes = []
    for label, needs in kinds.items():
        shape = needs.shape(label)
        try:
            place_trial(shape, nodes)
        except NoRoom as exc:
            stage = next((name for name, bundles in shape.stages.items() if exc.bundle in bundles), None)
            when = f" in its {stage} stage" if stage else ""
            placed = "; ".join(dict.fromkeys(b.describe() for b, _ in exc.placed)) or "nothing else"
            held = f"; {cluster.held}" if cluster.held else ""
            hint = (advise(label) if advise else None) or ("lower resources.num_workers or resources.cpus_per_worker / "
                                                  "gpus_per_worker (or search.trial_cpus), or add a larger node type")
            raise ConfigError(f"resources: {label} can never start on {cluster.source}: {exc.bundle.describe()} finds no "
                              f"node with room{when} (placed first: {placed}); the closest is "
                              f"{exc.closest.describe() if exc.closest else 'none'}{held}; {hint}") from None
        shapes.append(shape)
    return max(1, concurrent(shapes, nodes, wanted))


def nearby_settings(config, trial_cpus: float, driver_resource: str | None, cluster: Cluster) -> str | None:
    """A setting close to ``config``'s that makes its trial pack on ``cluster`` — whole CPUs per worker, one worker
    fewer, a smaller trial driver — said as the change to make (never made for the user); None when none does."""
    r = config.resources
    tries = []
    if r.cpus_per_worker > 1 and r.cpus_per_worker != int(r.cpus_per_worker):
        tries.append((f"resources.cpus_per_worker: {int(r.cpus_per_worker)} (from {r.cpus_per_worker:g})",
                      {"cpus_per_worker": float(int(r.cpus_per_worker))}, trial_cpus))
    if r.cpus_per_worker > 1:
        tries.append((f"resources.cpus_per_worker: 1 (from {r.cpus_per_worker:g})", {"cpus_per_worker": 1.0}, trial_cpus))
    if r.num_workers > 1:
        tries.append((f"resources.num_workers: {r.num_workers - 1} (from {r.num_workers})", {"num_workers": r.num_workers - 1},
                      trial_cpus))
    if not r.in_process and trial_cpus > 0.1:
        tries.append((f"search.trial_cpus: 0.1 (from {trial_cpus:g})", {}, 0.1))
    for words, change, cpus in tries:
        try:
            changed = config.model_copy(update={"resources": r.model_copy(update=change)})
            place_trial(trial_needs(changed, cpus, driver_resource).shape("nearby"), cluster.reachable())
        except (NoRoom, ValueError):
            continue
        return f"with {words} it would pack (a batch size must still divide by the workers)"
    return None


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
