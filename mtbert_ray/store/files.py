"""Files and folders the project writes: the results root, atomic text files, locks, manifests.

Each published artefact holds ``manifest.json`` listing its files with byte sizes, sha256 and
(for Parquet) row counts; ``verify_manifest`` re-checks them before an artefact is reused
(``mtbert_ray.store.stage`` publishes and reuses artefacts). Text results (``result.json``,
``config.yaml``) are written through a temporary name and renamed into place.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mtbert_ray.common.errors import ConfigError, ResultsError
from mtbert_ray.common.hashing import file_sha256

MANIFEST = "manifest.json"
DEFAULT_STORAGE = "~/mtbert_results"


def resolve_storage(storage: str | os.PathLike | None, create: bool = True) -> Path:
    """``--storage``, else ``$MTBERT_RAY_STORAGE``, else ``~/mtbert_results`` — created and checked writable
    (``create=False``: only its path, for a reader such as the dry run).

    A folder, never a URI: stages are published under file locks with atomic renames, which object
    stores do not offer (``--upload URI`` copies a finished study there; docs/design.md).
    """
    from_env = os.environ.get("MTBERT_RAY_STORAGE")
    what = "--storage" if storage else "MTBERT_RAY_STORAGE" if from_env else "--storage (default)"
    value = str(storage or from_env or DEFAULT_STORAGE)
    if "://" in value:
        raise ConfigError(
            f"{what}: {value!r} is a URI; expected a folder (local disk, or a file system shared by every node) — "
            "pass the URI to the sweep's --upload to copy the finished study there"
        )
    path = Path(value).expanduser().resolve()
    return ensure_writable_dir(path, what) if create else path


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


def file_entry(path: Path, rows: int | None = None) -> dict[str, Any]:
    """A manifest entry: size, sha256 and the file's modification time (``mtime_ns``: its stat signature —
    a file whose signature changed is hashed again on every reuse, so an edit of the same size is caught)."""
    stat = path.stat()
    entry: dict[str, Any] = {"name": path.name, "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": file_sha256(path)}
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


def verify_manifest(folder: Path, check_hashes: bool = True, check_rows: bool = False) -> dict[str, Any] | None:
    """The manifest if every listed file exists with its size (row count for Parquet with ``check_rows``) and its
    sha256 — re-hashed for every file whose stat signature (size, ``mtime_ns``) differs from the one recorded at
    publish, and for every file with ``check_hashes`` (``--verify``); ``None`` otherwise (or for a damaged manifest)."""
    manifest = read_manifest(folder)
    if manifest is None or not isinstance(manifest.get("files"), list):
        return None
    for entry in manifest["files"]:
        try:
            path = folder / entry["name"]
            stat = path.stat()
            if stat.st_size != entry["bytes"]:
                return None
            if check_rows and entry.get("rows") is not None and parquet_rows(path) != entry["rows"]:
                return None
            changed = entry.get("mtime_ns") != stat.st_mtime_ns
            if (check_hashes or changed) and file_sha256(path) != entry["sha256"]:
                return None
        except (OSError, ValueError, TypeError, KeyError):
            return None
    return manifest


def parquet_rows(path: Path) -> int | None:
    """Row count of a Parquet file from its footer (``None`` for other files)."""
    if path.suffix != ".parquet":
        return None

    try:
        return int(pq.read_metadata(path).num_rows)
    except Exception as exc:  # noqa: BLE001 - a damaged footer is a mismatch, whatever pyarrow raises
        raise ValueError(f"{path}: unreadable Parquet footer ({exc})") from None


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
