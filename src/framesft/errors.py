"""User-facing errors.

Anything a user can fix (a bad file, a bad config key, a wrong path) is raised as a `FrameSFTError`.
The CLI prints its message without a traceback and exits with status 2; `--debug` shows the traceback.
"""

from __future__ import annotations


class FrameSFTError(Exception):
    """An error caused by the user's input, with a message that says what, where and how to fix it."""

    exit_code = 2


class ConfigError(FrameSFTError):
    """The YAML config or a `--set` override is invalid."""


class DataError(FrameSFTError):
    """A data file cannot be read or fails validation."""


class RunFolderError(FrameSFTError):
    """A run folder is missing, incomplete, or would be overwritten."""


class TrainingInterrupted(FrameSFTError):
    """SIGINT/SIGTERM stopped training after a checkpoint was saved."""

    exit_code = 130
