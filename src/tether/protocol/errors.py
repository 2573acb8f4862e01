"""The protocol's error types: every malformed input ends in one of these."""


class ProtocolError(Exception):
    """The peer broke the protocol (bad frame, bad state); the connection cannot continue."""


class FlowControlError(ProtocolError):
    """Data beyond the window: sent by the peer, or asked of us by the caller."""


class HandshakeError(ProtocolError):
    """The handshake failed: version mismatch or wrong session secret."""


class StreamStateError(ProtocolError):
    """The caller used a stream that is unknown, or already closed in that direction."""
