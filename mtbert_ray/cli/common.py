"""What every command of the ``mtbert-ray`` CLI shares: its flags, its start-up and how it ends.

A command module (``cli/run.py``, ``cli/sweep.py``, …) declares ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; ``cli/main.py`` makes them the subcommands of ``mtbert-ray`` and each module's ``main`` the
stand-alone ``python -m mtbert_ray.<name>`` form, both from the same parser. A user error (``MTBertError``) ends the
command with one line on stderr and exit status 2 (``--debug`` shows the traceback); Ctrl-C with 130.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Callable
from types import ModuleType
from typing import NoReturn

from mtbert_ray.common.errors import MTBertError

EXIT_USAGE = 2


def add_stage_flags(parser) -> None:
    """``--verify`` and ``--debug``, the flags of every command that runs stages (``run``, ``sweep``)."""
    parser.add_argument("--verify", action="store_true", help="re-hash every reused artefact (sizes and row counts are always checked)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def start_cli(debug: bool) -> None:
    """What a stage-running command sets before it starts: logging (INFO with ``--debug``), no Ray Data progress bars."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(message)s")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def run_cli(main: Callable[[], int | None], debug: bool) -> NoReturn:
    """Run a CLI body: user errors → one line on stderr and exit 2; ``debug`` re-raises them."""
    try:
        code = main()
    except MTBertError as exc:
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except OSError as exc:  # a write the user's system refused (disk full, permissions) — not a bug report
        if debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)




def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser(command: ModuleType, prog: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The parser of ``command`` (a module of ``mtbert_ray.cli``): a new one named ``prog``, or ``parser`` filled in."""
    parser = parser or argparse.ArgumentParser(prog=prog, description=command.HELP)
    command.add_arguments(parser)
    return parser


def run_command(command: ModuleType, args: argparse.Namespace) -> NoReturn:
    """Run a parsed command: stage-running commands set up logging first (``start_cli``); ends the process."""
    if getattr(command, "STARTS_STAGES", False):
        start_cli(args.debug)
    run_cli(lambda: command.run(args), getattr(args, "debug", False))


def command_main(command: ModuleType, prog: str, argv: list[str] | None = None) -> NoReturn:
    """``python -m mtbert_ray.<name>`` of a command module: parse ``argv`` and run it."""
    run_command(command, build_parser(command, prog).parse_args(argv))
