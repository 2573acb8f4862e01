"""The connection state machine: handshake, requests, flow-controlled streams, and resuming
a session over a new transport.

Resuming: every frame after the handshake except ACK, PING and PONG is *sequenced*: each end
counts the sequenced bytes it sent and received, keeps what it sent until the peer
acknowledges it (ACK frames: with other output, alone every ACK_EVERY bytes, and at each
ping), and after a cut the
client's RESUME and the agent's RESUMED each say how much was received, so each end sends
again exactly what the other missed. Every request, answer and stream byte is thus delivered
once and in order across any number of cuts. What waits for acknowledgement is bounded by
RETRANSMIT_LIMIT: past it `send_credit` gives no more (back-pressure to the application, never
a dropped byte), and `BufferRoom` says when there is room again.
"""

import collections
import enum
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

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
from tether.protocol.frames import (
    HEADER,
    MAX_PAYLOAD,
    PROTOCOL_VERSION,
    Frame,
    FrameDecoder,
    FrameType,
    encode,
    pack,
    unpack_map,
)

DEFAULT_WINDOW = 4 * 1024 * 1024
MAX_STREAMS = 4096
MAX_PENDING_REQUESTS = 4096
# Sequenced bytes received before we send an ACK on its own: small against the retransmit
# limit, and rare, since each ACK frame on its own wakes the writer and costs a transport
# write. Below that an ACK rides along with whatever we send anyway (a WINDOW, an answer) once
# ACK_PIGGYBACK bytes wait for it, and at each ping.
ACK_EVERY = 2 * 1024 * 1024
ACK_PIGGYBACK = 64 * 1024
# What one end holds for the peer until it is acknowledged (sent or queued). Each stream's
# share is bounded by its window already; this bounds them together.
RETRANSMIT_LIMIT = 64 * 1024 * 1024
_U32 = struct.Struct("!I")
_U64 = struct.Struct("!Q")
_MAX_ID = 0xFFFFFFFF
# Per-transport frames: not counted, not kept for a resume (a ping belongs to the pipe it
# tests; an ACK is re-derived on the next pipe).
_UNSEQUENCED = frozenset({FrameType.ACK, FrameType.PING, FrameType.PONG})


class Role(enum.Enum):
    """Which end: the client (local side) opens odd streams, the agent even ones."""

    CLIENT = "client"
    AGENT = "agent"


class _State(enum.Enum):
    IDLE = 0
    HANDSHAKING = 1
    OPEN = 2
    CLOSED = 3
    SUSPENDED = 4  # the transport is gone; sequenced frames wait for a resume
    RESUMING = 5  # client: RESUME sent, waiting for RESUMED


_SENDING = frozenset({_State.OPEN, _State.SUSPENDED, _State.RESUMING})


@dataclass(slots=True)
class _Stream:
    accepted: bool
    send_credit: int
    recv_available: int
    pending_ack: int = 0
    local_ended: bool = False
    remote_ended: bool = False


def _field(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = msg.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ProtocolError(f"field {key!r} missing or of the wrong type")
    return value


def _error_from(msg: dict[str, Any]) -> RemoteError:
    errno = msg.get("errno")
    return RemoteError(
        code=str(msg.get("code", "error")),
        message=str(msg.get("message", "")),
        errno=errno if isinstance(errno, int) and not isinstance(errno, bool) else None,
    )


def _error_map(error: RemoteError) -> dict[str, Any]:
    out: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.errno is not None:
        out["errno"] = error.errno
    return out


class Connection:
    """One tunnel connection, as seen by one end. Sans-IO: bytes in, events and bytes out."""

    def __init__(
        self,
        role: Role,
        *,
        secret: bytes,
        version: str,
        window: int = DEFAULT_WINDOW,
        info: dict[str, Any] | None = None,
        resume_token: bytes | None = None,
        retransmit_limit: int = RETRANSMIT_LIMIT,
        secret_digest: bytes | None = None,
    ) -> None:
        """`info` travels in our HELLO (client) or WELCOME (agent). An agent given a
        `resume_token` offers resuming: the client gets the token in the WELCOME. An agent
        may hold only `secret_digest`, the SHA-256 of the secret, instead of `secret` (an
        ephemeral agent's environment is in the pod's spec, which many may read)."""
        if not 0 < window <= _MAX_ID:
            raise ValueError("window out of range")
        self.role = role
        self._secret = secret
        self._secret_digest = secret_digest
        self._version = version
        self._info = info or {}
        self._window = window
        self._ack_threshold = max(1, window // 4)
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []  # sequenced frames not yet handed out
        self._ctl: list[bytes] = []  # unsequenced frames not yet handed out
        self.resume_token = resume_token
        self._retransmit_limit = retransmit_limit
        self._sent = 0  # sequenced bytes handed out by data_to_send
        self._peer_acked = 0  # of those, acknowledged by the peer
        self._unacked: collections.deque[bytes] = collections.deque()
        self._unacked_start = 0  # the offset of _unacked[0]
        self._queued = 0  # payload bytes of DATA in _out
        self._starved = False  # send_credit was cut by the retransmit limit
        self._received = 0  # sequenced bytes received in complete frames
        self._told = 0  # the last count we acknowledged
        self._state = _State.IDLE
        self._streams: dict[int, _Stream] = {}
        self._next_stream = 1 if role is Role.CLIENT else 2
        self._max_remote_stream = 0
        self._next_request = 1
        self._our_requests: set[int] = set()
        self._their_requests: set[int] = set()
        self.peer_version: str | None = None
        self._handlers: dict[FrameType, Callable[[Frame], Event | None]] = {
            FrameType.DATA: self._on_data,
            FrameType.WINDOW: self._on_window,
            FrameType.REQUEST: self._on_request,
            FrameType.RESPONSE: self._on_response,
            FrameType.OPEN: self._on_open,
            FrameType.ACCEPT: self._on_accept,
            FrameType.EOF: self._on_eof,
            FrameType.RESET: self._on_reset,
            FrameType.PING: self._on_ping,
            FrameType.PONG: self._on_pong,
            FrameType.GOAWAY: self._on_goaway,
            FrameType.ACK: self._on_ack,
        }

    # -- state -------------------------------------------------------------------------------

    @property
    def handshaken(self) -> bool:
        """Whether requests and streams may be used."""
        return self._state is _State.OPEN

    @property
    def closed(self) -> bool:
        """Whether the connection was rejected or closed by either side."""
        return self._state is _State.CLOSED

    @property
    def suspended(self) -> bool:
        """Whether the connection waits for a resume (between `transport_lost` and the
        RESUMED / `accept_resume`)."""
        return self._state in (_State.SUSPENDED, _State.RESUMING)

    @property
    def resumable(self) -> bool:
        """Whether a lost transport can be replaced: the handshake gave a resume token."""
        return self.resume_token is not None

    @property
    def unacknowledged(self) -> int:
        """Sequenced bytes sent or queued that the peer has not acknowledged yet."""
        return self._sent - self._peer_acked + self._queued

    @property
    def buffered(self) -> int:
        """Bytes held by the decoder for a partial frame (bounded by one frame)."""
        return self._decoder.buffered

    def stream_ids(self) -> list[int]:
        """Streams not yet fully closed."""
        return list(self._streams)

    @property
    def wants_write(self) -> bool:
        """Whether `data_to_send` has anything (cheap; lets a shell skip needless wake-ups)."""
        if self._ctl:
            return True
        return bool(self._out) and not self.suspended

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call (while suspended, only the
        resume handshake: the sequenced frames wait for the new transport)."""
        out = self._out
        if not out or self._state is _State.SUSPENDED or self._state is _State.RESUMING:
            if not self._ctl:
                return b""
            data = b"".join(self._ctl)
            self._ctl.clear()
            return data
        if self._received - self._told >= ACK_PIGGYBACK and self._state is _State.OPEN:
            self._acknowledge_received()
        ctl = self._ctl
        if ctl:
            control = sum(len(piece) for piece in ctl)
            data = b"".join([*ctl, *out])
            ctl.clear()
        else:
            control = 0
            data = out[0] if len(out) == 1 else b"".join(out)
        # Kept until acknowledged, a cut may lose any of it: the pieces themselves (the
        # payloads the application handed us), not a copy of the joined bytes.
        self._unacked.extend(out)
        self._sent += len(data) - control
        out.clear()
        self._queued = 0
        return data

    # -- handshake ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Client: queue the HELLO that carries our version and the session secret."""
        if self.role is not Role.CLIENT or self._state is not _State.IDLE:
            raise LocalProtocolError("only a fresh client connection initiates")
        hello = {
            "v": PROTOCOL_VERSION,
            "secret": self._secret,
            "version": self._version,
            "info": self._info,
        }
        self._ctl.append(encode(FrameType.HELLO, 0, pack(hello)))
        self._state = _State.HANDSHAKING

    def _secret_matches(self, given: bytes) -> bool:
        if self._secret_digest is not None:
            return hmac.compare_digest(hashlib.sha256(given).digest(), self._secret_digest)
        return hmac.compare_digest(given, self._secret)

    def _check_hello(self, msg: dict[str, Any]) -> str:
        """The peer's tether version, once its protocol version and secret are right."""
        protocol = msg.get("v")
        peer = str(msg.get("version", "?"))
        if protocol != PROTOCOL_VERSION:
            reason = (
                f"version mismatch: the agent (tether {self._version}) speaks protocol "
                f"{PROTOCOL_VERSION}, the CLI (tether {peer}) speaks {protocol}; use an agent "
                f"image matching the CLI (agent.image) or upgrade the CLI"
            )
            self._reject("version", reason)
        secret = msg.get("secret")
        if not isinstance(secret, bytes) or not self._secret_matches(secret):
            self._reject("secret", "wrong session secret")
        return peer

    def _on_hello(self, frame: Frame) -> Event:
        if self.role is not Role.AGENT:
            raise ProtocolError("HELLO sent to a client")
        msg = unpack_map(frame.payload)
        peer = self._check_hello(msg)
        welcome: dict[str, Any] = {
            "v": PROTOCOL_VERSION,
            "version": self._version,
            "info": self._info,
        }
        if self.resume_token is not None:
            welcome["resume"] = self.resume_token
        self._ctl.append(encode(FrameType.WELCOME, 0, pack(welcome)))
        self._state = _State.OPEN
        self.peer_version = peer
        info = msg.get("info")
        return Handshaken(peer, PROTOCOL_VERSION, info if isinstance(info, dict) else {})

    def _on_resume(self, frame: Frame) -> Event:
        # A fresh agent-side connection only checks who asks; the session it names is found
        # by the shell, which hands the count to that session's `accept_resume`.
        if self.role is not Role.AGENT:
            raise ProtocolError("RESUME sent to a client")
        msg = unpack_map(frame.payload)
        peer = self._check_hello(msg)
        token = _field(msg, "token", bytes)
        received = _field(msg, "received", int)
        self._state = _State.CLOSED
        self.peer_version = peer
        return ResumeRequested(token, received, peer)

    def reject(self, code: str, reason: str) -> None:
        """Agent: refuse a connection whose handshake asked for something we cannot give
        (a resume of an unknown session); queues a REJECT and closes."""
        self._ctl.append(encode(FrameType.REJECT, 0, pack({"code": code, "reason": reason})))
        self._state = _State.CLOSED

    def _reject(self, code: str, reason: str) -> None:
        self.reject(code, reason)
        raise HandshakeError(reason)

    def _on_welcome(self, frame: Frame) -> Event:
        msg = unpack_map(frame.payload)
        version = str(msg.get("version", "?"))
        info = msg.get("info")
        token = msg.get("resume")
        self.resume_token = token if isinstance(token, bytes) else None
        self._state = _State.OPEN
        self.peer_version = version
        return Handshaken(
            version, int(_field(msg, "v", int)), info if isinstance(info, dict) else {}
        )

    # -- resuming ----------------------------------------------------------------------------

    def transport_lost(self) -> None:
        """The transport under this connection broke: keep every stream and request, and
        wait for a resume (the client's `resume`, the agent's `accept_resume`). Bytes the
        decoder held of a partial frame are dropped: the peer sends them again."""
        if self._state in (_State.OPEN, _State.RESUMING):
            self._state = _State.SUSPENDED
        self._decoder = FrameDecoder()
        self._ctl.clear()

    def resume(self) -> None:
        """Client, on a new transport: queue the RESUME that names the session and says how
        much we received. Events resume after the `Resumed` event."""
        if self.role is not Role.CLIENT or self.resume_token is None:
            raise LocalProtocolError("only a resumable client connection resumes")
        if self._state is not _State.SUSPENDED:
            raise LocalProtocolError("resume only after transport_lost")
        msg = {
            "v": PROTOCOL_VERSION,
            "secret": self._secret,
            "version": self._version,
            "token": self.resume_token,
            "received": self._received,
        }
        self._ctl.append(encode(FrameType.RESUME, 0, pack(msg)))
        self._state = _State.RESUMING

    def accept_resume(self, peer_received: int) -> None:
        """Agent: the client resumed this session on a new transport (its fresh connection
        reported `ResumeRequested`). Queues RESUMED and everything the client missed.

        Raises LocalProtocolError if the count cannot be right (the client claims bytes we
        never sent, or fewer than it acknowledged): the shell then refuses the resume."""
        if self.role is not Role.AGENT or self._state not in (_State.OPEN, _State.SUSPENDED):
            raise LocalProtocolError("this connection cannot be resumed")
        if not self._peer_acked <= peer_received <= self._sent:
            raise LocalProtocolError(
                f"the client says it received {peer_received} bytes; "
                f"{self._peer_acked} to {self._sent} were possible"
            )
        self.transport_lost()
        self._rewind(peer_received)
        self._ctl.append(encode(FrameType.RESUMED, 0, pack({"received": self._received})))
        self._state = _State.OPEN

    def _on_resumed(self, frame: Frame) -> Event:
        received = _field(unpack_map(frame.payload), "received", int)
        if not self._peer_acked <= received <= self._sent:
            raise ProtocolError(f"RESUMED with an impossible count {received}")
        self._rewind(received)
        self._state = _State.OPEN
        return Resumed()

    def _rewind(self, peer_received: int) -> None:
        # What the peer missed goes out again first, in order, before anything queued since.
        self._trim(peer_received)
        missed = list(self._unacked)
        if missed and self._unacked_start < peer_received:
            missed[0] = missed[0][peer_received - self._unacked_start :]
        self._unacked.clear()
        self._unacked_start = peer_received
        self._sent = peer_received
        self._out[:0] = [chunk for chunk in missed if chunk]
        self._queued = sum(len(chunk) for chunk in self._out)
        self._told = self._received

    def _trim(self, acked: int) -> None:
        self._peer_acked = acked
        unacked = self._unacked
        while unacked and self._unacked_start + len(unacked[0]) <= acked:
            self._unacked_start += len(unacked.popleft())

    def _on_ack(self, frame: Frame) -> Event | None:
        if len(frame.payload) != 8:
            raise ProtocolError("ACK payload must be 8 bytes")
        (acked,) = _U64.unpack(frame.payload)
        if not self._peer_acked <= acked <= self._sent:
            raise ProtocolError(f"ACK of {acked} bytes; {self._sent} were sent")
        self._trim(acked)
        if self._starved and self.unacknowledged < self._retransmit_limit:
            self._starved = False
            return BufferRoom()
        return None

    def _acknowledge_received(self) -> None:
        self._told = self._received
        self._ctl.append(encode(FrameType.ACK, 0, _U64.pack(self._received)))

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the peer; return the events they complete.

        Raises ProtocolError (or a subclass) when the peer breaks the protocol; the connection
        is then closed (later calls return no events) and the caller should send
        `data_to_send()` (it may hold a REJECT) and drop it.
        """
        if self._state is _State.CLOSED:
            return []
        events: list[Event] = []
        try:
            for frame in self._decoder.feed(data):
                if self._state is _State.OPEN and frame.type not in _UNSEQUENCED:
                    self._received += HEADER.size + len(frame.payload)
                event = self._dispatch(frame)
                if event is not None:
                    events.append(event)
                if self.closed:
                    break
            else:
                if self._decoder.error is not None:
                    raise self._decoder.error
            if self._received - self._told >= ACK_EVERY and self._state is _State.OPEN:
                self._acknowledge_received()
        except ProtocolError:
            # Nothing after a broken frame can be trusted: the peer is not heard further, and
            # what the decoder still held is let go.
            self._state = _State.CLOSED
            self._decoder = FrameDecoder()
            raise
        return events

    def _dispatch(self, frame: Frame) -> Event | None:
        if self._state is not _State.OPEN:
            return self._dispatch_handshake(frame)
        handler = self._handlers.get(frame.type)
        if handler is None:
            raise ProtocolError(f"unexpected {frame.type.name} after the handshake")
        return handler(frame)

    def _on_ping(self, frame: Frame) -> Event:
        self._ctl.append(encode(FrameType.PONG, 0, frame.payload[:64]))
        # Pings are the idle connection's heartbeat: acknowledging here bounds how long a
        # quiet session's sent bytes are held.
        if self._received != self._told:
            self._acknowledge_received()
        return PingReceived(frame.payload)

    def _on_pong(self, frame: Frame) -> Event:
        return PongReceived(frame.payload)

    def _on_goaway(self, frame: Frame) -> Event:
        msg = unpack_map(frame.payload)
        return ConnectionTerminated(str(msg.get("reason", "")), str(msg.get("code", "")))

    def _dispatch_handshake(self, frame: Frame) -> Event | None:
        ftype = frame.type
        if self.role is Role.AGENT and self._state is _State.IDLE:
            if ftype is FrameType.HELLO:
                return self._on_hello(frame)
            if ftype is FrameType.RESUME:
                return self._on_resume(frame)
        if self.role is Role.CLIENT and self._state in (_State.HANDSHAKING, _State.RESUMING):
            if ftype is FrameType.WELCOME and self._state is _State.HANDSHAKING:
                return self._on_welcome(frame)
            if ftype is FrameType.RESUMED and self._state is _State.RESUMING:
                return self._on_resumed(frame)
            if ftype is FrameType.REJECT:
                msg = unpack_map(frame.payload)
                self._state = _State.CLOSED
                return HandshakeRejected(str(msg.get("code", "")), str(msg.get("reason", "")))
        raise ProtocolError(f"{ftype.name} before the handshake completed")

    def _is_ours(self, stream_id: int) -> bool:
        return (stream_id % 2 == 1) == (self.role is Role.CLIENT)

    def _stream_for(self, stream_id: int) -> _Stream | None:
        """The live stream, or None for one that existed and is closed (late frames are
        expected after a reset and are dropped). Never-opened IDs are a protocol error."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            return stream
        if stream_id == 0:
            raise ProtocolError("stream id 0")
        if self._is_ours(stream_id):
            if stream_id < self._next_stream:
                return None
        elif stream_id <= self._max_remote_stream:
            return None
        raise ProtocolError(f"frame for stream {stream_id}, which was never opened")

    def _on_data(self, frame: Frame) -> Event | None:
        stream = self._stream_for(frame.id)
        if stream is None:
            return None
        if stream.remote_ended:
            raise ProtocolError(f"DATA after EOF on stream {frame.id}")
        size = len(frame.payload)
        if size > stream.recv_available:
            raise FlowControlError(
                f"stream {frame.id}: {size} bytes sent with {stream.recv_available} allowed"
            )
        stream.recv_available -= size
        return DataReceived(frame.id, frame.payload)

    def _on_window(self, frame: Frame) -> Event | None:
        if len(frame.payload) != 4:
            raise ProtocolError("WINDOW payload must be 4 bytes")
        (increment,) = _U32.unpack(frame.payload)
        stream = self._stream_for(frame.id)
        if stream is None:
            return None
        if increment == 0 or stream.send_credit + increment > _MAX_ID:
            raise FlowControlError(f"bad window increment {increment} on stream {frame.id}")
        stream.send_credit += increment
        return WindowUpdated(frame.id, stream.send_credit)

    def _on_request(self, frame: Frame) -> Event:
        msg = unpack_map(frame.payload)
        op = _field(msg, "op", str)
        args = msg.get("args", {})
        if not isinstance(args, dict):
            raise ProtocolError("request args must be a map")
        if frame.id in self._their_requests:
            raise ProtocolError(f"request id {frame.id} reused while pending")
        if len(self._their_requests) >= MAX_PENDING_REQUESTS:
            raise ProtocolError("too many pending requests")
        self._their_requests.add(frame.id)
        return RequestReceived(frame.id, op, args)

    def _on_response(self, frame: Frame) -> Event:
        if frame.id not in self._our_requests:
            raise ProtocolError(f"response to unknown request {frame.id}")
        msg = unpack_map(frame.payload)
        self._our_requests.discard(frame.id)
        error = msg.get("error")
        if error is not None:
            if not isinstance(error, dict):
                raise ProtocolError("response error must be a map")
            return ResponseReceived(frame.id, None, _error_from(error))
        return ResponseReceived(frame.id, msg.get("result"), None)

    def _on_open(self, frame: Frame) -> Event | None:
        sid = frame.id
        if sid == 0 or self._is_ours(sid) or sid <= self._max_remote_stream:
            raise ProtocolError(f"OPEN with invalid stream id {sid}")
        msg = unpack_map(frame.payload)
        kind = _field(msg, "kind", str)
        params = msg.get("params", {})
        window = _field(msg, "window", int)
        if not isinstance(params, dict) or not 0 < window <= _MAX_ID:
            raise ProtocolError("bad OPEN parameters")
        self._max_remote_stream = sid
        if len(self._streams) >= MAX_STREAMS:
            self._out.append(
                encode(
                    FrameType.RESET, sid, pack({"code": "EMFILE", "message": "too many streams"})
                )
            )
            return None
        self._streams[sid] = _Stream(accepted=False, send_credit=window, recv_available=0)
        return StreamOpened(sid, kind, params)

    def _on_accept(self, frame: Frame) -> Event | None:
        stream = self._stream_for(frame.id)
        if stream is None:
            return None
        if not self._is_ours(frame.id) or stream.accepted:
            raise ProtocolError(f"unexpected ACCEPT for stream {frame.id}")
        msg = unpack_map(frame.payload)
        window = _field(msg, "window", int)
        if not 0 < window <= _MAX_ID:
            raise ProtocolError("bad ACCEPT window")
        info = msg.get("info", {})
        stream.accepted = True
        stream.send_credit = window
        return StreamAccepted(frame.id, info if isinstance(info, dict) else {})

    def _on_eof(self, frame: Frame) -> Event | None:
        stream = self._stream_for(frame.id)
        if stream is None:
            return None
        if stream.remote_ended or not stream.accepted:
            raise ProtocolError(f"unexpected EOF on stream {frame.id}")
        stream.remote_ended = True
        self._maybe_forget(frame.id, stream)
        return StreamEnded(frame.id)

    def _on_reset(self, frame: Frame) -> Event | None:
        stream = self._stream_for(frame.id)
        if stream is None:
            return None
        del self._streams[frame.id]
        return StreamReset(frame.id, _error_from(unpack_map(frame.payload)))

    def _maybe_forget(self, stream_id: int, stream: _Stream) -> None:
        if stream.local_ended and stream.remote_ended:
            del self._streams[stream_id]

    # -- sending -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        # A suspended connection queues: what is sent while the transport is down goes out
        # after the resume.
        if self._state not in _SENDING:
            raise LocalProtocolError("connection not open")

    def send_request(self, op: str, args: dict[str, Any]) -> int:
        """Queue a request; returns its id, which the ResponseReceived event will carry."""
        self._require_open()
        rid = self._next_request
        self._next_request = rid + 1 if rid < _MAX_ID else 1
        payload = pack({"op": op, "args": args})
        self._out.append(encode(FrameType.REQUEST, rid, payload))
        self._our_requests.add(rid)
        return rid

    def _answer(self, request_id: int, body: dict[str, Any]) -> None:
        self._require_open()
        if request_id not in self._their_requests:
            raise LocalProtocolError(f"no pending request {request_id} to answer")
        self._their_requests.discard(request_id)
        self._out.append(encode(FrameType.RESPONSE, request_id, pack(body)))

    def send_response(self, request_id: int, result: Any) -> None:
        """Answer a peer's request successfully."""
        self._answer(request_id, {"result": result})

    def send_error(self, request_id: int, error: RemoteError) -> None:
        """Answer a peer's request with an error."""
        self._answer(request_id, {"error": _error_map(error)})

    def open_stream(self, kind: str, params: dict[str, Any]) -> int:
        """Open a stream of `kind` (e.g. "tcp"); data may flow once StreamAccepted arrives."""
        self._require_open()
        if len(self._streams) >= MAX_STREAMS:
            raise StreamStateError("too many open streams")
        sid = self._next_stream
        if sid > _MAX_ID:
            raise LocalProtocolError("stream ids exhausted")
        self._next_stream += 2
        self._streams[sid] = _Stream(accepted=False, send_credit=0, recv_available=self._window)
        msg = {"kind": kind, "params": params, "window": self._window}
        self._out.append(encode(FrameType.OPEN, sid, pack(msg)))
        return sid

    def _live(self, stream_id: int) -> _Stream:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise StreamStateError(f"stream {stream_id} is not open")
        return stream

    def accept_stream(self, stream_id: int, info: dict[str, Any] | None = None) -> None:
        """Accept a stream the peer opened."""
        self._require_open()
        stream = self._live(stream_id)
        if self._is_ours(stream_id) or stream.accepted:
            raise StreamStateError(f"stream {stream_id} cannot be accepted")
        stream.accepted = True
        stream.recv_available = self._window
        msg = {"window": self._window, "info": info or {}}
        self._out.append(encode(FrameType.ACCEPT, stream_id, pack(msg)))

    def reset_stream(self, stream_id: int, error: RemoteError) -> None:
        """Abort a stream (or refuse one the peer opened). A no-op if it is already gone."""
        self._require_open()
        if self._streams.pop(stream_id, None) is None:
            return
        self._out.append(encode(FrameType.RESET, stream_id, pack(_error_map(error))))

    def send_credit(self, stream_id: int) -> int:
        """How many bytes `send_data` may send on the stream now."""
        stream = self._live(stream_id)
        if not stream.accepted or stream.local_ended:
            return 0
        room = self._retransmit_limit - (self._sent - self._peer_acked + self._queued)
        if room < stream.send_credit:
            if room <= 0:
                self._starved = True
                return 0
            return room
        return stream.send_credit

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Queue `data` on a stream; it must fit in `send_credit` (FlowControlError if not)."""
        self._require_open()
        stream = self._live(stream_id)
        if not stream.accepted or stream.local_ended:
            raise StreamStateError(f"stream {stream_id} is not writable")
        size = len(data)
        if size > stream.send_credit:
            raise CreditError(f"{size} bytes exceed the credit {stream.send_credit}")
        stream.send_credit -= size
        self._queued += size
        out = self._out
        if size <= MAX_PAYLOAD:
            out.append(HEADER.pack(size + 5, FrameType.DATA, stream_id))
            out.append(data)
            return
        view = memoryview(data)
        for start in range(0, size, MAX_PAYLOAD):
            chunk = view[start : start + MAX_PAYLOAD]
            out.append(HEADER.pack(len(chunk) + 5, FrameType.DATA, stream_id))
            out.append(bytes(chunk))

    def acknowledge(self, stream_id: int, size: int) -> None:
        """The application consumed `size` received bytes: grant the peer that much again.

        Credit is returned in batches (a quarter window) to keep WINDOW frames rare.
        """
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_ended or size <= 0:
            return
        stream.pending_ack += size
        if stream.pending_ack + stream.recv_available > self._window:
            raise CreditError("acknowledged more than was received")
        if stream.pending_ack >= self._ack_threshold:
            self._out.append(encode(FrameType.WINDOW, stream_id, _U32.pack(stream.pending_ack)))
            stream.recv_available += stream.pending_ack
            stream.pending_ack = 0

    def end_stream(self, stream_id: int) -> None:
        """Half-close: we send no more on this stream."""
        self._require_open()
        stream = self._live(stream_id)
        if not stream.accepted or stream.local_ended:
            raise StreamStateError(f"stream {stream_id} cannot be ended")
        stream.local_ended = True
        self._out.append(encode(FrameType.EOF, stream_id))
        self._maybe_forget(stream_id, stream)

    def ping(self, data: bytes = b"") -> None:
        """Queue a keepalive ping; the peer answers with a PongReceived carrying `data`."""
        if self._state is not _State.OPEN:
            raise LocalProtocolError("connection not open")
        self._ctl.append(encode(FrameType.PING, 0, data[:64]))

    def close(self, reason: str = "", code: str = "") -> None:
        """Queue a GOAWAY and close; later calls that send raise LocalProtocolError. `code`
        is a machine word the peer may act on (TARGET_GONE)."""
        if self._state is _State.OPEN:
            msg = {"reason": reason, "code": code} if code else {"reason": reason}
            self._out.append(encode(FrameType.GOAWAY, 0, pack(msg)))
        self._state = _State.CLOSED
        self._streams.clear()
