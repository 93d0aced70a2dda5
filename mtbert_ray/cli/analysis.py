"""``mtbert-ray analysis SWEEP [PARTS ...] [--out DIR] [--archive DIR]`` (or ``python -m mtbert_ray.analysis``): the
tables (Markdown, CSV), plots and best trial of a finished (or running) sweep (``study.analysis``), and its results
archive (``study.archive``).
"""
from __future__ import annotations

import argparse
import sys

from mtbert_ray.cli.common import add_debug_flag, command_main

NAME = "analysis"
HELP = "Tables and plots of a finished (or running) sweep; --archive writes its results archive."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", help="sweep folder (<storage>/sweeps/<name>)")
    parser.add_argument("parts", nargs="*", help="further sweep folders of the same study (its rows run later under other names)")
    parser.add_argument("--out", default=None, help="output folder (default <results>/analysis)")
    parser.add_argument("--archive", default=None, metavar="DIR",
                        help="also write DIR/<name>.tar.gz of each sweep folder: its results and predictions without the "
                             "models, to commit or move (mtbert_ray.study.archive)")
    add_debug_flag(parser)


def run(args: argparse.Namespace) -> int:
    # deferred: pandas, matplotlib and Ray Tune's reader take seconds to import; --help stays instant
    from mtbert_ray.study.analysis import write_report
    from mtbert_ray.study.archive import archive_sweep

    report = write_report(args.results, args.out, tuple(args.parts))
    print(report.table_markdown)
    if report.best:
        print(f"best trial {report.best['trial_id']} (by {report.best['selected_by']}): validation {report.best['validation']}  "
              f"test {report.best['test']}  student {report.best['student_dir']}")
    print(f"written: {', '.join(str(f) for f in report.files)}")
    if args.archive:
        for folder in (args.results, *args.parts):
            print(f"archived: {archive_sweep(folder, args.archive)}")
    return 0


def main(argv: list[str] | None = None) -> None:
    command_main(sys.modules[__name__], "python -m mtbert_ray.analysis", argv)


if __name__ == "__main__":
    main()
