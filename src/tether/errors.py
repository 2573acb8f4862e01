"""The root of tether's own errors.

`UserError` is what the command line reports as one line (`tether: error: ...`) with a
non-zero exit: its str() names what to fix. Anything else that escapes is a bug, and is still
reported in one line (see cli/main.py).
"""


class TetherError(Exception):
    """Any error tether raises on purpose."""


class UserError(TetherError):
    """An error the user can act on (bad input, a refused or vanished cluster object, an
    agent that said no); str() is one line that says what to fix."""
