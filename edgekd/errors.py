"""Errors a user can cause. The CLI prints them as one line; everything else is a bug."""


class EdgekdError(Exception):
    """A problem with the user's input, files or environment, with the fix in the message."""


class RunIncomplete(EdgekdError):
    """The run finished its frames, but not the whole job (a signal, a lost output): a non-zero exit."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
