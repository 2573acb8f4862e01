"""The error a bad configuration raises."""

from tether.errors import UserError


class ConfigError(UserError):
    """A configuration file or value is wrong; str() is one line naming the file and key."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
