"""Targets a study has not decided: an interval that straddles its threshold asks for more seeds, on both rows."""
from __future__ import annotations

import math

import pytest

from mtbert_ray.study.undecided import Target, next_seeds, rows_to_rerun, verdict


def comparison(low: float, high: float, boot: tuple[float, float] = (math.nan, math.nan)) -> dict[str, float]:
    return {"accuracy_diff": (low + high) / 2, "accuracy_low": low, "accuracy_high": high,
            "accuracy_boot_low": boot[0], "accuracy_boot_high": boot[1]}


@pytest.mark.parametrize(("low", "high", "threshold", "expected"), [
    (0.1, 2.1, 0.0, "met"),            # the interval above the target
    (-1.1, 1.0, 0.0, "undecided"),     # the augmentation's −0.06 [−1.09, +0.97] for {L6}
    (-2.0, -0.4, -0.3, "missed"),      # wholly below a "≥ −0.3" target
    (0.2, 0.9, 0.5, "undecided"),      # above 0 but straddling a +0.5 target
    (0.5, 0.9, 0.5, "met"),            # a low bound on the threshold meets it
])
def test_the_verdict_reads_the_interval_against_the_threshold(low, high, threshold, expected):
    assert verdict(comparison(low, high), Target("a", "b", threshold)) == expected


def test_the_verdict_reads_the_interval_the_target_names():
    row = comparison(-1.0, 1.0, boot=(0.05, 2.2))
    assert verdict(row, Target("a", "b", 0.0, "seed_t")) == "undecided"
    assert verdict(row, Target("a", "b", 0.0, "boot")) == "met"
    assert verdict(row, Target("a", "b", 0.0, "group_boot")) == "not measured"  # no film bootstrap in this row
    assert verdict(None, Target("a", "b")) == "not measured"                    # the rows share no seed


def test_an_unknown_interval_is_refused_by_name():
    with pytest.raises(ValueError, match="interval: expected one of seed_t, boot, group_boot, got 'films'"):
        Target("a", "b", 0.0, "films")


def test_undecided_targets_rerun_both_rows_once_in_order():
    checks = [(Target("aug ×1", "plain"), "undecided"), (Target("multi", "single"), "met"),
              (Target("multi + aug", "plain"), "undecided"), (Target("x", "y"), "not measured")]
    assert rows_to_rerun(checks) == ["aug ×1", "plain", "multi + aug"]
    assert rows_to_rerun([(Target("a", "b"), "missed")]) == []


def test_new_seeds_follow_every_seed_taken():
    assert next_seeds([0, 1, 2, 3, 4], 5) == [5, 6, 7, 8, 9]
    assert next_seeds([3, 0, 7], 2) == [8, 9]
    assert next_seeds([], 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="count: expected at least 1"):
        next_seeds([0], 0)
