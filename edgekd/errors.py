"""Errors a user can cause. The CLI prints them as one line; everything else is a bug."""


class EdgekdError(Exception):
    """A problem with the user's input, files or environment, with the fix in the message."""
