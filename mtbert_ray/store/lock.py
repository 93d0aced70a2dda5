"""One writer per folder: a lock that a second writer meets with a one-line refusal naming the holder (or waits for,
where waiting is the point — a published stage being built by another trial), that a crashed holder does not leave
stuck, and that works on the shared file systems clusters use.

The lock is a directory, ``<folder>/.mtbert-writer`` (``os.mkdir`` is atomic on local disks and on NFS / EFS, where
``flock`` may be a no-op or local to one client), holding ``holder.json``: process id, host, start time, the command
and a token. The holder touches the file every ``HEARTBEAT_S`` seconds from a daemon thread. Another process finds
the lock *stale* — and takes it over — when the holder is on this host and its process is gone (or is another process
that reused its id), or, on any host, when the heartbeat is older than ``STALE_AFTER_S`` (a node that died). A stale
lock is broken by renaming it away (atomic, so of two breakers only one wins), then taken with ``mkdir`` like a new one.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mtbert_ray.common.errors import ResultsError

LOCK_DIR = ".mtbert-writer"
HOLDER_FILE = "holder.json"
HEARTBEAT_S = 15.0
STALE_AFTER_S = 120.0  # a heartbeat this old: the holder's node or process is gone


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` on this host (Linux: field 22 of /proc/<pid>/stat), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process with that id: alive
        return True
    now = _process_start(pid)
    return started is None or now is None or now == started


def describe_holder(holder: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("started", 0))))
    command = holder.get("command")
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {since}"
            + (f" ({command})" if command else ""))


class FolderLock:
    """The writer lock of ``folder`` (``with FolderLock(folder, "run folder"): ...``).

    ``wait=False``: a held lock is a ``ResultsError`` naming its holder. ``wait=True``: wait for it (``on_wait`` is
    called with the holder's description once, then every minute), up to ``timeout_s`` (None: no limit).
    """

    def __init__(self, folder: str | os.PathLike, what: str, wait: bool = False, timeout_s: float | None = None,
                 on_wait: Callable[[str], None] | None = None, poll_s: float = 0.5) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_DIR
        self.what = what
        self.wait, self.timeout_s, self.on_wait, self.poll_s = wait, timeout_s, on_wait, poll_s
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    # ---- taking and giving back ------------------------------------------------------------------------------------
    def acquire(self) -> FolderLock:
        started = time.monotonic()
        noticed = None
        while True:
            if self._try_take():
                self._start_heartbeat()
                return self
            holder = self.holder()
            if self._stale(holder):
                self._break()
                continue
            described = describe_holder(holder) if holder else "another process (starting up)"
            if not self.wait:
                raise self._refusal(described)
            waited = time.monotonic() - started
            if self.timeout_s is not None and waited > self.timeout_s:
                raise ResultsError(f"{self.what} {self.folder}: waited {waited:.0f} s for {described}, which still writes it")
            if self.on_wait is not None and (noticed is None or time.monotonic() - noticed >= 60):
                self.on_wait(described)
                noticed = time.monotonic()
            time.sleep(self.poll_s)

    def check_free(self) -> None:
        """Refuse now (the same one line as ``acquire``) when another live writer holds the lock — a check before
        slow work that writes nothing; ``acquire`` takes the lock afterwards. A waiting lock never refuses here."""
        holder = self.holder()
        if not self.wait and holder is not None and not self._stale(holder):
            raise self._refusal(describe_holder(holder))

    def _refusal(self, described: str) -> ResultsError:
        return ResultsError(f"{self.what} {self.folder} is being written by {described}; wait for it to finish or stop it "
                            f"(a writer that died leaves no lock behind: {self.path} is taken over {STALE_AFTER_S:.0f} s "
                            "after its last heartbeat)")

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self.holder()
        if holder is not None and holder.get("token") == self.token:  # never remove a lock another writer took over
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ---- the lock directory ------------------------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """The holder's record; None when the lock is free or its holder is still writing it."""
        try:
            data = json.loads((self.path / HOLDER_FILE).read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _try_take(self) -> bool:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.path)
        except FileExistsError:
            return False
        pid = os.getpid()
        holder = {"pid": pid, "host": socket.gethostname(), "started": time.time(), "process_start": _process_start(pid),
                  "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200], "token": self.token}
        tmp = self.path / f".{HOLDER_FILE}.{self.token}"
        tmp.write_text(json.dumps(holder))
        os.replace(tmp, self.path / HOLDER_FILE)
        return True

    def _mtime(self) -> float | None:
        for path in (self.path / HOLDER_FILE, self.path):
            try:
                return path.stat().st_mtime
            except OSError:
                continue
        return None

    def _stale(self, holder: dict[str, Any] | None) -> bool:
        beat = self._mtime()
        if beat is not None and time.time() - beat > STALE_AFTER_S:
            return True
        if holder is None:
            return False  # free (the next mkdir takes it), or its holder is writing its record right now
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"], holder.get("process_start"))
        return False

    def _break(self) -> None:
        aside = self.folder / f"{LOCK_DIR}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except OSError:  # another process broke it first
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    os.utime(self.path / HOLDER_FILE)
                except OSError:
                    return

        self._beat = threading.Thread(target=beat, name=f"mtbert-lock-heartbeat {self.folder.name}", daemon=True)
        self._beat.start()
