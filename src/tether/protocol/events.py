"""What a `Connection` reports after `receive_data`."""

import errno as errno_module
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class RemoteError:
    """An error the peer reports for a request or a stream.

    `code` is a short machine word ("ENOENT", "forbidden", "version"); `errno` is set when the
    failure maps to a POSIX errno the local side can hand to an application.
    """

    code: str
    message: str
    errno: int | None = None

    @classmethod
    def from_os_error(cls, exc: OSError, message: str | None = None) -> "RemoteError":
        """The error an OSError of this side becomes for the peer (its errno's name as the
        code; EIO when it has none)."""
        number = exc.errno or 0
        code = errno_module.errorcode.get(number, "EIO")
        return cls(code, message or exc.strerror or str(exc), exc.errno)


@dataclass(frozen=True, slots=True)
class Handshaken:
    """The handshake completed; `peer_version` is the other side's tether version."""

    peer_version: str
    protocol: int
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HandshakeRejected:
    """The agent refused us (client side only). The connection is closed."""

    code: str
    reason: str


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The peer asks for operation `op`; answer with send_response/send_error."""

    request_id: int
    op: str
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """The answer to one of our requests: `result` if ok, else `error`."""

    request_id: int
    result: Any
    error: RemoteError | None


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer opened a stream; accept_stream or reset_stream it."""

    stream_id: int
    kind: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer accepted a stream we opened; data may flow."""

    stream_id: int
    info: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes on a stream. Call `acknowledge` once consumed, to grant the peer more credit."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class WindowUpdated:
    """We may send more on this stream: `credit` bytes in total now."""

    stream_id: int
    credit: int


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer will send no more on this stream (half-close)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream is gone: refused at open, or aborted by the peer."""

    stream_id: int
    error: RemoteError


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A keepalive ping (the pong is queued automatically)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PongReceived:
    """The answer to one of our pings."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated:
    """The peer is closing the connection (GOAWAY) with `reason`, and a `code` to act on
    ("" or TARGET_GONE)."""

    reason: str
    code: str = ""


TARGET_GONE = "target-gone"
"""GOAWAY code: the agent's target process exited (its pod deleted, its container restarted),
so the agent ends every session on it; a workload session may move to another pod."""
TARGET_GONE_REASON = "the target container exited (its pod was deleted or restarted)"
SESSION_TARGET_GONE = "session-target-gone"
"""GOAWAY code: the container this session moved to (SessionTarget) exited; the agent, and
its other sessions, go on."""
"""The reason text a TARGET_GONE goes with."""


@dataclass(frozen=True, slots=True)
class ResumeRequested:
    """Agent side, on a fresh connection: the client asks to resume the session `token`
    names, having received `received` sequenced bytes of it. Find that session and call its
    `accept_resume(received)`, or `reject` this connection."""

    token: bytes
    received: int
    peer_version: str


@dataclass(frozen=True, slots=True)
class Resumed:
    """Client side: the agent took us back; everything either side missed is on its way
    again and the connection is open."""


@dataclass(frozen=True, slots=True)
class BufferRoom:
    """The peer acknowledged enough that `send_credit` may give more again (it was cut by
    the retransmit limit)."""


Event = (
    Handshaken
    | HandshakeRejected
    | RequestReceived
    | ResponseReceived
    | StreamOpened
    | StreamAccepted
    | DataReceived
    | WindowUpdated
    | StreamEnded
    | StreamReset
    | PingReceived
    | PongReceived
    | ConnectionTerminated
    | ResumeRequested
    | Resumed
    | BufferRoom
)
