"""``<sweep>/mtbert_sweep.json``: the record the sweep writes once (space, resolved base experiment, search settings)
and ``--resume`` and the analysis read back — read in one place, so a damaged record is one line, not a traceback."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mtbert_ray.errors import ResultsError

SWEEP_FILE = "mtbert_sweep.json"
REQUIRED_KEYS = ("spec", "base", "source")


def read_sweep_record(folder: Path) -> dict[str, Any]:
    """The sweep record of ``folder``; ``ResultsError`` when it is missing, not JSON, or lacks what a sweep wrote."""
    path = folder / SWEEP_FILE
    if not path.is_file():
        raise ResultsError(f"{folder}: not an mtbert-ray sweep folder (no {SWEEP_FILE})")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ResultsError(f"{path}: damaged sweep record ({str(exc).splitlines()[0]}); expected the JSON the sweep wrote") from None
    missing = [k for k in REQUIRED_KEYS if not isinstance(record, dict) or k not in record]
    if missing:
        raise ResultsError(f"{path}: damaged sweep record (no {', '.join(missing)}); expected the JSON the sweep wrote")
    return record
