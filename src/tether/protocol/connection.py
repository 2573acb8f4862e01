"""The connection state machine: handshake, requests, and flow-controlled streams."""

import enum
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tether.protocol.errors import (
    FlowControlError,
    HandshakeError,
    ProtocolError,
    StreamStateError,
)
from tether.protocol.events import (
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
_U32 = struct.Struct("!I")
_MAX_ID = 0xFFFFFFFF


class Role(enum.Enum):
    """Which end: the client (local side) opens odd streams, the agent even ones."""

    CLIENT = "client"
    AGENT = "agent"


class _State(enum.Enum):
    IDLE = 0
    HANDSHAKING = 1
    OPEN = 2
    CLOSED = 3


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
    ) -> None:
        if not 0 < window <= _MAX_ID:
            raise ValueError("window out of range")
        self.role = role
        self._secret = secret
        self._version = version
        self._info = info or {}
        self._window = window
        self._ack_threshold = max(1, window // 4)
        self._decoder = FrameDecoder()
        self._out: list[bytes] = []
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
    def buffered(self) -> int:
        """Bytes held by the decoder for a partial frame (bounded by one frame)."""
        return self._decoder.buffered

    def stream_ids(self) -> list[int]:
        """Streams not yet fully closed."""
        return list(self._streams)

    @property
    def wants_write(self) -> bool:
        """Whether `data_to_send` has anything (cheap; lets a shell skip needless wake-ups)."""
        return bool(self._out)

    def data_to_send(self) -> bytes:
        """Everything queued for the peer since the last call."""
        if not self._out:
            return b""
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        return data

    # -- handshake ---------------------------------------------------------------------------

    def initiate(self) -> None:
        """Client: queue the HELLO that carries our version and the session secret."""
        if self.role is not Role.CLIENT or self._state is not _State.IDLE:
            raise ProtocolError("only a fresh client connection initiates")
        hello = {"v": PROTOCOL_VERSION, "secret": self._secret, "version": self._version}
        self._out.append(encode(FrameType.HELLO, 0, pack(hello)))
        self._state = _State.HANDSHAKING

    def _on_hello(self, frame: Frame) -> Event:
        if self.role is not Role.AGENT:
            raise ProtocolError("HELLO sent to a client")
        msg = unpack_map(frame.payload)
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
        if not isinstance(secret, bytes) or not hmac.compare_digest(secret, self._secret):
            self._reject("secret", "wrong session secret")
        welcome = {"v": PROTOCOL_VERSION, "version": self._version, "info": self._info}
        self._out.append(encode(FrameType.WELCOME, 0, pack(welcome)))
        self._state = _State.OPEN
        self.peer_version = peer
        return Handshaken(peer, PROTOCOL_VERSION, {})

    def _reject(self, code: str, reason: str) -> None:
        self._out.append(encode(FrameType.REJECT, 0, pack({"code": code, "reason": reason})))
        self._state = _State.CLOSED
        raise HandshakeError(reason)

    def _on_welcome(self, frame: Frame) -> Event:
        msg = unpack_map(frame.payload)
        version = str(msg.get("version", "?"))
        info = msg.get("info")
        self._state = _State.OPEN
        self.peer_version = version
        return Handshaken(
            version, int(_field(msg, "v", int)), info if isinstance(info, dict) else {}
        )

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
                event = self._dispatch(frame)
                if event is not None:
                    events.append(event)
                if self.closed:
                    break
            else:
                if self._decoder.error is not None:
                    raise self._decoder.error
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
        self._out.append(encode(FrameType.PONG, 0, frame.payload[:64]))
        return PingReceived(frame.payload)

    def _on_pong(self, frame: Frame) -> Event:
        return PongReceived(frame.payload)

    def _on_goaway(self, frame: Frame) -> Event:
        return ConnectionTerminated(str(unpack_map(frame.payload).get("reason", "")))

    def _dispatch_handshake(self, frame: Frame) -> Event | None:
        ftype = frame.type
        if self.role is Role.AGENT and self._state is _State.IDLE and ftype is FrameType.HELLO:
            return self._on_hello(frame)
        if self.role is Role.CLIENT and self._state is _State.HANDSHAKING:
            if ftype is FrameType.WELCOME:
                return self._on_welcome(frame)
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
        if self._state is not _State.OPEN:
            raise ProtocolError("connection not open")

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
            raise ProtocolError(f"no pending request {request_id} to answer")
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
            raise ProtocolError("stream ids exhausted")
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
        return stream.send_credit if stream.accepted and not stream.local_ended else 0

    def send_data(self, stream_id: int, data: bytes) -> None:
        """Queue `data` on a stream; it must fit in `send_credit` (FlowControlError if not)."""
        self._require_open()
        stream = self._live(stream_id)
        if not stream.accepted or stream.local_ended:
            raise StreamStateError(f"stream {stream_id} is not writable")
        size = len(data)
        if size > stream.send_credit:
            raise FlowControlError(f"{size} bytes exceed the credit {stream.send_credit}")
        stream.send_credit -= size
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
            raise FlowControlError("acknowledged more than was received")
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
        self._require_open()
        self._out.append(encode(FrameType.PING, 0, data[:64]))

    def close(self, reason: str = "") -> None:
        """Queue a GOAWAY and close; later calls that send raise ProtocolError."""
        if self._state is _State.OPEN:
            self._out.append(encode(FrameType.GOAWAY, 0, pack({"reason": reason})))
        self._state = _State.CLOSED
        self._streams.clear()
