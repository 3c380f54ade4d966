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
