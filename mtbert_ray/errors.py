"""User-facing errors: one clear line naming the field or file and what was expected.

Command-line entry points catch ``MTBertError`` and print ``error: <message>`` with exit
status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import NoReturn


class MTBertError(Exception):
    """Base class of every error a user can fix (bad config, data, space file or argument)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always exactly one line


class ConfigError(MTBertError, ValueError):
    """An experiment config, space file or command-line override is invalid."""


class DataError(MTBertError, ValueError):
    """A dataset file, split, column or value is invalid."""


class ResultsError(MTBertError):
    """A results or cache directory cannot be used (not writable, holds no experiment, …)."""


EXIT_USAGE = 2


def add_stage_flags(parser) -> None:
    """``--verify`` and ``--debug``, the flags of every command that runs stages (``run``, ``sweep``)."""
    parser.add_argument("--verify", action="store_true", help="re-hash every reused artefact (sizes and row counts are always checked)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def start_cli(debug: bool) -> None:
    """What a stage-running command sets before it starts: logging (INFO with ``--debug``), no Ray Data progress bars."""
    import logging
    import os

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


class ResourcesError(MTBertError):
    """The cluster cannot give a stage what it asks for (too small a plan, or a wait that ran out)."""


class NonFiniteLossError(MTBertError):
    """A training stage's loss became NaN or infinite (the stage stops; its last good checkpoint is kept)."""
