"""Atomic, verifiable folders for everything the project caches or publishes.

A folder is written under a temporary name next to its final place and renamed into place
in one step, so a crash never leaves a half-written folder that a later run trusts. Each
published folder holds ``manifest.json`` listing its files with byte sizes, sha256 and (for
Parquet) row counts; ``verify_manifest`` re-checks them before a folder is reused.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtbert_ray.errors import ResultsError
from mtbert_ray.hashing import file_sha256

MANIFEST = "manifest.json"


def default_cache_dir() -> Path:
    """``$MTBERT_RAY_CACHE``, else ``$XDG_CACHE_HOME/mtbert_ray``, else ``~/.cache/mtbert_ray``."""
    if os.environ.get("MTBERT_RAY_CACHE"):
        return Path(os.environ["MTBERT_RAY_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mtbert_ray"


def ensure_writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check that files can be written there (one-line error otherwise)."""
    if path.exists() and not path.is_dir():
        raise ResultsError(f"{what}: {path} is a file; expected a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ResultsError(f"{what}: {path} is not writable ({exc.strerror or exc})") from None
    return path


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock (``flock``) on ``path`` — serialises concurrent builders of one artefact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def temp_dir_for(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` (same filesystem, so the rename is atomic)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def building(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` to build it in; removed again if the build fails.

    A failed write (disk full, folder made read-only) becomes one ``ResultsError`` line; nothing
    is published and folders published earlier are not touched.
    """
    tmp = temp_dir_for(final)
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ResultsError(
                f"{final.parent}: writing failed ({exc.strerror or exc}); nothing was published, earlier results are untouched"
            ) from exc
        raise


def file_entry(path: Path, rows: int | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path)}
    if rows is not None:
        entry["rows"] = rows
    return entry


def write_manifest(folder: Path, files: list[dict[str, Any]], **meta: Any) -> dict[str, Any]:
    """Write ``manifest.json`` (written last: a folder without one is never trusted)."""
    manifest = {"files": files, **meta}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def verify_manifest(folder: Path, check_hashes: bool = True) -> dict[str, Any] | None:
    """The manifest if every listed file exists with its size (and sha256); ``None`` otherwise."""
    manifest = read_manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), list):
        return None
    for entry in manifest["files"]:
        path = folder / entry["name"]
        try:
            if path.stat().st_size != entry["bytes"]:
                return None
        except OSError:
            return None
        if check_hashes and file_sha256(path) != entry["sha256"]:
            return None
    return manifest


def publish_dir(tmp: Path, final: Path, check_hashes: bool = True) -> Path:
    """Rename ``tmp`` to ``final``. If a valid ``final`` already exists (a concurrent builder won), keep it
    and drop ``tmp``; an invalid one (crash leftovers, corruption) is moved aside and replaced."""
    try:
        os.rename(tmp, final)
        return final
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if verify_manifest(final, check_hashes) is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        return final
    discard(final)
    os.rename(tmp, final)
    return final


def discard(folder: Path) -> None:
    """Move a broken folder aside (atomic) and delete it."""
    if not folder.exists():
        return
    trash = folder.parent / f".{folder.name}.trash-{uuid.uuid4().hex[:12]}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary name + fsync + rename: the old file stays whole until the
    new one is complete. A failed write (disk full, read-only folder) is one ``ResultsError`` line."""
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise ResultsError(f"{path}: cannot write it ({exc.strerror or exc})") from exc
        raise
