"""``<sweep>/mtbert_sweep.json``: the typed record the sweep writes once (space, resolved base experiment, search and
analysis settings) and ``--resume``, every trial and the analysis read back — one model (``SweepRecord``), written
and read here, so a damaged or foreign record is one line naming the file, not a traceback or a silent default."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from mtbert_ray.common.errors import ResultsError
from mtbert_ray.store.files import atomic_write_text

SWEEP_FILE = "mtbert_sweep.json"
ANALYSIS_DIR = "analysis"  # <sweep>/analysis/: the tables, plots and best trial of the analysis
RUNS_DIR = "runs"  # <sweep>/runs/<trial id>/: each trial's run folder (student, predictions, config)


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str  # a bare metric name (accuracy, macro_f1, mcc, f1), measured on validation
    mode: Literal["max", "min"]


class SweepRecord(BaseModel):
    """What a sweep is: its space file (``spec``) and resolved base experiment (``base``), how its rows are grouped
    (``row_key``), the selection metric and reported metrics, the paired comparisons, and where it lives."""

    model_config = ConfigDict(extra="forbid")

    name: str
    source: str  # the space file it was started from
    spec: dict[str, Any]  # SpaceFile.model_dump(mode="json")
    base: dict[str, Any]  # the base experiment, paths made absolute
    row_key: str  # teachers, variant, trial, or a space key
    select: Selection
    metrics: list[str]  # reported metrics, the main one first
    comparisons: list[tuple[str, str]]
    storage: str
    experiment_dir: str
    created: float


def write_sweep_record(folder: Path, record: SweepRecord) -> None:
    atomic_write_text(folder / SWEEP_FILE, json.dumps(record.model_dump(mode="json"), indent=2))


def read_sweep_record(folder: Path) -> SweepRecord:
    """The sweep record of ``folder``; ``ResultsError`` when it is missing, not JSON, or not what a sweep wrote."""
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise ResultsError(f"{folder}: not an mtbert-ray sweep folder (no {SWEEP_FILE})")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsError(f"{path}: damaged sweep record ({str(exc).splitlines()[0]}); expected the JSON the sweep wrote") from None
    try:
        return SweepRecord.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        problem = "missing" if first["type"] == "missing" else first["msg"]
        raise ResultsError(f"{path}: damaged sweep record ({where}: {problem}); expected the JSON the sweep wrote "
                           "(a record of mtbert-ray before 0.1's typed record: run the sweep again)") from None
