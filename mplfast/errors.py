"""Errors that mean "the user asked for something invalid", as opposed to bugs.

The CLI prints a ``UserError`` as one line on stderr and exits with status 2; anything else is a
bug and keeps its traceback.
"""


class UserError(ValueError):
    """An invalid request from the user: bad path, option, value or data."""
