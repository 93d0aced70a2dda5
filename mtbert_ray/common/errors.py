"""User-facing errors: one clear line naming the field or file and what was expected.

Command-line entry points (``mtbert_ray.cli``) catch ``MTBertError`` and print ``error: <message>`` with exit
status 2 (``--debug`` shows the traceback instead).
"""
from __future__ import annotations


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


class ResourcesError(MTBertError):
    """The cluster cannot give a stage what it asks for (too small a plan, or a wait that ran out)."""


class NonFiniteLossError(MTBertError):
    """A training stage's loss became NaN or infinite (the stage stops; its last good checkpoint is kept)."""
