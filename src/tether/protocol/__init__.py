"""The wire protocol between tether's local side and its agent: sans-IO, like h11/h2.

A `Connection` is fed bytes (`receive_data`) and returns typed events; calls such as
`send_request` or `send_data` queue bytes that the caller fetches with `data_to_send`. Nothing
here touches a socket or an event loop, so every rule is unit-, property- and fuzz-tested with
plain byte strings, and the agent and the local proxy are thin I/O shells around it.
"""

from tether.protocol.connection import Connection, Role
from tether.protocol.errors import (
    CreditError,
    FlowControlError,
    HandshakeError,
    LocalProtocolError,
    ProtocolError,
    StreamStateError,
)
from tether.protocol.events import (
    BufferRoom,
    ConnectionTerminated,
    DataReceived,
    Event,
    Handshaken,
    HandshakeRejected,
    PingReceived,
    PongReceived,
    RemoteError,
    RequestReceived,
    ResponseReceived,
    Resumed,
    ResumeRequested,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from tether.protocol.frames import MAX_PAYLOAD, PROTOCOL_VERSION

__all__ = [
    "MAX_PAYLOAD",
    "PROTOCOL_VERSION",
    "BufferRoom",
    "Connection",
    "ConnectionTerminated",
    "CreditError",
    "DataReceived",
    "Event",
    "FlowControlError",
    "HandshakeError",
    "HandshakeRejected",
    "Handshaken",
    "LocalProtocolError",
    "PingReceived",
    "PongReceived",
    "ProtocolError",
    "RemoteError",
    "RequestReceived",
    "ResponseReceived",
    "ResumeRequested",
    "Resumed",
    "Role",
    "StreamAccepted",
    "StreamEnded",
    "StreamOpened",
    "StreamReset",
    "StreamStateError",
    "WindowUpdated",
]
