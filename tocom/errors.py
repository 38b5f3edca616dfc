"""One exception type for every user-facing problem.

The command line catches `TocomError` and prints its message as one line (no traceback),
so every message must name the thing that is wrong and how to fix it.
"""


class TocomError(Exception):
    """A problem with the user's input (a path, a name, a value), not a bug."""
