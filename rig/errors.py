"""Errors the user can fix; the CLI reports them as plain lines instead of a traceback."""


class UserError(Exception):
    """A problem in the user's input (settings file, command line, missing device).

    The command line prints ``str(error)`` to stderr (one line per problem) and exits with status 2,
    because a traceback would only hide the sentence that tells the user what to change.
    """

    @property
    def problems(self) -> list[str]:
        """One entry per problem; subclasses that collect several problems override this."""
        return str(self).splitlines() or [type(self).__name__]


class SessionFault(UserError):
    """A fault that ended a running session early (the Bpod lost, the imaging source silent, the disk
    full), raised once everything received was recorded; `reason` is the session's end_reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
