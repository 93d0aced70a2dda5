"""``mtbert-ray sweep --space tune_spaces/NAME.yaml [--set k=v ...] [--storage DIR] [--name NAME] [--num-samples N]
[--resume] [--upload URI] [--dry-run]`` (or ``python -m mtbert_ray.sweep``, the form ``ray job submit`` runs): a study
on Ray Tune (``study.sweep``), then its analysis (``study.analysis``); ``--dry-run`` prints the plan (``study.dryrun``).
"""
from __future__ import annotations

import argparse
import sys

from mtbert_ray.cli.common import add_stage_flags, command_main
from mtbert_ray.common.errors import ConfigError
from mtbert_ray.config.space import load_space
from mtbert_ray.study.record import ANALYSIS_DIR
from mtbert_ray.study.upload import check_upload_uri, upload_sweep

NAME = "sweep"
HELP = "Run an MT-BERT study with Ray Tune (a space file of tune_spaces/), then its tables and plots."
STARTS_STAGES = True
INTERRUPTED_EXIT = 130  # the shell's code for a run stopped by Ctrl-C


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--space", help="space file (tune_spaces/*.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override: search.* / analysis.* / name set the study, any other key the base experiment")
    parser.add_argument("--storage", default=None, help="results root (default $MTBERT_RAY_STORAGE or ~/mtbert_results)")
    parser.add_argument("--name", default=None, help="sweep name (default: the space file's name)")
    parser.add_argument("--num-samples", type=int, default=None, help="trials to sample (grid: repeats of the grid)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted sweep (finished trials are kept)")
    parser.add_argument("--upload", default=None, metavar="URI",
                        help="when the sweep ends, copy its folder and best student to URI/<name> (s3://, gs://, file://)")
    parser.add_argument("--mlflow", default=None, metavar="URI",
                        help="also log every trial's parameters and metrics to MLflow at URI (e.g. sqlite:///mlflow.db, http://host:5000)")
    parser.add_argument("--wait-for-resources", action="store_true",
                        help="place the plan on the whole cluster, not on what other work leaves free, and let trials wait "
                             "for that work (a notice every minute while they do)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the trials, shared co-finetuning runs and caches (with sizes) and resources; run nothing")
    add_stage_flags(parser)


def run(args: argparse.Namespace) -> int:
    # deferred: the study layer loads Ray Tune and torch (seconds); --help and argument errors stay instant
    from mtbert_ray.store.files import resolve_storage
    from mtbert_ray.study.analysis import write_report
    from mtbert_ray.study.dryrun import plan
    from mtbert_ray.study.sweep import card_with_seeds, checked_name, run_sweep, tracking_callbacks, trial_counts

    if not args.space and not args.resume:
        raise ConfigError("--space: a space file is required (or --resume --name NAME)")
    if args.num_samples is not None and args.num_samples < 1:
        raise ConfigError(f"--num-samples: expected a positive integer, got {args.num_samples}")
    if args.upload:
        check_upload_uri(args.upload)
    if args.dry_run:
        if args.resume:
            raise ConfigError("--dry-run: give --space (a resumed sweep runs what is left of its trials)")
        space = load_space(args.space, args.set)
        if args.num_samples is not None:
            space.spec.search.num_samples = args.num_samples
        checked_name(args.name or space.spec.name, "--name" if args.name else f"{space.source}: name")
        print(plan(space, resolve_storage(args.storage, create=False) / "stages"))
        return 0
    name = args.name
    if args.resume and not name and args.space:
        name = load_space(args.space, args.set).spec.name
    if args.mlflow:
        tracking_callbacks("check", args.mlflow)  # installed? (one line, exit 2, before anything runs)
    _grid, experiment_dir = run_sweep(args.space, args.set, args.storage, name, args.num_samples, args.resume, args.mlflow,
                                      args.wait_for_resources)
    finished, unfinished, errored = trial_counts(experiment_dir)  # what Tune recorded, not the grid it hands back
    resume = f"python -m mtbert_ray.sweep --resume --name {experiment_dir.name}" + (
        f" --storage {args.storage}" if args.storage else "")
    try:
        report = write_report(experiment_dir, experiment_dir / ANALYSIS_DIR)
        card_with_seeds(report)
    except KeyboardInterrupt:
        what = (f"{finished} trials finished, {unfinished} unfinished ({errored} errored)")
        print(f"[mtbert] sweep stopped during its analysis: {what}; results so far {experiment_dir}; "
              + (f"continue it with: {resume}" if unfinished else f"write the tables with: mtbert-ray analysis {experiment_dir}"),
              flush=True)
        return INTERRUPTED_EXIT
    print(report.table_markdown)
    best = report.best
    if unfinished:  # stopped (Ctrl-C, a signal): Tune saved its state; the finished trials are kept
        print(f"[mtbert] sweep stopped before its end: {finished} trials finished, {unfinished} unfinished "
              f"({errored} errored); results so far {experiment_dir}; continue it with: {resume}", flush=True)
        return INTERRUPTED_EXIT
    print(
        f"[mtbert] sweep finished: {finished + errored} trials ({errored} errored); results {experiment_dir}; "
        f"tables and plots {report.out_dir}; best student {best.get('student_dir') if best else 'none'}",
        flush=True,
    )
    if args.upload:
        upload_sweep(experiment_dir, args.upload)
    return 1 if errored else 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.sweep", argv)


if __name__ == "__main__":
    main()
