"""The protocol's error types, in two families (as h11 does): the peer's faults, which end
the connection, and this end's misuse of the API, which is a bug here and leaves the
connection as it was."""


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, bad state); the connection cannot continue."""


class FlowControlError(ProtocolError):
    """The peer sent data beyond the window it was given."""


class HandshakeError(ProtocolError):
    """The handshake failed: version mismatch, wrong session secret, or a resume refused."""


class LocalProtocolError(Exception):
    """The caller used the connection wrongly (a call that does not fit its state); nothing
    was sent and the connection is unchanged."""


class StreamStateError(LocalProtocolError):
    """The caller used a stream that is unknown, or already closed in that direction."""


class CreditError(LocalProtocolError):
    """The caller sent beyond a stream's credit, or acknowledged bytes it never received."""
