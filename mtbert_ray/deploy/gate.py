"""The deploy gate: an ONNX or int8 export is kept only when it classifies the validation split as PyTorch does.

Quantisation can collapse a model's accuracy silently (optimum #151: F1 0.83 → 0.66), and a per-class collapse hides
behind a small overall change when the classes are unbalanced. For each candidate runtime, on the same validation
rows as the PyTorch student:

    Δacc   = acc(candidate) − acc(torch)                          (points; kept when Δacc ≥ −tolerance, default 1)
    Δrec_c = recall_c(candidate) − recall_c(torch) for each class c  (kept when every Δrec_c ≥ −class_tolerance, default 3)

with a 95 % paired bootstrap interval on Δacc (rows resampled, both runtimes' predictions of a row kept together). A
candidate that fails is not kept: its file is removed, the PyTorch (and any passing) runtime stays, and the reason is
one line in the export's report, ``result.json`` and the model card.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

TOLERANCE_POINTS = 1.0
CLASS_TOLERANCE_POINTS = 3.0
DRAWS = 2000


@dataclass
class GateResult:
    """One candidate runtime against PyTorch on the validation rows."""

    runtime: str
    kept: bool
    rows: int
    delta_points: float  # Δacc in accuracy points
    interval: tuple[float, float]  # its 95 % paired bootstrap interval
    class_deltas: dict[str, float] = field(default_factory=dict)  # Δ recall per class, points
    tolerance: float = TOLERANCE_POINTS
    class_tolerance: float = CLASS_TOLERANCE_POINTS
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def paired_interval(reference_correct: np.ndarray, candidate_correct: np.ndarray, draws: int = DRAWS,
                    seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of mean(candidate_correct − reference_correct) × 100, rows resampled with both kept."""
    diffs = candidate_correct.astype(np.float64) - reference_correct.astype(np.float64)
    if len(diffs) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(draws, len(diffs)))].mean(axis=1) * 100
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def gate(runtime: str, reference: Sequence[int], candidate: Sequence[int], labels: Sequence[int], label_names: Sequence[str],
         tolerance: float = TOLERANCE_POINTS, class_tolerance: float = CLASS_TOLERANCE_POINTS) -> GateResult:
    """Whether ``candidate``'s predictions (class ids, one per validation row) may replace ``reference``'s (PyTorch)."""
    ref, cand, gold = (np.asarray(x, dtype=np.int64) for x in (reference, candidate, labels))
    ref_ok, cand_ok = ref == gold, cand == gold
    delta = float((cand_ok.mean() - ref_ok.mean()) * 100) if len(gold) else 0.0
    per_class = {}
    for c, name in enumerate(label_names):
        rows = gold == c
        if rows.any():
            per_class[str(name)] = float((cand_ok[rows].mean() - ref_ok[rows].mean()) * 100)
    low, high = paired_interval(ref_ok, cand_ok)
    problems = []
    if delta < -tolerance:
        problems.append(f"validation accuracy {delta:+.2f} points [{low:+.2f}, {high:+.2f}] against PyTorch "
                        f"(tolerance {tolerance:g})")
    worst = min(per_class.items(), key=lambda kv: kv[1], default=None)
    if worst is not None and worst[1] < -class_tolerance:
        problems.append(f"class {worst[0]!r} recall {worst[1]:+.2f} points (tolerance {class_tolerance:g})")
    reason = ("; ".join(problems) if problems else
              f"validation accuracy {delta:+.2f} points [{low:+.2f}, {high:+.2f}], every class within {class_tolerance:g}")
    return GateResult(runtime, not problems, int(len(gold)), delta, (low, high), per_class, tolerance, class_tolerance, reason)
