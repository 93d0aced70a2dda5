"""How much of its best teacher a student keeps, at what depth and speed: retention targets read from a frontier table.

``frontier.build_frontier`` times every finished student beside its best teacher (the co-finetuned teacher best on
validation) on the same runtime and writes, per (trial, runtime), the student's ``layers``, the teacher's
``best_teacher_layers``, ``retention`` = student test accuracy ÷ that teacher's, and ``speedup`` = the teacher's batch-1
p50 latency ÷ the student's. Here the trials of one row (a study's variant: its seeds) are pooled:

    retention of a row = mean over its seeds of retention_s, with the 95 % t-interval mean ± t_{n−1} · sd / √n;
    speed-up of a row = the median over its seeds of speedup_s (the students of a row share their architecture).

A ``RetentionTarget`` asks a row that qualifies — a student at most ``max_depth_ratio`` × its teacher's layers deep,
and/or at least ``min_speedup`` × as fast, measured on at least ``min_seeds`` seeds — to keep at least
``min_retention`` of its teacher, judged on the mean (the interval is reported beside it). A row with fewer seeds is
listed (``short_of_seeds``), not judged: one lucky seed does not meet a target the protocol sets on five. A study of
several teacher sets judges against its strongest teacher (``strongest_teacher``: of the rows' best teachers, the one
best on validation, as the frontier records it in ``best_teacher_val_accuracy``): a student of a weak teacher alone
keeping all of that teacher is not a student that keeps the best teacher. The targets of MT-BERT's comparisons
(issue 40): r1, at most half the layers, ≥ 97 %; r2, at least 4× as fast, ≥ 94 %; each on the mixture study's
protocol of 5 seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtbert_ray.common.metric_names import Split, metric_key
from mtbert_ray.study.analysis import mean_interval

FRONTIER_CSV = Path("analysis") / "frontier" / "frontier.csv"  # under a sweep folder, written by build_frontier


@dataclass(frozen=True)
class RetentionTarget:
    """A row qualifies when its student is at most ``max_depth_ratio`` × its best teacher's layers deep and at least
    ``min_speedup`` × as fast (each only when set), on at least ``min_seeds`` seeds; it meets the target when it keeps
    ≥ ``min_retention`` (a fraction)."""

    name: str
    min_retention: float
    max_depth_ratio: float | None = None
    min_speedup: float | None = None
    min_seeds: int = 1

    def qualifies(self, row: pd.Series) -> bool:
        return row["n"] >= self.min_seeds and self.qualifies_by_shape(row)

    def qualifies_by_shape(self, row: pd.Series) -> bool:
        """Depth and speed alone, whatever the number of seeds."""
        if self.max_depth_ratio is not None and not row["layers"] <= self.max_depth_ratio * row["best_teacher_layers"]:
            return False
        return self.min_speedup is None or row["speedup"] >= self.min_speedup

    def describe(self) -> str:
        what = []
        if self.max_depth_ratio is not None:
            what.append(f"≤ {self.max_depth_ratio:g}× the teacher's layers")
        if self.min_speedup is not None:
            what.append(f"≥ {self.min_speedup:g}× the teacher's speed")
        seeds = f" (on ≥ {self.min_seeds} seeds)" if self.min_seeds > 1 else ""
        return f"({self.name}) a student {' and '.join(what)} keeps ≥ {self.min_retention:.0%} of its best teacher{seeds}"


R1 = RetentionTarget("r1", 0.97, max_depth_ratio=0.5, min_seeds=5)
R2 = RetentionTarget("r2", 0.94, min_speedup=4.0, min_seeds=5)


def read_frontiers(sweeps: list[Path]) -> pd.DataFrame:
    """The frontier tables of those sweep folders that have one (``analysis/frontier/frontier.csv``), concatenated,
    each line with the sweep's folder name as ``part`` (where to continue a row short of seeds)."""
    tables = [pd.read_csv(sweep / FRONTIER_CSV).assign(part=sweep.name) for sweep in sweeps if (sweep / FRONTIER_CSV).is_file()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def retention_by_row(frontier: pd.DataFrame, rows: str = "variant", runtime: str = "torch") -> pd.DataFrame:
    """One line per row of the study (``rows``: a column of the frontier table, e.g. the variant) on ``runtime``:
    n seeds, the student's and the teacher's layers, the teacher's validation accuracy, retention mean and 95 %
    t-interval, median speed-up, and the parts (sweep folders, ``read_frontiers``) its seeds come from."""
    columns = ["row", "n", "layers", "best_teacher", "best_teacher_layers", "best_teacher_val_accuracy", "retention",
               "retention_low", "retention_high", "speedup", "parts"]
    if frontier.empty:
        return pd.DataFrame(columns=columns)
    if rows not in frontier.columns:
        raise KeyError(f"rows: the frontier table has no column {rows!r} (it has {', '.join(map(str, frontier.columns))})")
    on = frontier[(frontier["runtime"] == runtime) & frontier["kept"].astype(bool) & frontier["retention"].notna()]
    out = []
    for row, group in on.groupby(rows, sort=False):
        mean, _, half = mean_interval([float(v) for v in group["retention"]])
        out.append({"row": row, "n": len(group), "layers": int(group["layers"].max()),
                    "best_teacher": group["best_teacher"].iloc[0],
                    "best_teacher_layers": float(group["best_teacher_layers"].max()) if "best_teacher_layers" in group else math.nan,
                    "best_teacher_val_accuracy": teacher_validation_accuracy(group),
                    "retention": mean, "retention_low": mean - half if half is not None else math.nan,
                    "retention_high": mean + half if half is not None else math.nan,
                    "speedup": float(group["speedup"].median()),
                    "parts": ", ".join(dict.fromkeys(map(str, group["part"]))) if "part" in group else ""})
    return pd.DataFrame(out, columns=columns)


def teacher_validation_accuracy(trials: pd.DataFrame) -> float:
    """The best teacher's validation accuracy over a row's trials (their mean; NaN when no trial has it): the
    frontier's ``best_teacher_val_accuracy`` column; for a frontier table written before that column, the student's
    validation accuracy ÷ ``val_retention`` (retention = student ÷ teacher, so teacher = student ÷ retention)."""
    if "best_teacher_val_accuracy" in trials.columns and trials["best_teacher_val_accuracy"].notna().any():
        return float(trials["best_teacher_val_accuracy"].mean())
    student = metric_key(Split.VALIDATION, "accuracy")
    if not {student, "val_retention"} <= set(trials.columns):
        return math.nan
    both = trials[trials[student].notna() & trials["val_retention"].notna() & (trials["val_retention"] > 0)]
    return float((both[student] / both["val_retention"]).mean()) if len(both) else math.nan


def strongest_teacher(summary: pd.DataFrame) -> str | None:
    """Of the rows' best teachers, the one best on validation (the first row's on a tie or without validation
    figures); None for an empty summary."""
    if summary.empty:
        return None
    known = summary[summary["best_teacher_val_accuracy"].notna()]
    return str((known if len(known) else summary).sort_values("best_teacher_val_accuracy", ascending=False,
                                                              kind="stable")["best_teacher"].iloc[0])


def judge(summary: pd.DataFrame, target: RetentionTarget, teacher: str | None = None) -> tuple[bool | None, pd.DataFrame]:
    """(met?, the rows that qualify for ``target``, best retention first); met is None when no row qualifies.
    With ``teacher``, only rows whose best teacher it is qualify (``strongest_teacher``)."""
    if summary.empty:
        return None, summary
    if teacher is not None:
        summary = summary[summary["best_teacher"] == teacher]
        if summary.empty:
            return None, summary
    eligible = summary[summary.apply(target.qualifies, axis=1)].sort_values("retention", ascending=False)
    if eligible.empty:
        return None, eligible
    return bool(eligible["retention"].iloc[0] >= target.min_retention), eligible


def short_of_seeds(summary: pd.DataFrame, target: RetentionTarget, teacher: str | None = None) -> pd.DataFrame:
    """The rows (of ``teacher``'s, when given) that would qualify for ``target`` by depth and speed but have fewer than
    its ``min_seeds`` seeds: listed beside the verdict, not counted in it; best retention first."""
    if summary.empty:
        return summary
    if teacher is not None:
        summary = summary[summary["best_teacher"] == teacher]
    shaped = summary[summary.apply(target.qualifies_by_shape, axis=1)] if len(summary) else summary
    return shaped[shaped["n"] < target.min_seeds].sort_values("retention", ascending=False)
