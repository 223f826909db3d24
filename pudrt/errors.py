"""The one exception type users see.

A `PudrtError` carries a message written for the person at the terminal: what is
wrong, with which file, and what to do about it. The CLI prints it without a
traceback; everything else is a bug and keeps its traceback.
"""


class PudrtError(Exception):
    """A problem with the user's input or environment, with an actionable message."""
