"""The sans-IO core of HTTP/2 request routing (cleartext, prior knowledge; this is how gRPC
talks): each stream of a client connection is relayed on a stream of an upstream
connection, one h2 connection per route key.

Built the way h2 itself is: `Http2Core` is fed what happened (bytes from the client or an
upstream, a connection made, lost or ended) and returns what to do about it (typed
actions: bytes to send, a connection to open or close). It never waits and touches no
socket, so it can be driven from byte tables in tests; `http2` is the asyncio shell that
moves the bytes.

We terminate the client's HTTP/2 connection with an h2 server connection and open h2
client connections to the upstreams; streams are mapped both ways. DATA obeys flow control
on both legs: data is acknowledged to its sender only once it was passed on to the other
leg's h2 connection (which only takes what that peer's window allows), so a slow receiver
slows its sender down instead of filling our memory.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.connection import ConnectionState
from h2.errors import ErrorCodes

from tether.agent.incoming.routing import (
    Decide,
    RequestHead,
    decode,
    log,
    safe_decide,
    unreachable_reason,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# The stream window we grant to our peers (h2's default, 64 KiB, is slow over a tunnel) and
# the connection window. Since we acknowledge data only once it is passed on, these bound
# what we buffer: per stream and direction one stream window, per connection the connection
# window.
_STREAM_WINDOW = 1 << 18
_CONNECTION_WINDOW = 1 << 22
_DEFAULT_WINDOW = 65535

_FRAME_HEADER = 9
_GOAWAY_TYPE = 0x7
_MAX_GOAWAY = 1 << 16

# Stream error codes passed on as they are; others are about the leg they came on (a
# PROTOCOL_ERROR from the upstream is no fault of the client), so they become a neutral code.
_RELAYED_CODES = frozenset(
    {
        ErrorCodes.NO_ERROR,
        ErrorCodes.REFUSED_STREAM,
        ErrorCodes.CANCEL,
        ErrorCodes.INTERNAL_ERROR,
        ErrorCodes.ENHANCE_YOUR_CALM,
        ErrorCodes.INADEQUATE_SECURITY,
        ErrorCodes.HTTP_1_1_REQUIRED,
    }
)

_UPSTREAM_CLOSED = "the upstream closed the connection"

Header = tuple[bytes, bytes]


def _relayed_code(code: int, fallback: ErrorCodes) -> int:
    return code if code in _RELAYED_CODES else fallback


# -- actions ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendClient:
    """Write `data` to the client connection, after everything sent to it before."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open a new connection to route key `key`'s upstream, known as `conn_id` from now on;
    report the outcome with `upstream_opened` or `upstream_failed`."""

    conn_id: int
    key: Hashable | None


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Write `data` to upstream connection `conn_id`, after everything sent to it before."""

    conn_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Done with upstream connection `conn_id` (connected or still connecting): stop reading
    it. `graceful`: write what was sent to it first (it ends with our GOAWAY), then close;
    otherwise reset it at once. Later input about it is ignored."""

    conn_id: int
    graceful: bool


@dataclass(frozen=True, slots=True)
class CloseClient:
    """The client connection is over (every upstream got its CloseUpstream before this):
    `graceful`: write what was sent to it first, then close; otherwise reset it. Later input
    is ignored."""

    graceful: bool


Action = SendClient | OpenUpstream | SendUpstream | CloseUpstream | CloseClient


# -- GOAWAY interception ------------------------------------------------------------------------


@dataclass(frozen=True)
class _GoAway:
    last_stream_id: int
    error_code: int


class _FrameSplitter:
    """Takes GOAWAY frames out of a received HTTP/2 byte stream; passes the rest on as is.

    Why by hand: h2 treats a received GOAWAY as the end of the connection (it refuses every
    later frame), but a graceful GOAWAY (a server restarting, a client closing) lets the
    streams already started finish. We handle GOAWAY ourselves and never show it to h2.
    Only frame boundaries are parsed here; h2 validates everything else.
    """

    def __init__(self, skip: int = 0) -> None:
        self._skip = skip  # bytes before the first frame (the client's connection preface)
        self._header = bytearray()
        self._payload_left = 0  # of a frame being passed on
        self._goaway: bytearray | None = None
        self._goaway_len = 0

    def feed(self, data: bytes) -> list[bytes | _GoAway]:
        """The bytes to give h2 and the GOAWAYs, in the order they came.

        Passed bytes go on as slices of `data` (all of `data`, uncopied, when it holds no
        GOAWAY and no frame header from an earlier feed: the usual case).
        """
        out: list[bytes | _GoAway] = []
        parts: list[bytes] = []  # passed bytes not in `out` yet
        run = -1  # where the bytes now being passed started in `data` (-1: none)
        pos = 0
        size = len(data)
        while pos < size:
            if self._skip or self._payload_left:
                if run < 0:
                    run = pos
                n = min(self._skip or self._payload_left, size - pos)
                if self._skip:
                    self._skip -= n
                else:
                    self._payload_left -= n
                pos += n
            elif self._goaway is not None:
                n = min(self._goaway_len - len(self._goaway), size - pos)
                self._goaway += data[pos : pos + n]
                pos += n
                if len(self._goaway) == self._goaway_len:
                    if parts:
                        out.append(_join(parts))
                        parts = []
                    payload = self._goaway
                    out.append(
                        _GoAway(
                            int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
                            int.from_bytes(payload[4:8], "big"),
                        )
                    )
                    self._goaway = None
            else:
                start = pos
                carried = len(self._header)  # header bytes from an earlier feed
                n = min(_FRAME_HEADER - carried, size - pos)
                self._header += data[pos : pos + n]
                pos += n
                if len(self._header) < _FRAME_HEADER:
                    if run >= 0:  # the rest waits for the next feed
                        parts.append(data[run:start])
                        run = -1
                    continue
                length = int.from_bytes(self._header[0:3], "big")
                if self._header[3] == _GOAWAY_TYPE and 8 <= length <= _MAX_GOAWAY:
                    if run >= 0:
                        parts.append(data[run:start])
                        run = -1
                    self._goaway = bytearray()
                    self._goaway_len = length
                else:  # any other frame (or a malformed GOAWAY, for h2 to reject)
                    if carried:
                        parts.append(bytes(self._header))
                        run = pos
                    elif run < 0:
                        run = start
                    self._payload_left = length
                self._header.clear()
        if run >= 0:
            parts.append(data if run == 0 else data[run:])
        if parts:
            out.append(_join(parts))
        return out


def _join(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


# -- connections and streams --------------------------------------------------------------------


class _Side:
    """One HTTP/2 connection we are an end of: the client's, or one to an upstream."""

    __slots__ = ("alive", "conn", "name")

    def __init__(self, *, client_side: bool, name: str) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.name = name
        self.alive = True  # False once nothing more is to go out on it
        # Our own SETTINGS: bigger windows than the defaults (see _STREAM_WINDOW).
        self.conn.initiate_connection()
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW
        }
        if client_side:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self.conn.update_settings(settings)
        self.conn.increment_flow_control_window(_CONNECTION_WINDOW - _DEFAULT_WINDOW)

    def ack(self, size: int, stream_id: int) -> None:
        """Hand `size` flow-controlled bytes of a stream back to the peer."""
        if size and self.alive:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(size, stream_id)

    def reset(self, stream_id: int, code: int) -> None:
        if self.alive:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, code)


class _Half:
    """One direction of a relayed stream: data the source sent that the destination has not
    taken yet (waiting for flow-control window), then the trailers or the end of the stream.
    Data is acknowledged to the source as it leaves."""

    __slots__ = (
        "chunks",
        "discard",
        "dst",
        "dst_id",
        "end",
        "finished",
        "on_finished",
        "src",
        "src_id",
        "trailers",
    )

    def __init__(self) -> None:
        self.src: _Side | None = None
        self.src_id = 0
        self.dst: _Side | None = None  # None until the destination stream exists
        self.dst_id = 0
        self.chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self.trailers: list[Header] | None = None
        self.end = False  # the source ended its side of the stream
        self.finished = False  # we ended the destination's side (or it was closed)
        self.discard = False  # the destination takes nothing more: drop (and acknowledge)
        self.on_finished: Callable[[], None] = lambda: None

    def push(self, data: bytes, flow_controlled: int) -> None:
        if self.discard or self.finished:
            self._ack(flow_controlled)
            return
        self.chunks.append((data, flow_controlled))
        self.pump()

    def set_end(self) -> None:
        """The source ended the stream (after `trailers`, if it sent any)."""
        self.end = True
        self.pump()

    def pump(self) -> None:
        """Send what the destination's windows allow; the end once all data is out."""
        dst = self.dst
        if dst is None or self.finished or self.discard or not dst.alive:
            return
        conn = dst.conn
        try:
            while self.chunks:
                data, ack = self.chunks[0]
                if data:
                    room = min(conn.local_flow_control_window(self.dst_id), _max_frame(conn))
                    if room <= 0:
                        break
                    # A whole chunk (the usual case) goes uncopied: data[:room] is data.
                    conn.send_data(self.dst_id, data[:room])
                    if room < len(data):
                        self.chunks[0] = (data[room:], ack)
                        continue
                self.chunks.popleft()
                self._ack(ack)
            if not self.chunks and self.end:
                if self.trailers is not None:
                    conn.send_headers(self.dst_id, self.trailers, end_stream=True)
                else:
                    conn.end_stream(self.dst_id)
                self.finished = True
        except h2.exceptions.ProtocolError as exc:
            # The destination stream is gone (reset, or closed by the peer).
            log.debug("%s stream %d takes no more: %r", dst.name, self.dst_id, exc)
            self.drop()
        if self.finished or self.discard:
            self.on_finished()

    def drop(self) -> None:
        """The destination takes nothing more: acknowledge and forget what is buffered."""
        self.discard = True
        while self.chunks:
            self._ack(self.chunks.popleft()[1])
        self.trailers = None

    def _ack(self, size: int) -> None:
        if self.src is not None:
            self.src.ack(size, self.src_id)


def _max_frame(conn: h2.connection.H2Connection) -> int:
    """The largest DATA frame payload the connection's peer accepts."""
    return int(conn.max_outbound_frame_size)


class _Stream:
    """A client stream and the upstream stream it is relayed on."""

    def __init__(
        self,
        core: Http2Core,
        client_id: int,
        key: Hashable | None,
        headers: list[Header],
        head: RequestHead,
    ) -> None:
        self.client_id = client_id
        self.key = key
        self.headers = headers
        self.method = head.method
        content_type = next((v for n, v in head.headers if n == "content-type"), "")
        self.grpc = content_type.startswith("application/grpc")
        self.upstream: _Upstream | None = None
        self.upstream_id = 0
        self.client_ended = False  # the client ended its side (request complete)
        self.answered = False  # a final response head went to the client
        self.closed = False
        self.to_up = _Half()  # the request
        self.to_up.src, self.to_up.src_id = core.client, client_id
        self.to_client = _Half()  # the response
        self.to_client.dst, self.to_client.dst_id = core.client, client_id
        self.to_up.on_finished = self.to_client.on_finished = lambda: core.check(self)


class _Upstream:
    """An h2 client connection to one route key's upstream.

    Its h2 connection exists from the start (its preface waits in h2's buffer until the
    shell has connected); it takes streams once the upstream's SETTINGS came, which tell
    how many it allows at once.
    """

    def __init__(self, core: Http2Core, conn_id: int, key: Hashable | None) -> None:
        self.core = core
        self.conn_id = conn_id
        self.key = key
        self.side = _Side(client_side=True, name="upstream")
        self.streams: dict[int, _Stream] = {}  # by upstream stream id
        self.queue: collections.deque[_Stream] = collections.deque()  # waiting for a slot
        self.opened = False  # the shell connected it: bytes may go out
        self.ready = False  # its SETTINGS came
        self.pooled = False  # it took over its key's waiting streams (in `core.pool` if accepting)
        self.accepting = True  # takes new streams (no GOAWAY, not failed)
        self.lost = False  # broken or closed: nothing more goes out on it
        self.splitter = _FrameSplitter()

    def enqueue(self, stream: _Stream) -> None:
        self.queue.append(stream)
        self.open_streams()

    def open_streams(self) -> None:
        """Open queued streams while the upstream's concurrency limit allows."""
        conn = self.side.conn
        while self.queue and self.accepting and self.side.alive:
            if conn.open_outbound_streams >= conn.remote_settings.max_concurrent_streams:
                return
            stream = self.queue.popleft()
            if not stream.closed:
                self._open(stream)

    def _open(self, stream: _Stream) -> None:
        conn = self.side.conn
        upstream_id = conn.get_next_available_stream_id()
        request = stream.to_up
        end = request.end and not request.chunks and request.trailers is None
        try:
            conn.send_headers(upstream_id, stream.headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            self.core.fail_stream(stream, f"tether: the request could not be relayed ({exc})")
            return
        stream.upstream, stream.upstream_id = self, upstream_id
        self.streams[upstream_id] = stream
        request.dst, request.dst_id = self.side, upstream_id
        stream.to_client.src, stream.to_client.src_id = self.side, upstream_id
        if end:
            request.finished = True
            self.core.check(stream)
        else:
            request.pump()


# -- the router ---------------------------------------------------------------------------------


class Http2Core:
    """Routes the streams of one HTTP/2 client connection to the upstreams `decide` picks.

    Every method takes one thing that happened and returns the actions it calls for, in the
    order they are to be performed (sends to one connection keep their order; a connection's
    CloseUpstream/CloseClient comes after its last send). The connection preface is the
    start of the first `client_data`; our own SETTINGS go out with its answer. A request
    whose upstream cannot be reached gets a 502 (gRPC: status UNAVAILABLE).
    """

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.client = _Side(client_side=False, name="client")
        self.splitter = _FrameSplitter(skip=len(PREFACE))
        self.streams: dict[int, _Stream] = {}  # by client stream id
        self.pool: dict[Hashable | None, _Upstream] = {}  # upstreams taking new streams
        self.waiting: dict[Hashable | None, list[_Stream]] = {}  # for their key's upstream
        self.connecting: dict[Hashable | None, _Upstream] = {}  # not pooled yet, by key
        self.upstreams: dict[int, _Upstream] = {}  # every one not closed yet, by conn id
        self.draining = False  # the client sent GOAWAY: end when its streams are done
        self.closed = False  # CloseClient was returned
        self._ending: bool | None = None  # end after this input (graceful or not)
        self._next_conn_id = 1
        self._actions: list[Action] = []

    # -- inputs ---------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        """Bytes from the client (the first ones start with the connection preface)."""
        if self.closed:
            return []
        for item in self.splitter.feed(data):
            if isinstance(item, _GoAway):
                log.debug("client sent GOAWAY (error code %d)", item.error_code)
                self.draining = True
                if item.error_code != ErrorCodes.NO_ERROR:
                    self._end(graceful=True)
                continue
            try:
                events = self.client.conn.receive_data(item)
            except h2.exceptions.ProtocolError as exc:
                # h2 queued a GOAWAY for the client; it goes out as we close.
                log.debug("HTTP/2 protocol error from the client: %r", exc)
                self._end(graceful=True)
                return self._flush()
            for event in events:
                self._on_client_event(event)
        self._check_drained()
        return self._flush()

    def client_eof(self) -> list[Action]:
        """The client's connection ended or broke on reading: close everything gracefully
        (streams still running are cut; an HTTP/2 client that wants them sends GOAWAY and
        keeps reading)."""
        if self.closed:
            return []
        self._end(graceful=True)
        return self._flush()

    def client_failed(self) -> list[Action]:
        """Writing to the client failed: nothing can reach it, reset everything."""
        if self.closed:
            return []
        self.client.alive = False
        self._end(graceful=False)
        return self._flush()

    def upstream_opened(self, conn_id: int) -> list[Action]:
        """The connection of an OpenUpstream is made: our preface goes out on it."""
        upstream = self.upstreams.get(conn_id)
        if self.closed or upstream is None or upstream.opened:
            return []
        upstream.opened = True
        return self._flush()

    def upstream_data(self, conn_id: int, data: bytes) -> list[Action]:
        """Bytes from an upstream connection."""
        upstream = self.upstreams.get(conn_id)
        if self.closed or upstream is None or not upstream.opened:
            return []
        for item in upstream.splitter.feed(data):
            if isinstance(item, _GoAway):
                self._upstream_goaway(upstream, item)
            else:
                try:
                    events = upstream.side.conn.receive_data(item)
                except h2.exceptions.ProtocolError as exc:
                    self._upstream_lost(upstream, f"bad HTTP/2 from the upstream: {exc}")
                    return self._flush()
                for event in events:
                    self._on_upstream_event(upstream, event)
            if upstream.lost:
                return self._flush()
        if upstream.ready and not upstream.pooled:
            self._pool(upstream)
        upstream.open_streams()
        return self._flush()

    def upstream_eof(self, conn_id: int) -> list[Action]:
        """The upstream closed its connection."""
        return self.upstream_failed(conn_id, _UPSTREAM_CLOSED)

    def upstream_failed(self, conn_id: int, reason: str) -> list[Action]:
        """An upstream connection could not be made, or broke (`reason` says how; it ends up
        in our 502 answers)."""
        upstream = self.upstreams.get(conn_id)
        if self.closed or upstream is None:
            return []
        self._upstream_lost(upstream, reason)
        return self._flush()

    def handshake_timeout(self, conn_id: int) -> list[Action]:
        """Time is up for an upstream connected a while ago to send its SETTINGS: if it did
        not, it counts as unreachable."""
        upstream = self.upstreams.get(conn_id)
        if self.closed or upstream is None or upstream.ready:
            return []
        self._upstream_lost(upstream, "")
        return self._flush()

    # -- output ---------------------------------------------------------------------------

    def _flush(self) -> list[Action]:
        """The actions of this input: what it queued, then what h2 has to send."""
        if self._ending is not None and not self.closed:
            self._shutdown(graceful=self._ending)
        actions = self._actions
        self._actions = []
        for upstream in self.upstreams.values():
            if upstream.opened:
                data = upstream.side.conn.data_to_send()
                if data:
                    actions.append(SendUpstream(upstream.conn_id, data))
        if self.client.alive:
            data = self.client.conn.data_to_send()
            if data:
                actions.append(SendClient(data))
        if self.closed:
            actions.append(CloseClient(graceful=self.client.alive))
        return actions

    def _end(self, *, graceful: bool) -> None:
        """End the connection once the current input is handled: the rest of a read still
        is, so what it completes (a stream's last frames, resets) goes out before our
        GOAWAY."""
        self._ending = graceful if self._ending is None else (self._ending and graceful)

    def _shutdown(self, *, graceful: bool) -> None:
        self.closed = True
        for upstream in list(self.upstreams.values()):
            self._close_upstream(upstream, graceful=graceful)
        if not graceful:
            self.client.alive = False
        elif self.client.conn.state_machine.state != ConnectionState.CLOSED:
            # (A connection h2 closed over a protocol error has its GOAWAY queued already.)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.client.conn.close_connection()

    def _check_drained(self) -> None:
        if self.draining and not self.streams:
            self._end(graceful=True)

    # -- the client connection ------------------------------------------------------------

    def _on_client_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None:
                self.client.ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.to_up.push(event.data, event.flow_controlled_length)
            return
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
            return
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            # More room towards the client: responses waiting for it may go on.
            sid = event.stream_id if isinstance(event, h2.events.WindowUpdated) else 0
            targets = list(self.streams.values()) if sid == 0 else [self.streams.get(sid)]
            for target in targets:
                if target is not None:
                    target.to_client.pump()
            return
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.get(stream_id) if isinstance(stream_id, int) else None
        if stream is None:
            return
        if isinstance(event, h2.events.TrailersReceived):
            stream.to_up.trailers = _trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream.client_ended = True
            stream.to_up.set_end()
        elif isinstance(event, h2.events.StreamReset):
            self._on_client_reset(stream, int(event.error_code))

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        headers = list(event.headers)
        head = request_head(headers)
        key = safe_decide(self.decide, head)
        stream = _Stream(self, event.stream_id, key, headers, head)
        self.streams[event.stream_id] = stream
        if event.stream_ended is not None:
            stream.client_ended = True
            stream.to_up.end = True
        self._dispatch(stream)

    def _on_client_reset(self, stream: _Stream, code: int) -> None:
        stream.client_ended = True
        if stream.upstream is not None:
            stream.upstream.side.reset(stream.upstream_id, _relayed_code(code, ErrorCodes.CANCEL))
        self._close_stream(stream)

    # -- routing to upstreams -------------------------------------------------------------

    def _dispatch(self, stream: _Stream) -> None:
        upstream = self.pool.get(stream.key)
        if upstream is not None:
            upstream.enqueue(stream)
            return
        self.waiting.setdefault(stream.key, []).append(stream)
        if stream.key not in self.connecting:
            conn_id = self._next_conn_id
            self._next_conn_id += 1
            upstream = _Upstream(self, conn_id, stream.key)
            self.connecting[stream.key] = upstream
            self.upstreams[conn_id] = upstream
            self._actions.append(OpenUpstream(conn_id, stream.key))

    def _pool(self, upstream: _Upstream) -> None:
        """The upstream's SETTINGS came: it takes the streams waiting for its key, and new
        ones. (Only after a whole read: a GOAWAY right behind the SETTINGS counts as a
        connection that went away, not as streams it refused.)"""
        upstream.pooled = True
        if self.connecting.get(upstream.key) is upstream:
            del self.connecting[upstream.key]
        self.pool[upstream.key] = upstream
        for stream in self.waiting.pop(upstream.key, []):
            if not stream.closed:
                upstream.enqueue(stream)

    def _fail_waiting(self, upstream: _Upstream, reason: str) -> None:
        """An upstream went away before it took any stream: those waiting for it get our
        answer."""
        if self.connecting.get(upstream.key) is not upstream:
            return
        del self.connecting[upstream.key]
        text = unreachable_reason(upstream.key, ConnectionResetError(reason))
        log.debug("HTTP/2 upstream for %r: %s", upstream.key, text)
        for stream in self.waiting.pop(upstream.key, []):
            self.fail_stream(stream, text)
        self._check_drained()

    def _on_upstream_event(self, upstream: _Upstream, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = upstream.streams.get(event.stream_id)
            if stream is None:
                upstream.side.ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.to_client.push(event.data, event.flow_controlled_length)
            return
        if isinstance(event, h2.events.RemoteSettingsChanged):
            upstream.ready = True
            for waiting in list(upstream.streams.values()):
                waiting.to_up.pump()
            return
        if isinstance(event, h2.events.WindowUpdated):
            if event.stream_id == 0:
                targets = list(upstream.streams.values())
            else:
                targets = [s for s in (upstream.streams.get(event.stream_id),) if s is not None]
            for target in targets:
                target.to_up.pump()
            return
        if isinstance(event, h2.events.PushedStreamReceived):
            # We said ENABLE_PUSH 0; a push sent before our SETTINGS arrived is refused.
            if event.pushed_stream_id is not None:
                upstream.side.reset(event.pushed_stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if isinstance(event, h2.events.ConnectionTerminated):
            # Not expected (_FrameSplitter takes GOAWAY out) but handled the same way.
            last = event.last_stream_id if event.last_stream_id is not None else 0
            code = int(event.error_code) if event.error_code is not None else 0
            self._upstream_goaway(upstream, _GoAway(last, code))
            return
        stream_id = getattr(event, "stream_id", None)
        stream = upstream.streams.get(stream_id) if isinstance(stream_id, int) else None
        if stream is None:
            return
        if isinstance(event, h2.events.InformationalResponseReceived):
            self._relay_head(stream, list(event.headers), final=False, end=False)
        elif isinstance(event, h2.events.ResponseReceived):
            # A response head with END_STREAM (gRPC "trailers-only") must stay one frame:
            # gRPC reads its status from the END_STREAM HEADERS frame.
            self._relay_head(
                stream, list(event.headers), final=True, end=event.stream_ended is not None
            )
        elif isinstance(event, h2.events.TrailersReceived):
            stream.to_client.trailers = _trailers(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream.to_client.set_end()
        elif isinstance(event, h2.events.StreamReset):
            self._on_upstream_reset(stream, int(event.error_code))

    def _relay_head(
        self, stream: _Stream, headers: list[Header], *, final: bool, end: bool
    ) -> None:
        if stream.closed or stream.to_client.finished:
            return
        try:
            self.client.conn.send_headers(stream.client_id, headers, end_stream=end)
        except h2.exceptions.ProtocolError as exc:
            log.debug("client stream %d takes no response: %r", stream.client_id, exc)
            self._on_client_reset(stream, ErrorCodes.CANCEL)
            return
        stream.answered = stream.answered or final
        if end:
            stream.to_client.end = stream.to_client.finished = True
            self.check(stream)

    def _on_upstream_reset(self, stream: _Stream, code: int) -> None:
        stream.to_up.drop()
        if stream.to_client.end and code == ErrorCodes.NO_ERROR:
            # The response is complete (still flowing to the client); the upstream just
            # does not want the rest of the request. `check` ends the client stream after.
            self.check(stream)
            return
        self._reset_client(stream, _relayed_code(code, ErrorCodes.INTERNAL_ERROR))

    def _upstream_goaway(self, upstream: _Upstream, goaway: _GoAway) -> None:
        """The upstream takes no new streams; those it did not get to are refused (the client
        may retry them), queued ones go to a new connection."""
        log.debug(
            "upstream for %r sent GOAWAY (last stream %d, error code %d)",
            upstream.key,
            goaway.last_stream_id,
            goaway.error_code,
        )
        self._fail_waiting(upstream, _UPSTREAM_CLOSED)
        self._retire(upstream)
        for upstream_id, stream in list(upstream.streams.items()):
            if upstream_id > goaway.last_stream_id:
                stream.to_up.drop()
                self._reset_client(stream, ErrorCodes.REFUSED_STREAM)
        if goaway.error_code != ErrorCodes.NO_ERROR:
            reason = f"the upstream ended the connection ({goaway.error_code})"
            self._upstream_lost(upstream, reason)
        elif not upstream.streams:
            self._close_upstream(upstream, graceful=not upstream.lost)

    def _retire(self, upstream: _Upstream) -> None:
        upstream.accepting = False
        if self.pool.get(upstream.key) is upstream:
            del self.pool[upstream.key]
        queued = list(upstream.queue)
        upstream.queue.clear()
        for stream in queued:
            if not stream.closed:
                self._dispatch(stream)

    def _upstream_lost(self, upstream: _Upstream, reason: str) -> None:
        """The upstream connection ended or broke: streams without a complete response get
        our 502 (or gRPC UNAVAILABLE), or a reset when their response had begun."""
        if upstream.lost:
            return
        upstream.lost = True
        upstream.side.alive = False
        self._fail_waiting(upstream, reason)
        self._retire(upstream)
        text = unreachable_reason(upstream.key, ConnectionResetError(reason))
        for stream in list(upstream.streams.values()):
            stream.to_up.drop()
            if stream.to_client.end:
                self.check(stream)  # complete: let it flow out
            else:
                self.fail_stream(stream, text)
        self._close_upstream(upstream, graceful=False)

    def _close_upstream(self, upstream: _Upstream, *, graceful: bool) -> None:
        if self.upstreams.pop(upstream.conn_id, None) is None:
            return
        upstream.lost = True
        upstream.accepting = False
        if graceful and upstream.opened and upstream.side.alive:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                upstream.side.conn.close_connection()
            data = upstream.side.conn.data_to_send()
            if data:
                self._actions.append(SendUpstream(upstream.conn_id, data))
        upstream.side.alive = False
        self._actions.append(CloseUpstream(upstream.conn_id, graceful=graceful))

    # -- stream ends ----------------------------------------------------------------------

    def fail_stream(self, stream: _Stream, reason: str) -> None:
        """Answer a stream ourselves: the upstream is unreachable or went away."""
        if stream.closed:
            return
        stream.to_up.drop()
        if stream.answered:
            self._reset_client(stream, ErrorCodes.INTERNAL_ERROR)
            return
        stream.answered = True
        stream.to_client.chunks.clear()
        stream.to_client.src = None  # nothing more comes from an upstream
        try:
            if stream.grpc:
                # A gRPC "trailers-only" response: status UNAVAILABLE, which clients may retry.
                headers: list[Header] = [
                    (b":status", b"200"),
                    (b"content-type", b"application/grpc"),
                    (b"grpc-status", b"14"),
                    (b"grpc-message", _grpc_message(reason)),
                ]
                self.client.conn.send_headers(stream.client_id, headers, end_stream=True)
                stream.to_client.end = stream.to_client.finished = True
            else:
                body = (reason + "\n").encode("utf-8", "replace")
                headers = [
                    (b":status", b"502"),
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(body)).encode()),
                ]
                self.client.conn.send_headers(stream.client_id, headers)
                if stream.method != "HEAD":
                    stream.to_client.chunks.append((body, 0))
                stream.to_client.end = True
        except h2.exceptions.ProtocolError as exc:
            log.debug("client stream %d takes no answer: %r", stream.client_id, exc)
            self._close_stream(stream)
            return
        if stream.to_client.finished:
            self.check(stream)
        else:
            stream.to_client.pump()

    def check(self, stream: _Stream) -> None:
        """Close the stream once both directions are over. If the request cannot go anywhere
        any more while the client still sends it, a NO_ERROR reset tells the client to stop
        (RFC 9113, section 8.1)."""
        if stream.closed:
            return
        if stream.to_client.discard and not stream.to_client.finished:
            self._on_client_reset(stream, ErrorCodes.CANCEL)  # the client stream went away
            return
        if not stream.to_client.finished:
            return
        if stream.to_up.discard:
            if not stream.client_ended:
                self.client.reset(stream.client_id, ErrorCodes.NO_ERROR)
        elif not stream.to_up.finished:
            return  # the upstream still reads the request
        self._close_stream(stream)

    def _reset_client(self, stream: _Stream, code: int) -> None:
        self.client.reset(stream.client_id, code)
        self._close_stream(stream)

    def _close_stream(self, stream: _Stream) -> None:
        if stream.closed:
            return
        stream.closed = True
        stream.to_up.drop()
        stream.to_client.drop()
        self.streams.pop(stream.client_id, None)
        upstream = stream.upstream
        if upstream is not None:
            upstream.streams.pop(stream.upstream_id, None)
            if not upstream.accepting and not upstream.streams and not upstream.lost:
                self._close_upstream(upstream, graceful=True)  # retired after a GOAWAY, now idle
            else:
                upstream.open_streams()
        self._check_drained()


def request_head(headers: Sequence[Header]) -> RequestHead:
    """The RequestHead of an HTTP/2 request: `:method`, `:path` (for CONNECT `:authority`),
    and the regular headers; `:authority` is added as `host` when there is no `host` header,
    so that filters on Host work the same for HTTP/1 and HTTP/2 clients."""
    method = target = ""
    authority: str | None = None
    regular: list[tuple[str, str]] = []
    for raw_name, raw_value in headers:
        name, value = decode(raw_name), decode(raw_value)
        if name == ":method":
            method = value
        elif name == ":path":
            target = value
        elif name == ":authority":
            authority = value
        elif not name.startswith(":"):
            regular.append((name, value))
    if authority is not None:
        if not any(name == "host" for name, _ in regular):
            regular.insert(0, ("host", authority))
        if method == "CONNECT" and not target:
            target = authority
    return RequestHead(method=method, target=target, headers=tuple(regular), http2=True)


def _trailers(headers: Sequence[Header]) -> list[Header] | None:
    # An empty trailer block ends the stream like END_STREAM on DATA would; h2 cannot send
    # an empty header block (it fails with an IndexError), so it is relayed as that.
    return list(headers) or None


def _grpc_message(text: str) -> bytes:
    # grpc-message is percent-encoded: bytes outside printable ASCII, and "%" itself.
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in text.encode("utf-8")
    )
