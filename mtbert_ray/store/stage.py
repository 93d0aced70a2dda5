"""The stage primitive: reuse a published artefact of a key, or build it under a lock and publish it.

Every reusable artefact of the project — tokenized shards, joined views, co-finetuned teachers,
teacher caches — lives in ``<root>/<kind>/<key>/``. Building writes the artefact into that
folder (a fresh ``.build-*`` folder, renamed ``data/`` when published, or a Ray Train run that can
resume); publishing hashes
its files once into the artefact's ``manifest.json`` (sizes, sha256, Parquet row counts) and then
writes the marker ``mtbert_stage.json`` (atomically, last). A folder without a marker is never
trusted. Reuse checks that every listed file is there with its size (and its row count for
Parquet); ``verify=True`` (``--verify``) re-hashes every file. A published folder whose files no
longer match is discarded and rebuilt. A writer lock per key (``store.lock``: no ``flock``, so it holds on NFS and
EFS too) makes concurrent builders wait for one, and a builder that died is taken over.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.store.files import (
    atomic_write_text,
    discard,
    file_entry,
    parquet_rows,
    read_manifest,
    verify_manifest,
    write_manifest,
)
from mtbert_ray.store.lock import FolderLock

log = logging.getLogger(__name__)

MARKER = "mtbert_stage.json"
BUILD_PREFIX = ".build-"
ARTEFACT_DIR = "data"  # the published name of a folder built with ``build_dir``


@dataclass(frozen=True)
class Published:
    """A published artefact: ``path`` holds its files and ``manifest.json``; ``meta`` what the builder recorded."""

    kind: str
    key: str
    folder: Path  # <root>/<kind>/<key>
    path: Path  # the artefact folder inside it
    meta: dict[str, Any]
    reused: bool
    seconds: float = 0.0

    def files(self, prefix: str = "", suffix: str = "") -> list[Path]:
        """The artefact's files listed in its manifest, optionally those under ``prefix`` ending in ``suffix``."""
        manifest = read_manifest(self.path) or {"files": []}
        return [self.path / e["name"] for e in manifest["files"] if e["name"].startswith(prefix) and e["name"].endswith(suffix)]


@dataclass
class Built:
    """What a build function returns: the artefact folder it wrote (inside the stage folder) and its metadata."""

    path: Path
    meta: dict[str, Any] = field(default_factory=dict)
    manifest_extra: dict[str, Any] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()  # file names left out of the artefact (deleted before hashing), e.g. optimizer state


def read_stage(folder: Path, verify: bool = False) -> Published | None:
    """The published artefact of a stage folder, or ``None`` when it has none or its files do not match."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not _valid_marker(marker):  # damaged or rewritten by hand: as if the stage were not there (it is rebuilt)
        log.warning("%s: its marker %s is damaged; the stage will be rebuilt", folder, MARKER)
        return None
    path = folder / marker["artefact"]
    if verify_manifest(path, check_hashes=verify, check_rows=True) is None:
        log.warning("%s %s: %s is missing or altered; it will be rebuilt", marker.get("kind"), folder.name, path)
        return None
    return Published(marker["kind"], marker["key"], folder, path, marker.get("meta", {}), reused=True)


def _valid_marker(marker: Any) -> bool:
    """A marker this module wrote: kind, key and a plain artefact name (inside the stage folder)."""
    if not isinstance(marker, dict) or not all(isinstance(marker.get(k), str) and marker[k] for k in ("kind", "key", "artefact")):
        return False
    artefact = Path(marker["artefact"])
    return not artefact.is_absolute() and ".." not in artefact.parts and isinstance(marker.get("meta", {}), dict)


def reuse_or_build(
    root: Path,
    kind: str,
    key: str,
    build: Callable[[Path], Built],
    *,
    what: str,
    inputs: Mapping[str, Any] | None = None,
    identity: str | None = None,
    verify: bool = False,
) -> Published:
    """The artefact of ``<root>/<kind>/<key>``: reused when published and intact, else built by ``build(folder)``.

    ``what`` names the artefact in the one line printed either way. ``inputs`` (what the key was
    computed from) and ``identity`` (what stays the same when only settings change, e.g. the
    teachers and the dataset) are recorded in the marker; when a new key is built while another
    key of the same identity exists, the settings that differ are printed, so a changed key is
    reported instead of silently training again.
    """
    started = time.time()
    folder = root / kind / key
    found = read_stage(folder, verify)
    if found is None:
        with FolderLock(root / "locks" / f"{kind}-{key}", f"stage {kind}/{key}", wait=True,
                        on_wait=lambda holder: print(f"[mtbert] {what}: waiting for {holder}, which builds {kind}/{key}",
                                                     flush=True)):
            found = read_stage(folder, verify)
            if found is None:
                if (folder / MARKER).exists():  # published once, altered since: start over
                    discard_contents(folder)
                _remove_stale_builds(folder)
                if identity is not None and inputs is not None:
                    _report_changed_key(root / kind, key, identity, inputs)
                print(f"[mtbert] {what}: building {kind}/{key}", flush=True)
                try:
                    built = build(folder)
                    published = _publish(folder, kind, key, built, inputs, identity)
                except BaseException:
                    _remove_stale_builds(folder)
                    with contextlib.suppress(OSError):
                        folder.rmdir()  # only when the failed build left nothing worth resuming
                    raise
                return Published(kind, key, folder, published, built.meta, reused=False, seconds=time.time() - started)
    print(f"[mtbert] {what}: reusing {kind}/{key}", flush=True)
    return Published(found.kind, found.key, folder, found.path, found.meta, reused=True, seconds=time.time() - started)


def _publish(folder: Path, kind: str, key: str, built: Built, inputs, identity) -> Path:
    """Hash the artefact's files once into its manifest, then write the marker (last)."""
    path = built.path
    if path.name.startswith(BUILD_PREFIX):  # a finished build folder gets its published name
        final = folder / ARTEFACT_DIR
        os.rename(path, final)
        path = final
    for name in built.exclude:
        for p in path.rglob(name):
            p.unlink()
    manifest = read_manifest(path)
    if manifest is None or not manifest.get("files"):
        entries = [
            file_entry(p, parquet_rows(p)) | {"name": str(p.relative_to(path))}
            for p in sorted(path.rglob("*"))
            if p.is_file() and p.name != "manifest.json"
        ]
        write_manifest(path, entries, kind=kind, key=key, **built.manifest_extra)
    marker = {
        "kind": kind,
        "key": key,
        "artefact": str(path.relative_to(folder)),
        "meta": built.meta,
        "inputs": dict(inputs or {}),
        "identity": identity,
        "created": time.time(),
    }
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=2, default=str))
    return path


@contextlib.contextmanager
def build_dir(folder: Path) -> Iterator[Path]:
    """A fresh ``.build-*`` folder inside the stage folder to write an artefact in; removed if the build fails.

    A failed write (disk full, folder made read-only) becomes one ``ResultsError`` line; nothing is
    published and artefacts published earlier are not touched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{BUILD_PREFIX}{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise ResultsError(
                f"{folder.parent}: writing failed ({exc.strerror or exc}); nothing was published, earlier results are untouched"
            ) from exc
        raise


def _remove_stale_builds(folder: Path) -> None:
    """Half-written ``.build-*`` folders of crashed builders (the caller holds the key's lock)."""
    if folder.is_dir():
        for stale in folder.glob(f"{BUILD_PREFIX}*"):
            shutil.rmtree(stale, ignore_errors=True)


def discard_contents(folder: Path) -> None:
    """Move a stage folder aside (atomic) and delete it: nothing of an altered artefact is resumed from."""
    discard(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _report_changed_key(kind_folder: Path, key: str, identity: str, inputs: Mapping[str, Any]) -> None:
    """Print the settings that differ from the newest published key of the same identity (if any)."""
    newest = None
    for marker_file in kind_folder.glob(f"*/{MARKER}"):
        if marker_file.parent.name == key:
            continue
        try:
            marker = json.loads(marker_file.read_text())
        except (OSError, ValueError):
            continue
        if marker.get("identity") == identity and (newest is None or marker.get("created", 0) > newest.get("created", 0)):
            newest = marker
    if newest is None:
        return
    old, new = _flatten(newest.get("inputs") or {}), _flatten(inputs)
    changed = [f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        print(f"[mtbert] a {kind_folder.name} stage of the same teachers and data exists ({newest['key']}) with other "
              f"settings, so it is not reused: {'; '.join(changed)}", flush=True)
