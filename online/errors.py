"""The online module's errors: input it skips, and problems that stop it with one line for the user."""

from __future__ import annotations


class MalformedInput(ValueError):
    """An event or frame the pipeline cannot use; the message says what is wrong. Count it and go on."""


class UserInputError(Exception):
    """Bad input from the user (settings, ROI files, paths): one sentence on stderr, exit status 2."""


class PipelineError(RuntimeError):
    """The pipeline cannot start with what it was given (ROIs of another frame size, no ROI found)."""
