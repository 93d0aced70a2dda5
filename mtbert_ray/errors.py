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
