"""Never silent while waiting: a stream consumed with a notice when nothing comes, and a stated time limit.

A Ray Data pipeline whose actors or read tasks cannot be scheduled yields nothing and says nothing: the cache
stage of a sweep on a 4-CPU cluster once waited 14 minutes at 0 % CPU. ``patiently`` consumes such a stream in
a helper thread; when no item has come for ``notice_s`` it prints what the stage waits for and what the cluster
has free (again every ``notice_s``), and after ``timeout_s`` without an item it raises a one-line
``ResourcesError`` naming the setting that sets the limit.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import ray
from ray.util import placement_group_table

from mtbert_ray.common.errors import ResourcesError
from mtbert_ray.common.progress import emit

T = TypeVar("T")
NOTICE_S = 60.0
DEFAULT_WAIT_S = 900.0  # a cold GPU node boots, pulls an image and starts Ray in minutes
_END = object()


def cluster_free() -> str:
    """``"2/4 CPU, 0/0 GPU free"`` of the connected Ray cluster (best effort)."""
    try:
        total, free = ray.cluster_resources(), ray.available_resources()
        return ", ".join(f"{free.get(r, 0):g}/{total.get(r, 0):g} {r}" for r in ("CPU", "GPU")) + " free"
    except Exception:  # noqa: BLE001 - a notice must never fail the stage
        return "unknown free resources"


def patiently(items: Iterable[T], what: str, asks: str, timeout_s: float, setting: str,
              notice_s: float = NOTICE_S, free: Callable[[], str] = cluster_free) -> Iterator[T]:
    """The items of ``items``, read ahead by one helper thread; a notice after ``notice_s`` without an item,
    ``ResourcesError`` after ``timeout_s`` without one (``setting`` names where the limit is set)."""
    box: queue.Queue = queue.Queue(maxsize=2)

    def pump() -> None:
        try:
            for item in items:
                box.put((True, item))
            box.put((True, _END))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            box.put((False, exc))

    threading.Thread(target=pump, daemon=True, name=f"patiently:{what}").start()
    last = time.monotonic()
    noticed = last
    while True:
        try:
            ok, item = box.get(timeout=1.0)
        except queue.Empty:
            now = time.monotonic()
            if now - last >= timeout_s:
                raise ResourcesError(
                    f"{what}: nothing came for {timeout_s:g} s while waiting for {asks} ({free()}); give the cluster "
                    f"the resources, or raise {setting}") from None
            if now - noticed >= notice_s:
                noticed = now
                emit(f"[mtbert] {what}: nothing for {now - last:.0f} s — waiting for {asks} ({free()}); "
                     f"gives up after {timeout_s:g} s ({setting})")
            continue
        if not ok:
            raise item
        if item is _END:
            return
        last = noticed = time.monotonic()
        yield item


class PendingPlacementNotice:
    """While a Ray Train stage starts, say so every ``notice_s`` if a placement group asked for since it started is
    still pending (its workers cannot be scheduled yet): what it asks for, what the cluster has free, and when Ray
    Train gives up (``resources.worker_start_timeout_s``). A context manager around ``trainer.fit()``."""

    def __init__(self, what: str, timeout_s: float | None, notice_s: float = NOTICE_S, poll_s: float = 5.0,
                 table: Callable[[], dict] | None = None, free: Callable[[], str] = cluster_free) -> None:
        self.what, self.timeout_s, self.notice_s, self.poll_s = what, timeout_s, notice_s, poll_s
        self.table, self.free = table or _placement_group_table, free
        self.stop = threading.Event()
        self.notices: list[str] = []

    def __enter__(self) -> "PendingPlacementNotice":
        self.before = set(self._pending())  # groups pending before this stage are not its own
        self.thread = threading.Thread(target=self._watch, daemon=True, name=f"pending:{self.what}")
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _pending(self) -> dict[str, list[dict]]:
        try:
            groups = self.table() or {}
        except Exception:  # noqa: BLE001 - a notice must never fail the stage
            return {}
        return {pg: list((info.get("bundles") or {}).values()) for pg, info in groups.items() if info.get("state") == "PENDING"}

    def _watch(self) -> None:
        first_seen: dict[str, float] = {}
        last_notice = 0.0
        while not self.stop.wait(self.poll_s):
            now = time.monotonic()
            pending = {pg: b for pg, b in self._pending().items() if pg not in self.before}
            for pg in pending:
                first_seen.setdefault(pg, now)
            waited = [(now - first_seen[pg], bundles) for pg, bundles in pending.items()]
            if not waited or now - last_notice < self.notice_s:
                continue
            longest, bundles = max(waited, key=lambda w: w[0])
            if longest < self.notice_s:
                continue
            last_notice = now
            asks = " + ".join(", ".join(f"{v:g} {k}" for k, v in b.items() if not k.startswith("bundle_group")) for b in bundles)
            limit = f"Ray Train gives up after {self.timeout_s:g} s" if self.timeout_s else "Ray Train gives up after its 60 s"
            line = (f"[mtbert] {self.what}: its workers have waited {longest:.0f} s for {len(bundles)} bundle(s) of [{asks}] "
                    f"({self.free()}); {limit} (resources.worker_start_timeout_s)")
            self.notices.append(line)
            emit(line)


def _placement_group_table() -> dict:
    return placement_group_table()
