"""Errors of the command-line tools."""


class CommandError(Exception):
    """A failed command; `weir` prints its message as one line and exits 1."""
