"""Placing a plan's bundles on a cluster's nodes the way Ray would, instead of comparing totals.

A *bundle* is one indivisible ask — a trial's reservation, one Train worker, one cache actor, one Ray Data read task —
with its resources (CPU, GPU, memory, custom resources such as the driver resource); it must land on one node. A
*node* is what one machine has free. Bundles are placed first-fit decreasing: those needing a scarce resource (a GPU, a custom
resource) first, then the largest (GPUs, CPUs, memory), each on the first node with room for all of its resources — Ray's placement groups pack
(``PACK``) and its tasks fill the node they find room on, so a plan that first-fit cannot place is one Ray cannot
start either, and it would wait forever.

No Ray here: the arithmetic alone, tested with fake GPUs and custom resources (``tests/test_packing.py``); the cluster
and the trials' bundles come from ``distributed.needs``.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

EPS = 1e-9
MAX_COMBINATIONS = 5000  # mixes of trial kinds and stages tried per number of concurrent trials
ORDER = ("GPU", "CPU", "memory")  # what a bundle is sorted by first (the scarcest first); other resources after
SHOWN = ("CPU", "GPU", "memory")  # the order a bundle's resources are written in


def describe_shape(shape: Mapping[str, float]) -> str:
    """``{"CPU": 1.5, "GPU": 1}`` → ``1.5 CPU + 1 GPU`` (memory in GB; a tiny driver-resource marker as the name)."""
    parts = []
    for name, amount in sorted(shape.items(), key=lambda kv: (SHOWN.index(kv[0]) if kv[0] in SHOWN else len(SHOWN), kv[0])):
        if not amount:
            continue
        if name == "memory":
            parts.append(f"{amount / 1e9:g} GB memory")
        elif amount < 0.01:
            parts.append(name)
        else:
            parts.append(f"{amount:g} {name}")
    return " + ".join(parts) or "nothing"


@dataclass(frozen=True)
class Bundle:
    """One indivisible ask: ``what`` it is (for messages) and its resources."""

    what: str
    shape: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, what: str, shape: Mapping[str, float]) -> Bundle:
        return cls(what, tuple(sorted((k, float(v)) for k, v in shape.items() if v)))

    @property
    def resources(self) -> dict[str, float]:
        return dict(self.shape)

    def size(self) -> tuple[float, ...]:
        """The placing order: bundles that need a scarce resource (a GPU, or a custom resource only some nodes offer,
        such as the driver resource) before those any node can take, then by GPUs, CPUs, memory."""
        res = self.resources
        scarce = any(k not in ("CPU", "memory") for k in res)
        return (float(scarce), *(res.get(name, 0.0) for name in ORDER), sum(v for k, v in res.items() if k not in ORDER))

    def describe(self) -> str:
        return f"{self.what} ({describe_shape(self.resources)})"


UNASKED = ("memory", "object_store_memory")  # resources every Ray node has and no bundle of a plan asks for


@dataclass
class Node:
    """One machine's room: ``free`` resources now (or, on a node an autoscaler may launch, all of its resources)."""

    name: str
    kind: str
    free: dict[str, float]

    def fits(self, bundle: Bundle) -> bool:
        return all(self.free.get(name, 0.0) + EPS >= amount for name, amount in bundle.shape)

    def take(self, bundle: Bundle) -> None:
        for name, amount in bundle.shape:
            self.free[name] = self.free.get(name, 0.0) - amount

    def shortfall(self, bundle: Bundle) -> float:
        """How far this node is from holding ``bundle``: the largest missing share of one of its resources (0: fits)."""
        return max((max(0.0, amount - self.free.get(name, 0.0)) / amount for name, amount in bundle.shape if amount),
                   default=0.0)

    def describe(self) -> str:
        """``name (1.5 CPU + 1 GPU free)``: its CPUs always (0 too), the rest where it has some (Ray's memory and
        object store, which no plan here asks for, left out)."""
        rest = {k: v for k, v in self.free.items() if k not in ("CPU", *UNASKED) and v >= 0.01}
        cpus = f"{max(self.free.get('CPU', 0.0), 0.0):g} CPU"
        return f"{self.name} ({' + '.join([cpus, describe_shape(rest)]) if rest else cpus} free)"


@dataclass
class NoRoom(Exception):
    """A bundle that no node has room for once the bundles before it are placed."""

    bundle: Bundle
    placed: list[tuple[Bundle, str]]
    closest: Node | None

    def __str__(self) -> str:
        return (f"{self.bundle.describe()} finds no node with room"
                + (f"; the closest is {self.closest.describe()}" if self.closest else "; the cluster has no node"))


@dataclass
class Placement:
    """Where each bundle landed: (bundle, node name) in placement order, and the nodes' room left."""

    where: list[tuple[Bundle, str]] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)

    def by_kind(self) -> dict[str, list[str]]:
        """Node kind → the bundles placed there, in words (the dry run's packing lines)."""
        kinds = {n.name: n.kind for n in self.nodes}
        out: dict[str, list[str]] = {}
        for bundle, node in self.where:
            out.setdefault(kinds.get(node, node), []).append(bundle.describe())
        return out


def pack(bundles: Iterable[Bundle], nodes: Sequence[Node]) -> Placement:
    """Place every bundle, largest first, each on the first node with room (the nodes are copied, not changed).
    Raises ``NoRoom`` for the first bundle that finds none, with the node that comes closest."""
    room = [Node(n.name, n.kind, dict(n.free)) for n in nodes]
    placement = Placement(nodes=room)
    for bundle in sorted(bundles, key=Bundle.size, reverse=True):
        node = next((n for n in room if n.fits(bundle)), None)
        if node is None:
            closest = min(room, key=lambda n: n.shortfall(bundle), default=None)
            raise NoRoom(bundle, list(placement.where), closest)
        node.take(bundle)
        placement.where.append((bundle, node.name))
    return placement


@dataclass(frozen=True)
class TrialShape:
    """A trial as packing sees it: its reservation (held for its whole life) and each stage's bundles beside it."""

    label: str
    reservation: tuple[Bundle, ...]
    stages: Mapping[str, tuple[Bundle, ...]]

    def at(self, stage: str | None) -> list[Bundle]:
        """Its bundles while ``stage`` runs (None: between stages, the reservation alone)."""
        return [*self.reservation, *(self.stages.get(stage, ()) if stage else ())]


def place_trial(trial: TrialShape, nodes: Sequence[Node]) -> dict[str, Placement]:
    """The trial at each of its stages, alone on ``nodes``: stage → placement. Raises ``NoRoom`` at the first stage
    that cannot be placed (its message names the stage through the bundle's ``what``)."""
    stages = list(trial.stages) or [None]
    return {stage or "reservation": pack(trial.at(stage), nodes) for stage in stages}


def concurrent(trials: Sequence[TrialShape], nodes: Sequence[Node], wanted: int) -> int:
    """How many trials can hold their bundles at once, at most ``wanted``: k trials fit when, for every way k of them
    can be spread over the trial kinds and their stages (trials run their stages in turn, at their own pace), all their
    reservations and the running stages' bundles pack. 0 when not even one does."""
    kinds = list(dict.fromkeys((tuple(t.at(stage)), t.label) for t in trials for stage in (list(t.stages) or [None])))
    shapes = list(dict.fromkeys(bundles for bundles, _ in kinds))  # trials of the same shape at the same stage: one kind
    best = 0
    for k in range(1, wanted + 1):
        if math.comb(len(shapes) + k - 1, k) <= MAX_COMBINATIONS:
            combos: Iterable[tuple[int, ...]] = itertools.combinations_with_replacement(range(len(shapes)), k)
        else:  # too many mixes to try: k trials of each kind alike (the mixes in between rarely pack worse)
            combos = ((i,) * k for i in range(len(shapes)))
        for combo in combos:
            try:
                pack([b for i in combo for b in shapes[i]], nodes)
            except NoRoom:
                return best
        best = k
    return best
