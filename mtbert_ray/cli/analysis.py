"""``mtbert-ray analysis SWEEP [PARTS ...] [--out DIR] [--archive DIR]`` (or ``python -m mtbert_ray.analysis``): the
tables (Markdown, CSV), plots and best trial of a finished (or running) sweep (``study.analysis``), and its results
archive (``study.archive``).
"""
from __future__ import annotations

import argparse
import sys

from mtbert_ray.cli.common import add_debug_flag, command_main
from mtbert_ray.common.errors import ConfigError

NAME = "analysis"
HELP = "Tables and plots of a finished (or running) sweep; --archive writes its results archive."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="sweep folder (<storage>/sweeps/<name>)")
    parser.add_argument("parts", nargs="*", help="further sweep folders of the same study (its rows run later under other names)")
    parser.add_argument("--out", default=None, help="output folder (default <results>/analysis)")
    parser.add_argument("--archive", default=None, metavar="DIR",
                        help="also write DIR/<name>.tar.gz of each sweep folder: its results and predictions without the "
                             "models, to commit or move (mtbert_ray.study.archive)")
    parser.add_argument("--group-column", default=None, metavar="COLUMN",
                        help="a column of the data's test file naming each sentence's group (a film, a news id): the "
                             "comparisons also bootstrap whole groups (default: the study's analysis.group_column)")
    frontier = parser.add_argument_group("which student to ship (the accuracy–latency frontier)")
    frontier.add_argument("--frontier", action="store_true",
                          help="export every finished student to ONNX / int8 (gated on validation), time each student and its "
                               "best teacher side by side, and write analysis/frontier/ (table, CSV, plot with the Pareto front)")
    frontier.add_argument("--runtimes", nargs="+", default=["torch", "onnx", "onnx-int8"], choices=["torch", "onnx", "onnx-int8"])
    frontier.add_argument("--threads", type=int, default=1, help="intra-op threads of every runtime while timed (default 1)")
    frontier.add_argument("--latency-budget-ms", type=float, default=None,
                          help="pick the student with the best validation accuracy whose batch-1 p50 is within this budget, "
                               "and export it to analysis/frontier/chosen/ (implies --frontier)")
    frontier.add_argument("--min-retention", type=float, default=None,
                          help="… and whose validation accuracy is at least this share of its best teacher's (e.g. 0.97)")
    add_debug_flag(parser)


def run(args: argparse.Namespace) -> int:
    # deferred: pandas, matplotlib and Ray Tune's reader take seconds to import; --help stays instant
    from mtbert_ray.study.analysis import write_report
    from mtbert_ray.study.archive import archive_sweep

    report = write_report(args.results, args.out, tuple(args.parts), group_column=args.group_column)
    print(report.table_markdown)
    if report.best:
        print(f"best trial {report.best['trial_id']} (by {report.best['selected_by']}): validation {report.best['validation']}  "
              f"test {report.best['test']}  student {report.best['student_dir']}")
    print(f"written: {', '.join(str(f) for f in report.files)}")
    if args.archive:
        for folder in (args.results, *args.parts):
            print(f"archived: {archive_sweep(folder, args.archive)}")
    if args.frontier or args.latency_budget_ms is not None or args.min_retention is not None:
        from mtbert_ray.study.frontier import build_frontier, export_choice, pick

        if args.threads < 1:
            raise ConfigError(f"--threads: expected a positive integer, got {args.threads}")
        table = build_frontier(args.results, args.runtimes, threads=args.threads)
        out = report.out_dir / "frontier"
        print((out / "frontier.md").read_text())
        print(f"written: {out / 'frontier.csv'}, {out / 'frontier.png'}")
        if args.latency_budget_ms is not None or args.min_retention is not None:
            chosen, why = export_choice(pick(table, args.latency_budget_ms, args.min_retention), table, out / "chosen",
                                        args.latency_budget_ms, args.min_retention)
            print(f"[mtbert] chose {why}; exported to {chosen}")
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.analysis", argv)


if __name__ == "__main__":
    main()
