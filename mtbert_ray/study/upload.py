"""Copying a finished sweep to object storage (``s3://``, ``gs://``, ``file://`` …) with pyarrow.

Training writes to a POSIX results root (local disk or a shared file system mounted on every
node: stage artefacts are published by atomic rename, which object stores do not offer). When a
sweep ends, ``--upload URI`` copies the sweep folder — Tune's experiment state, every trial's run
folder with its exported student, the analysis tables and plots — to ``URI/<sweep name>/`` through
``pyarrow.fs`` (S3 and GCS clients ship with pyarrow; credentials come from the usual
environment / instance metadata, never from config files).
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

from mtbert_ray.common.errors import ConfigError, ResultsError

SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "abfs", "abfss")


def check_upload_uri(uri: str) -> str:
    """Validate the form of ``--upload`` before any work starts (no network access); returns it unchanged."""
    parsed = urlparse(uri)
    if parsed.scheme not in SCHEMES:
        raise ConfigError(f"--upload: expected a URI with one of the schemes {', '.join(SCHEMES)}, got {uri!r}")
    if parsed.scheme != "file" and not parsed.netloc:
        raise ConfigError(f"--upload: {uri!r} names no bucket (expected {parsed.scheme}://BUCKET/PREFIX)")
    return uri


def upload_tree(local: Path, uri: str) -> int:
    """Copy folder ``local`` to ``uri`` (created if needed); returns the number of files copied."""
    try:
        fs, dest = pafs.FileSystem.from_uri(uri)
        fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    except (OSError, ValueError) as exc:  # pyarrow reports missing credentials/buckets as OSError
        raise ResultsError(f"--upload: copying {local} to {uri} failed ({exc})") from None
    return sum(1 for p in local.rglob("*") if p.is_file())


def upload_sweep(experiment_dir: Path, uri: str) -> str:
    """Upload a sweep folder to ``uri/<sweep name>``; returns that target URI."""
    target = uri.rstrip("/") + "/" + experiment_dir.name
    count = upload_tree(experiment_dir, target)
    print(f"[mtbert] uploaded {count} files to {target}", flush=True)
    return target
