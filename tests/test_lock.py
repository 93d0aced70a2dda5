"""One writer per folder (``store.lock.FolderLock``): a second writer is refused with its holder named, a crashed
holder's lock is taken over, waiting works, and nothing relies on ``flock`` (a directory made with ``mkdir``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.store import lock as lock_module
from mtbert_ray.store.lock import HOLDER_FILE, LOCK_DIR, FolderLock
from tests.conftest import REPO

HOLD = """
import sys, time
from mtbert_ray.store.lock import FolderLock
lock = FolderLock(sys.argv[1], "run folder").acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _holder_process(folder, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_with_the_holder_named(tmp_path):
    proc = _holder_process(tmp_path / "run", 60)
    try:
        with pytest.raises(ResultsError, match=rf"run folder {tmp_path / 'run'} is being written by pid {proc.pid} on "
                                               rf"{os.uname().nodename} since .* wait for it to finish or stop it"):
            FolderLock(tmp_path / "run", "run folder").acquire()
    finally:
        proc.kill()
        proc.wait()


def test_a_killed_holder_leaves_no_stuck_lock(tmp_path):
    proc = _holder_process(tmp_path / "run", 60)
    proc.kill()  # SIGKILL: no clean-up ran, the lock directory is still there
    proc.wait()
    assert (tmp_path / "run" / LOCK_DIR / HOLDER_FILE).is_file()
    with FolderLock(tmp_path / "run", "run folder") as taken:
        assert json.loads((tmp_path / "run" / LOCK_DIR / HOLDER_FILE).read_text())["token"] == taken.token
    assert not (tmp_path / "run" / LOCK_DIR).exists()


def test_a_holder_on_another_host_is_stale_only_after_its_heartbeat_stops(tmp_path, monkeypatch):
    """Another host's process cannot be asked whether it lives: its lock is taken over once its heartbeat is older
    than STALE_AFTER_S (a shared file system's mtime), never before."""
    folder = tmp_path / "sweep"
    (folder / LOCK_DIR).mkdir(parents=True)
    record = folder / LOCK_DIR / HOLDER_FILE
    record.write_text(json.dumps({"pid": 1, "host": "node-that-died", "started": time.time() - 600, "token": "x"}))
    with pytest.raises(ResultsError, match="being written by pid 1 on node-that-died"):
        FolderLock(folder, "sweep folder").acquire()
    old = time.time() - lock_module.STALE_AFTER_S - 5
    os.utime(record, (old, old))
    with FolderLock(folder, "sweep folder"):
        pass


def test_a_waiting_writer_goes_on_when_the_holder_finishes(tmp_path):
    first = FolderLock(tmp_path / "stage", "stage").acquire()
    notices: list[str] = []
    threading.Timer(1.0, first.release).start()
    started = time.monotonic()
    with FolderLock(tmp_path / "stage", "stage", wait=True, on_wait=notices.append, poll_s=0.05):
        assert time.monotonic() - started >= 0.9
    assert len(notices) == 1 and f"pid {os.getpid()}" in notices[0]


def test_waiting_has_a_limit(tmp_path):
    with FolderLock(tmp_path / "stage", "stage"):
        with pytest.raises(ResultsError, match="waited .* s for pid"):
            FolderLock(tmp_path / "stage", "stage", wait=True, timeout_s=0.2, poll_s=0.05).acquire()


def test_release_never_removes_a_lock_another_writer_took_over(tmp_path):
    mine = FolderLock(tmp_path / "run", "run folder").acquire()
    record = tmp_path / "run" / LOCK_DIR / HOLDER_FILE
    record.write_text(json.dumps({**json.loads(record.read_text()), "token": "someone-else"}))
    mine.release()
    assert record.is_file()


def test_the_heartbeat_keeps_a_long_writer_fresh(tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "HEARTBEAT_S", 0.1)
    with FolderLock(tmp_path / "run", "run folder"):
        record = tmp_path / "run" / LOCK_DIR / HOLDER_FILE
        old = time.time() - 1000
        os.utime(record, (old, old))
        time.sleep(0.5)
        assert time.time() - record.stat().st_mtime < 5
