"""Targets a study has not decided yet: where a comparison's interval straddles its target, more seeds can settle it.

A target says "a − b ≥ threshold" for a comparison of two rows, judged on one of the intervals of
``analysis.comparison_table`` (``seed_t``: the t-interval over seeds; ``boot``: the bootstrap over seeds × test
sentences; ``group_boot``: over seeds × groups, e.g. films). With the interval [low, high]:

- met when low ≥ threshold, missed when high < threshold;
- undecided when low < threshold ≤ high — the interval straddles the target, and only more seeds (pairs) narrow it:
  the half-width of a t-interval over n seeds shrinks about as 1/√n.

``rows_to_rerun`` lists the rows of the undecided targets (both sides, since comparisons are paired by seed) and
``next_seeds`` the seeds they have not run, so a study can add a part of those rows with new seeds
(``benchmarks/mixture_study.py --add-seeds N``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

INTERVALS = {"seed_t": ("accuracy_low", "accuracy_high"), "boot": ("accuracy_boot_low", "accuracy_boot_high"),
             "group_boot": ("accuracy_group_boot_low", "accuracy_group_boot_high")}
Verdict = Literal["met", "missed", "undecided", "not measured"]


@dataclass(frozen=True)
class Target:
    """``a − b ≥ threshold`` (test accuracy, in points), judged on ``interval`` (a key of ``INTERVALS``)."""

    a: str
    b: str
    threshold: float = 0.0
    interval: str = "seed_t"

    def __post_init__(self) -> None:
        if self.interval not in INTERVALS:
            raise ValueError(f"interval: expected one of {', '.join(INTERVALS)}, got {self.interval!r}")


def interval_of(comparison: Mapping[str, float], interval: str) -> tuple[float, float]:
    """(low, high) of one row of ``comparison_table`` for the named interval; NaN where it was not computed."""
    low, high = INTERVALS[interval]
    return float(comparison.get(low, math.nan)), float(comparison.get(high, math.nan))


def verdict(comparison: Mapping[str, float] | None, target: Target) -> Verdict:
    """Met (low ≥ threshold), missed (high < threshold) or undecided (the interval straddles the threshold); "not
    measured" without a comparison or an interval (fewer than two pairs)."""
    if comparison is None:
        return "not measured"
    low, high = interval_of(comparison, target.interval)
    if math.isnan(low) or math.isnan(high):
        return "not measured"
    if low >= target.threshold:
        return "met"
    return "missed" if high < target.threshold else "undecided"


def rows_to_rerun(verdicts: Iterable[tuple[Target, Verdict]]) -> list[str]:
    """The rows of the undecided targets, both sides of each (a comparison pairs seeds), in the order first named."""
    rows: dict[str, None] = {}
    for target, said in verdicts:
        if said == "undecided":
            rows.setdefault(target.a)
            rows.setdefault(target.b)
    return list(rows)


def next_seeds(taken: Iterable[int], count: int) -> list[int]:
    """``count`` seeds after the largest one taken (0, 1, … when none): new pairs for every row rerun."""
    if count < 1:
        raise ValueError(f"count: expected at least 1 seed to add, got {count}")
    start = max((int(s) for s in taken), default=-1) + 1
    return list(range(start, start + count))
