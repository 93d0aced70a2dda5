"""Distillation quality: does a stronger teacher give a stronger student, and do several beat the best one?

The study is ``benchmarks/quality.yaml`` run through ``python -m mtbert_ray.sweep`` and
``mtbert_ray.study.analysis`` (nothing here trains): rt_polarity with 4,000 training sentences, students selected
on validation and scored on the **test** split, 3 distillation seeds per row from teachers co-finetuned once
per teacher set; rows: students of {L6}, {L3}, {MPNet}, {L6, L3}, {L6, MPNet}, {L6, L3, MPNet} (MT-BERT), the
average and weighted ensemble baselines, MT-BERT minus each loss, the hidden loss switched off for the rows
with MPNet, task-only fine-tuning of the same student, and the {MPNet} student with the earlier starts of W
(random) and of the student's head (random) — the mechanisms measured.

MPNet-base comes from ``<shared>/tools/seed_mpnet.sh`` (``--shared``, default ``$MTBERT_SHARED`` or ../shared),
which also links the two MiniLMs into the hub cache it builds. ~6 h on the 2-core development machine
(estimated, not run in one piece: 78 trials of 2.5 min, or 5 min with the MPNet-family student, 8
co-finetunings, 5 of them with MPNet at 15–19 min, and their caches); an interrupted study continues with
``--resume``; rows can also be run as further parts
(``--name quality-b --variants ROW ...``) and analysed together (``--name quality --parts quality-b --analysis-only``).

The targets are paired differences on test (a − b over the seeds both rows finished, 95 % t-interval):
(a) {MPNet} − {L6} ≥ 0; (b) {L6, L3, MPNet} − the best single-teacher row ≥ 0 and − each ensemble ≥ 0;
(c) every row with the hidden loss − its twin without it ≥ 0. They are scored twice: with the default settings,
and through the mechanisms measured as rows of their own (the hidden loss only from teachers of the student's
tokenizer, ``loss.hidden_teachers: same_tokenizer``, or only from L6, whose first layers the student is; the hidden
loss at a tenth of the weight of the others, ``loss.hidden_weight: 0.1``; a student
from MPNet's own first layers, distilled from {MPNet} and — MT-BERT — from all three, against the best
single-teacher student of either student and the ensembles of its own student).

Last line: ``quality_targets_met=<met>/<measured> measured (of <total>); with_mechanisms=<met>/<measured> measured (of <total>)``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import yaml
from _common import REPO, header, storage, study_parser

ALL = "{L6, L3, MPNet}"
SINGLES = ["{L6}", "{L3}", "{MPNet}"]
HIDDEN_TWINS = [(ALL, f"{ALL} - hidden loss"), ("{MPNet}", "{MPNet} - hidden loss"), ("{L6, MPNet}", "{L6, MPNet} - hidden loss")]
SAME_TOKENIZER = "hidden loss from the student's tokenizer"  # loss.hidden_teachers: same_tokenizer
FROM_L6 = "hidden loss from L6 only"  # loss.hidden_teachers: [L6], the teacher the student's layers come from
MPNET_STUDENT = "{MPNet}, MPNet student"  # a 2-layer student from MPNet-base's own first layers
HIDDEN_WEIGHT = "hidden loss weight 0.1"  # loss.hidden_weight: 0.1, the other terms at 1
ALL_MPNET_STUDENT = f"{ALL}, MPNet student"  # MT-BERT with that student (a 768-wide co-finetuned head)


def mpnet_hub(shared: Path) -> Path:
    """The hub cache with MPNet-base and the MiniLMs, built once by the shared seeding script."""
    out = storage() / "mpnet"
    hub = out / "hub"
    if not (hub / "models--sentence-transformers--all-mpnet-base-v2").is_dir():
        subprocess.run(["bash", str(shared / "tools" / "seed_mpnet.sh"), str(out), sys.executable], check=True)
    return hub


def main() -> None:
    args = study_parser(__doc__.splitlines()[0], "quality").parse_args()
    header("quality: teacher sets, ensembles and ablations on rt_polarity (4,000 sentences), test split, 3 seeds")
    results = storage() / "quality"
    env = {**os.environ, "HF_HUB_CACHE": str(mpnet_hub(Path(args.shared))), "HF_HUB_OFFLINE": "1"}
    if not args.analysis_only:
        command = [sys.executable, "-m", "mtbert_ray.sweep", "--storage", str(results), "--name", args.name]
        command += ["--resume"] if args.resume else ["--space", str(REPO / "benchmarks" / "quality.yaml")]
        if args.variants and not args.resume:
            # a part's own comparisons would name rows it does not run; the study's are the first part's
            command += ["--set", f"space.variant={{grid: {json.dumps(args.variants)}}}", "--set", "analysis.comparisons=[]"]
        subprocess.run(command, cwd=REPO, env=env, check=True)

    from mtbert_ray.study.analysis import load_study, write_report

    study_dir = results / "sweeps" / args.name
    parts = tuple(results / "sweeps" / name for name in args.parts)
    # the pairs of the current space file: rows added by later parts are compared too
    spec = yaml.safe_load((REPO / "benchmarks" / "quality.yaml").read_text())
    report = write_report(study_dir, parts=parts, comparisons=[tuple(c) for c in spec["analysis"]["comparisons"]])
    print(report.table_markdown)
    table = report.table.set_index("row")
    diffs = report.comparisons.set_index(["a", "b"])

    def diff(a: str, b: str) -> float:
        return float(diffs.loc[(a, b), "accuracy_diff"]) if (a, b) in diffs.index else float("nan")

    def best_of(rows: list[str]) -> str:
        """The row of ``rows`` with the best mean test accuracy (a part analysed alone may hold none of them)."""
        run = [r for r in rows if r in table.index and not math.isnan(table.loc[r, "test_accuracy_mean"])]
        return max(run, key=lambda r: table.loc[r, "test_accuracy_mean"]) if run else "(no single-teacher row run)"

    best_single = best_of(SINGLES)
    targets = {
        "(a) {MPNet} − {L6}": diff("{MPNet}", "{L6}"),
        f"(b) {ALL} − best single {best_single}": diff(ALL, best_single),
        f"(b) {ALL} − Average Ensemble": diff(ALL, "Average Ensemble"),
        f"(b) {ALL} − Weighted Ensemble": diff(ALL, "Weighted Ensemble"),
        **{f"(c) {a} − {b}": diff(a, b) for a, b in HIDDEN_TWINS},
    }
    # the same targets reached through the mechanisms (rows of their own; the defaults above are unchanged)
    with_mechanisms = {f"(a) {MPNET_STUDENT} − {{L6}}": diff(MPNET_STUDENT, "{L6}")}
    for row in (f"{ALL}, {SAME_TOKENIZER}", f"{ALL}, {FROM_L6}", f"{ALL}, {HIDDEN_WEIGHT}"):
        with_mechanisms.update({f"(b) {row} − {b}": diff(row, b) for b in (best_single, "Average Ensemble", "Weighted Ensemble")})
        with_mechanisms[f"(c) {row} − {ALL} - hidden loss"] = diff(row, f"{ALL} - hidden loss")
    with_mechanisms[f"(c) {{L6, MPNet}}, {SAME_TOKENIZER} − {{L6, MPNet}} - hidden loss"] = \
        diff(f"{{L6, MPNet}}, {SAME_TOKENIZER}", "{L6, MPNet} - hidden loss")
    # MT-BERT with the MPNet-family student against the best single-teacher student of either student and
    # against the ensembles of its own student and teachers
    best_student = best_of([*SINGLES, MPNET_STUDENT])
    with_mechanisms[f"(b) {ALL_MPNET_STUDENT} − best single {best_student}"] = diff(ALL_MPNET_STUDENT, best_student)
    for ensemble in ("Average Ensemble", "Weighted Ensemble"):
        with_mechanisms[f"(b) {ALL_MPNET_STUDENT} − {ensemble}, MPNet student"] = \
            diff(ALL_MPNET_STUDENT, f"{ensemble}, MPNet student")
    met, measured = print_targets("targets, default settings", targets)
    met_m, measured_m = print_targets("targets through the mechanisms", with_mechanisms)
    trials = load_study(study_dir, *parts).trials
    print_teachers(trials)
    print(f"trials: {len(trials)} ({int(trials['finished'].sum())} finished); tables: {report.out_dir}")
    print(f"quality_targets_met={met}/{measured} measured (of {len(targets)}); "
          f"with_mechanisms={met_m}/{measured_m} measured (of {len(with_mechanisms)})")


def print_targets(title: str, targets: dict[str, float]) -> tuple[int, int]:
    """One line per target (a paired test difference ≥ 0 meets it); (met, measured)."""
    print(f"{title}:")
    met = measured = 0
    for name, value in targets.items():
        if math.isnan(value):  # a row not (yet) run, or no seed in common
            print(f"  {name}: not measured")
            continue
        measured += 1
        met += value >= 0
        print(f"  {name}: {value:+.2f} points test accuracy → {'met' if value >= 0 else 'missed'}")
    return met, measured


def print_teachers(trials) -> None:
    """Each co-finetuning run's teachers, validation / test accuracy (from the first finished run's result.json that
    used it); a teacher set co-finetuned twice (another head width) is listed twice, with its key."""
    seen = set()
    for _, trial in trials[trials["finished"]].iterrows():
        result = json.loads((Path(trial["student_dir"]).parent / "result.json").read_text())
        stage = result["stages"]["cofinetune"]
        if stage["key"] in seen:
            continue
        seen.add(stage["key"])
        scores = ", ".join(f"{name.split('/')[-1]} {100 * t['accuracy']:.1f} / {100 * t['test']['accuracy']:.1f}"
                           for name, t in stage["teachers"].items())
        print(f"teachers (validation / test accuracy %): {scores}  [cofinetune/{stage['key']}]")

if __name__ == "__main__":
    main()
