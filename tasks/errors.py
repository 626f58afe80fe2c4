"""Errors a user can act on.

Anything raised as :class:`UpdraftError` is printed by the CLI as one line on stderr
with a non-zero exit and no traceback, so its message must say what to fix.
Everything else is a bug in updraft and keeps its traceback.
"""

from __future__ import annotations


class UpdraftError(Exception):
    """A problem with the user's input or environment, with a message that says what to fix."""


class ConfigError(UpdraftError):
    """The pipeline config file is missing, malformed or inconsistent."""


class ContractError(UpdraftError):
    """The data contract cannot be read or does not fit the config."""


class DataError(UpdraftError):
    """The data itself cannot be used: no files, nothing valid, unusable labels."""


class TargetError(UpdraftError):
    """The AWS target cannot be reached or lacks something updraft needs (a bucket, credentials)."""


class StageError(UpdraftError):
    """A stage failed for a reason the user can see (a training job's failure text, a dead endpoint)."""
