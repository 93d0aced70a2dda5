"""A sweep folder as a small archive of its results, without its models: to commit a study's results beside the
code that made them, or to analyse a cluster's study on a laptop.

``archive_sweep`` packs ``<storage>/sweeps/<name>`` into ``<name>.tar.gz``, keeping what the analysis reads — Tune's
experiment state and each trial's ``result.json`` / ``params.json``, the sweep record, each run's ``config.yaml``,
``result.json`` and per-sentence ``predictions/`` (the paired bootstrap's input) — and leaving out the students'
weights, checkpoints and event files (a 10-trial study: well under a megabyte, where its folder holds hundreds of
megabytes). ``restore_archive`` unpacks one under a storage folder's ``sweeps/`` without overwriting a folder that is
there; ``mtbert_ray.study.analysis`` then reads it as it reads any moved sweep folder (run folders are looked for under
the sweep's own ``runs/``).

An archive is for analysis, not for ``--resume`` (the models are not in it). Tune's experiment state holds pickled
trial state, which Ray's loader unpickles: analyse only archives you trust, as you would a results folder. Unpacking
refuses members that would land outside the target folder (``tarfile``'s ``data`` filter).
"""
from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.store.lock import LOCK_DIR
from mtbert_ray.study.record import SWEEP_FILE

#: The files an archive keeps, by suffix: results, records, predictions and configs. Weights (.safetensors, .bin,
#: .onnx), pickles (tuner.pkl, params.pkl: only --resume reads them) and TensorBoard event files are left out.
KEPT_SUFFIXES = (".json", ".csv", ".tsv", ".md", ".yaml", ".txt")
SKIPPED_FOLDERS = ("student",)  # a run's exported model; its training checkpoints are checkpoint_* folders
ARCHIVE_SUFFIX = ".tar.gz"


def _kept(path: Path, sweep: Path) -> bool:
    relative = path.relative_to(sweep)
    if any(part in SKIPPED_FOLDERS or part.startswith(("checkpoint_", LOCK_DIR)) for part in relative.parts[:-1]):
        return False  # models, training checkpoints, and the writer locks of whatever was running when it was archived
    return path.is_file() and path.suffix in KEPT_SUFFIXES


def archive_sweep(sweep: str | Path, out_dir: str | Path) -> Path:
    """``<out_dir>/<sweep name>.tar.gz`` of the results in ``sweep`` (``KEPT_SUFFIXES``, outside the runs' model and
    checkpoint folders), members under ``<sweep name>/`` in sorted order; written beside, then moved over, an older
    archive, so a failed write never leaves half an archive. Returns its path."""
    sweep = Path(sweep)
    if not (sweep / SWEEP_FILE).is_file():
        raise ResultsError(f"{sweep}: not a sweep folder (no {SWEEP_FILE})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{sweep.name}{ARCHIVE_SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    try:
        with tarfile.open(partial, "w:gz") as tar:
            for path in sorted(p for p in sweep.rglob("*") if _kept(p, sweep)):
                tar.add(path, arcname=str(Path(sweep.name) / path.relative_to(sweep)), recursive=False)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return target


def restore_archive(archive: str | Path, storage: str | Path) -> Path | None:
    """Unpack ``archive`` (made by ``archive_sweep``) as ``<storage>/sweeps/<name>``; None, touching nothing, when
    that folder exists (a sweep run or restored there is never overwritten). Returns the restored folder."""
    archive = Path(archive)
    if not archive.name.endswith(ARCHIVE_SUFFIX):
        raise ResultsError(f"{archive}: expected a sweep archive (*{ARCHIVE_SUFFIX})")
    name = archive.name.removesuffix(ARCHIVE_SUFFIX)
    sweeps = Path(storage) / "sweeps"
    if (sweeps / name).exists():
        return None
    staging = sweeps / f".{name}.restoring"  # unpacked here, then renamed: a failed unpack leaves no half sweep
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            if not members or any(Path(m.name).parts[0] != name for m in members):
                raise ResultsError(f"{archive}: expected every member under {name}/ (an archive of sweep {name!r})")
            # A results archive holds files and folders only (archive_sweep writes no link). A link member could point
            # at a sibling of the restored sweep (``analysis -> ../other/analysis``), which the analysis would then write
            # through: refused whole, whatever it points at, before anything is unpacked.
            linked = next((m for m in members if not (m.isfile() or m.isdir())), None)
            if linked is not None:
                kind = "a link" if linked.issym() or linked.islnk() else "a special file"
                target = f" to {linked.linkname}" if linked.linkname else ""
                raise ResultsError(f"{archive}: member {linked.name} is {kind}{target}; a sweep archive holds only files "
                                   "and folders")
            staging.mkdir(parents=True)
            tar.extractall(staging, filter="data")
        if not (staging / name / SWEEP_FILE).is_file():
            raise ResultsError(f"{archive}: holds no {name}/{SWEEP_FILE}; expected an archive of a sweep folder")
        (staging / name).rename(sweeps / name)
    except (tarfile.TarError, OSError) as exc:
        raise ResultsError(f"{archive}: not a readable sweep archive ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sweeps / name
