"""The one error type the core raises; the CLI turns it into a one-line message and exit code 2."""


class OptbenchError(Exception):
    """A problem with the user's input or environment, explained in one line."""
