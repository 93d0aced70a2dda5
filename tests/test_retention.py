"""Retention targets from a frontier table: a row's seeds pooled, a row qualifies by depth or speed, met on the mean."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from mtbert_ray.study.retention import (
    FRONTIER_CSV,
    R1,
    R2,
    RetentionTarget,
    judge,
    read_frontiers,
    retention_by_row,
    short_of_seeds,
    strongest_teacher,
)


def frontier(rows: list[tuple[str, int, float, float]], runtime: str = "torch") -> pd.DataFrame:
    """(variant, student layers, retention, speed-up) per trial, against a 12-layer teacher."""
    return pd.DataFrame([{"trial_id": f"t{i}", "runtime": runtime, "kept": True, "variant": v, "layers": layers,
                          "best_teacher": "mpnet", "best_teacher_layers": 12, "retention": r, "speedup": s}
                         for i, (v, layers, r, s) in enumerate(rows)])


def five_seeds(rows: list[tuple[str, int, float, float]]) -> list[tuple[str, int, float, float]]:
    """Each trial five times: a row of the five seeds R1 and R2 ask for."""
    return [row for row in rows for _ in range(5)]


def test_a_rows_seeds_are_pooled_into_a_mean_with_its_t_interval_and_the_median_speed_up():
    table = frontier([("2-layer", 2, 0.932, 17.5), ("2-layer", 2, 0.935, 17.3), ("2-layer", 2, 0.934, 16.1),
                      ("6-layer", 6, 0.95, 5.2)])
    summary = retention_by_row(table).set_index("row")
    two = summary.loc["2-layer"]
    assert two["n"] == 3 and two["retention"] == pytest.approx(0.9336667, abs=1e-6)
    # t_{2} = 4.303, sd = 0.0015275, half-width = 4.303 · 0.0015275 / √3 = 0.003795
    assert two["retention_high"] - two["retention"] == pytest.approx(0.003795, abs=2e-5)
    assert two["speedup"] == 17.3 and two["best_teacher_layers"] == 12
    assert summary.loc["6-layer", "n"] == 1 and math.isnan(summary.loc["6-layer", "retention_low"])


def test_r1_counts_layers_and_r2_speed_and_each_is_judged_on_the_best_qualifying_row():
    summary = retention_by_row(frontier(five_seeds([("2-layer", 2, 0.934, 17.0), ("6-layer", 6, 0.951, 5.3),
                                                    ("8-layer", 8, 0.99, 1.4)])))
    met, eligible = judge(summary, R1)
    assert met is False and list(eligible["row"]) == ["6-layer", "2-layer"]   # 8 of 12 layers is more than half
    met, eligible = judge(summary, R2)
    assert met is True and eligible["row"].iloc[0] == "6-layer"                # 95.1 % ≥ 94 % at 5.3×
    met, eligible = judge(summary, RetentionTarget("fast", 0.9, min_speedup=20.0))
    assert met is None and eligible.empty                                       # no row that fast: not measured


def test_targets_are_judged_against_the_strongest_teacher_not_a_weak_one_a_student_matches():
    """A 2-layer student of MiniLM-L6 alone keeps 101 % of L6 (78.4 % validation); the study's strongest teacher is
    MPNet (87.9 %): r1 is judged on the rows MPNet teaches, where the 6-layer student keeps 95.4 %."""
    table = frontier(five_seeds([("6-layer", 6, 0.954, 6.2), ("6-layer", 6, 0.953, 6.1)]))
    table["val_accuracy"], table["val_retention"] = 0.8264, 0.94          # teacher val = 0.8264 / 0.94 = 0.879
    weak = frontier(five_seeds([("{L6} 2-layer", 2, 1.01, 2.9)])).assign(best_teacher="minilm", best_teacher_layers=6,
                                                             val_accuracy=0.7998, val_retention=1.02)   # 0.784
    summary = retention_by_row(pd.concat([weak, table], ignore_index=True))
    assert summary.set_index("row").loc["6-layer", "best_teacher_val_accuracy"] == pytest.approx(0.879, abs=1e-3)
    assert strongest_teacher(summary) == "mpnet"
    assert judge(summary, R1)[0] is True                                   # unrestricted, the weak row would pass
    met, eligible = judge(summary, R1, teacher="mpnet")
    assert met is False and list(eligible["row"]) == ["6-layer"]
    assert judge(summary, R2, teacher="minilm")[0] is None                 # 2.9× is not 4×: nothing qualifies
    assert strongest_teacher(retention_by_row(frontier([]))) is None


def test_the_teachers_validation_accuracy_is_read_from_the_frontier_and_derived_only_for_older_tables():
    """A frontier written today records the teacher's validation accuracy; one written before that column had only
    the student's validation accuracy and val_retention, from which the teacher's is student ÷ retention."""
    table = frontier([("6-layer", 6, 0.954, 6.2), ("6-layer", 6, 0.953, 6.1)]).assign(
        val_accuracy=0.80, val_retention=0.90, best_teacher_val_accuracy=[0.870, 0.872])  # recorded, not 0.80 / 0.90
    assert retention_by_row(table)["best_teacher_val_accuracy"].iloc[0] == pytest.approx(0.871)
    older = table.drop(columns="best_teacher_val_accuracy")
    assert retention_by_row(older)["best_teacher_val_accuracy"].iloc[0] == pytest.approx(0.80 / 0.90)
    assert math.isnan(retention_by_row(frontier([("6-layer", 6, 0.95, 6.2)]))["best_teacher_val_accuracy"].iloc[0])


def test_of_three_teacher_sets_the_strongest_teacher_is_the_one_best_on_validation_wherever_its_row_stands():
    """Rows taught by L3, e5 and MPNet, listed weakest-retention last: the judge reads e5's rows when e5 is the
    best teacher on validation, and r2 is then decided on e5's 4-layer student alone."""
    table = pd.concat([
        frontier(five_seeds([("{L3} 2-layer", 2, 1.03, 3.0)])).assign(best_teacher="minilm-l3", best_teacher_layers=3,
                                                                       best_teacher_val_accuracy=0.74),
        frontier(five_seeds([("{MPNet} 4-layer", 4, 0.97, 8.7)])).assign(best_teacher_val_accuracy=0.861),
        frontier(five_seeds([("{e5} 4-layer", 4, 0.93, 4.4)])).assign(best_teacher="e5", best_teacher_val_accuracy=0.874),
    ], ignore_index=True)
    summary = retention_by_row(table)
    assert strongest_teacher(summary) == "e5"
    met, eligible = judge(summary, R2, teacher=strongest_teacher(summary))
    assert met is False and list(eligible["row"]) == ["{e5} 4-layer"]        # 93 % < 94 %, MPNet's 97 % not counted


def test_other_runtimes_and_students_the_gate_removed_are_left_out():
    table = pd.concat([frontier([("2-layer", 2, 0.93, 17.0)]), frontier([("2-layer", 2, 0.99, 30.0)], runtime="onnx")])
    table.loc[len(table)] = {**table.iloc[0].to_dict(), "trial_id": "gone", "kept": False, "retention": 0.5}
    summary = retention_by_row(table.reset_index(drop=True))
    assert summary["n"].tolist() == [1] and summary["retention"].tolist() == [0.93]


def test_a_frontier_without_the_row_column_is_refused_by_name():
    with pytest.raises(KeyError, match="rows: the frontier table has no column 'teacher_set'"):
        retention_by_row(frontier([("2-layer", 2, 0.93, 17.0)]), rows="teacher_set")


def test_frontiers_are_read_from_the_sweeps_that_have_one(tmp_path):
    with_one, without = tmp_path / "a", tmp_path / "b"
    (with_one / FRONTIER_CSV).parent.mkdir(parents=True)
    without.mkdir()
    frontier([("2-layer", 2, 0.93, 17.0)]).to_csv(with_one / FRONTIER_CSV, index=False)
    assert len(read_frontiers([with_one, without])) == 1 and read_frontiers([without]).empty
    assert read_frontiers([with_one])["part"].tolist() == ["a"]
    assert retention_by_row(read_frontiers([with_one]))["parts"].tolist() == ["a"]                # where to add seeds
    assert R1.describe() == "(r1) a student ≤ 0.5× the teacher's layers keeps ≥ 97% of its best teacher (on ≥ 5 seeds)"
    assert RetentionTarget("r", 0.9, min_speedup=2.0).describe() == "(r) a student ≥ 2× the teacher's speed keeps ≥ 90% of its best teacher"


def test_a_row_of_fewer_seeds_than_the_target_asks_is_listed_not_judged():
    """One seed of a 6-layer student keeping 98 % does not meet r1 (five seeds): the verdict stays on the five-seed
    row at 95.4 %, and the one-seed row is listed as short of seeds."""
    summary = retention_by_row(frontier(five_seeds([("6-layer MiniLM", 6, 0.954, 6.2)]) + [("6-layer MPNet", 6, 0.98, 2.0)]))
    met, eligible = judge(summary, R1, teacher="mpnet")
    assert met is False and list(eligible["row"]) == ["6-layer MiniLM"]
    short = short_of_seeds(summary, R1, teacher="mpnet")
    assert list(short["row"]) == ["6-layer MPNet"] and short["n"].tolist() == [1]
    assert short_of_seeds(summary, R2, teacher="mpnet").empty            # 2× is not 4×: it would not qualify anyway
    assert judge(summary, RetentionTarget("r1 any seeds", 0.97, max_depth_ratio=0.5), teacher="mpnet")[0] is True
    only_short = retention_by_row(frontier([("6-layer MPNet", 6, 0.98, 2.0)]))
    assert judge(only_short, R1)[0] is None and len(short_of_seeds(only_short, R1)) == 1
    assert short_of_seeds(retention_by_row(frontier([])), R1).empty
