"""The one error type devcluster's CLI turns into a one-line message."""


class DevclusterError(Exception):
    """Something the user can fix; the message says what."""
