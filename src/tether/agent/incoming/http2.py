"""HTTP/2 request routing (cleartext, prior knowledge; this is how gRPC talks): each stream of
a client connection is relayed on a stream of an upstream connection, one h2 connection per
route key.

We terminate the client's HTTP/2 connection with an h2 server connection and open h2 client
connections to the upstreams; streams are mapped both ways. All h2 state changes happen in
synchronous event handlers; what they produce is written by one writer task per connection
(so a slow peer never blocks the handling of another), and DATA obeys flow control on both
legs: data is acknowledged to its sender only once it was passed on, so a slow receiver
slows its sender down instead of filling our memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from tether.agent.incoming.pipes import Pipe
from tether.agent.incoming.routing import (
    Connect,
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
# How long an upstream may take to send its SETTINGS after we connected.
_HANDSHAKE_TIMEOUT = 10.0
# How long we try to get our last frames (GOAWAY) out when a connection ends.
_CLOSE_TIMEOUT = 1.0

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

Header = tuple[bytes, bytes]


def _relayed_code(code: int, fallback: ErrorCodes) -> int:
    return code if code in _RELAYED_CODES else fallback


# -- GOAWAY interception --------------------------------------------------------------------------


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
        out: list[bytes | _GoAway] = []
        passed = bytearray()
        pos = 0
        while pos < len(data):
            rest = len(data) - pos
            if self._skip or self._payload_left:
                n = min(self._skip or self._payload_left, rest)
                passed += data[pos : pos + n]
                if self._skip:
                    self._skip -= n
                else:
                    self._payload_left -= n
                pos += n
            elif self._goaway is not None:
                n = min(self._goaway_len - len(self._goaway), rest)
                self._goaway += data[pos : pos + n]
                pos += n
                if len(self._goaway) == self._goaway_len:
                    if passed:
                        out.append(bytes(passed))
                        passed.clear()
                    payload = self._goaway
                    out.append(
                        _GoAway(
                            int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
                            int.from_bytes(payload[4:8], "big"),
                        )
                    )
                    self._goaway = None
            else:
                n = min(_FRAME_HEADER - len(self._header), rest)
                self._header += data[pos : pos + n]
                pos += n
                if len(self._header) < _FRAME_HEADER:
                    continue
                length = int.from_bytes(self._header[0:3], "big")
                if self._header[3] == _GOAWAY_TYPE and 8 <= length <= _MAX_GOAWAY:
                    self._goaway = bytearray()
                    self._goaway_len = length
                else:  # any other frame (or a malformed GOAWAY, for h2 to reject)
                    passed += self._header
                    self._payload_left = length
                self._header.clear()
        if passed:
            out.append(bytes(passed))
        return out


# -- connections and streams ----------------------------------------------------------------------


class _Side:
    """One HTTP/2 connection we are an end of (the client's, or one to an upstream) and the
    task that writes what h2 has to send on it."""

    def __init__(self, pipe: Pipe, conn: h2.connection.H2Connection, name: str) -> None:
        self.pipe = pipe
        self.conn = conn
        self.name = name
        self.alive = True
        self.on_broken: Callable[[str], None] = lambda reason: None
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        # Our own SETTINGS: bigger windows than the defaults (see _STREAM_WINDOW).
        self.conn.initiate_connection()
        settings: dict[h2.settings.SettingCodes | int, int] = {
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _STREAM_WINDOW
        }
        if self.conn.config.client_side:
            settings[h2.settings.SettingCodes.ENABLE_PUSH] = 0
        self.conn.update_settings(settings)
        self.conn.increment_flow_control_window(_CONNECTION_WINDOW - _DEFAULT_WINDOW)
        self._writer = asyncio.create_task(self._write_loop())
        self.kick()

    def kick(self) -> None:
        """There may be something to send."""
        self._wake.set()

    def ack(self, size: int, stream_id: int) -> None:
        """Hand `size` flow-controlled bytes of a stream back to the peer."""
        if size and self.alive:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(size, stream_id)
            self.kick()

    def reset(self, stream_id: int, code: int) -> None:
        if self.alive:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.reset_stream(stream_id, code)
            self.kick()

    async def _write_loop(self) -> None:
        try:
            while True:
                if not self._closing:
                    await self._wake.wait()
                self._wake.clear()
                data = self.conn.data_to_send()
                if data:
                    await self.pipe.write(data)
                elif self._closing:
                    return
        except OSError as exc:
            self.alive = False
            self.on_broken(f"writing failed: {exc}")

    def abort(self) -> None:
        """Reset the connection at once (no waiting)."""
        self._closed = True
        self.alive = False
        if self._writer is not None:
            self._writer.cancel()
        self.pipe.abort()

    async def close(self, *, graceful: bool) -> None:
        """Send a GOAWAY and what is still queued (if `graceful`), then close the pipe."""
        if self._closed:
            return
        self._closed = True
        self.alive = False
        try:
            if graceful and self._writer is not None and not self._writer.done():
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.conn.close_connection()
                self._closing = True
                self.kick()
                await asyncio.wait({self._writer}, timeout=_CLOSE_TIMEOUT)
            if self._writer is not None:
                await _cancel(self._writer)
            if graceful:
                with contextlib.suppress(OSError):
                    await self.pipe.close()
            else:
                self.pipe.abort()
        except asyncio.CancelledError:
            self.pipe.abort()
            raise


class _Half:
    """One direction of a relayed stream: data the source sent that the destination has not
    taken yet (waiting for flow-control window), then the trailers or the end of the stream.
    Data is acknowledged to the source as it leaves."""

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
        dst.kick()
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
        router: _Http2Router,
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
        self.to_up.src, self.to_up.src_id = router.client, client_id
        self.to_client = _Half()  # the response
        self.to_client.dst, self.to_client.dst_id = router.client, client_id
        self.to_up.on_finished = self.to_client.on_finished = lambda: router.check(self)


class _Upstream:
    """An h2 client connection to one route key's upstream."""

    def __init__(self, router: _Http2Router, key: Hashable | None, pipe: Pipe) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.side = _Side(pipe, h2.connection.H2Connection(config=config), "upstream")
        self.router = router
        self.key = key
        self.streams: dict[int, _Stream] = {}  # by upstream stream id
        self.queue: collections.deque[_Stream] = collections.deque()  # waiting for a slot
        self.accepting = True  # takes new streams (no GOAWAY, not failed)
        self.lost = False
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.splitter = _FrameSplitter()
        self.reader: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.side.on_broken = lambda reason: self.router.upstream_lost(self, reason)
        self.side.start()
        self.reader = asyncio.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        reason = "the upstream closed the connection"
        try:
            while data := await self.side.pipe.read():
                self.router.feed_upstream(self, data)
                if self.lost:
                    return
        except OSError as exc:
            reason = f"the upstream connection broke: {exc}"
        except Exception as exc:
            log.debug("relaying from the upstream failed", exc_info=True)
            reason = f"tether failed: {exc!r}"
        self.router.upstream_lost(self, reason)

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
            self.router.fail_stream(stream, f"tether: the request could not be relayed ({exc})")
            return
        stream.upstream, stream.upstream_id = self, upstream_id
        self.streams[upstream_id] = stream
        request.dst, request.dst_id = self.side, upstream_id
        stream.to_client.src, stream.to_client.src_id = self.side, upstream_id
        self.side.kick()
        if end:
            request.finished = True
            self.router.check(stream)
        else:
            request.pump()

    def abort(self) -> None:
        self.accepting = False
        self.lost = True
        if self.reader is not None:
            self.reader.cancel()
        self.side.abort()

    async def close(self, *, graceful: bool) -> None:
        self.accepting = False
        self.lost = True
        if self.reader is not None and self.reader is not asyncio.current_task():
            await _cancel(self.reader)
        await self.side.close(graceful=graceful)


class _Http2Router:
    """Serves one HTTP/2 client connection."""

    def __init__(self, client: Pipe, decide: Decide, connect: Connect) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.client = _Side(client, h2.connection.H2Connection(config=config), "client")
        self.decide = decide
        self.connect = connect
        self.splitter = _FrameSplitter(skip=len(PREFACE))
        self.streams: dict[int, _Stream] = {}  # by client stream id
        self.pool: dict[Hashable | None, _Upstream] = {}  # upstreams taking new streams
        self.waiting: dict[Hashable | None, list[_Stream]] = {}  # for their key's connect
        self.connecting: dict[Hashable | None, asyncio.Task[None]] = {}
        self.upstreams: list[_Upstream] = []  # every one we opened
        self.tasks: set[asyncio.Task[None]] = set()
        self.draining = False  # the client sent GOAWAY: end when its streams are done
        self.done = asyncio.Event()

    # -- the client connection ------------------------------------------------------------

    async def serve(self, first: bytes) -> None:
        self.client.on_broken = lambda reason: self.done.set()
        self.client.start()
        reader = asyncio.create_task(self._read_client(first))
        try:
            await self.done.wait()
            graceful = self.client.alive
            await _cancel(reader)
            for task in list(self.tasks):
                await _cancel(task)
            for upstream in self.upstreams:
                await upstream.close(graceful=graceful)
            await self.client.close(graceful=graceful)
        except asyncio.CancelledError:
            # No awaiting here: a cancelled task must not be stopped halfway through cleanup.
            reader.cancel()
            for task in self.tasks:
                task.cancel()
            for upstream in self.upstreams:
                upstream.abort()
            self.client.abort()
            raise

    async def _read_client(self, first: bytes) -> None:
        try:
            data = first
            while data and not self.done.is_set():
                self._feed_client(data)
                if self.done.is_set():
                    break
                data = await self.client.pipe.read()
        except OSError as exc:
            log.debug("HTTP/2 client connection broke: %r", exc)
        finally:
            self.done.set()

    def _feed_client(self, data: bytes) -> None:
        for item in self.splitter.feed(data):
            if isinstance(item, _GoAway):
                log.debug("client sent GOAWAY (error code %d)", item.error_code)
                self.draining = True
                if item.error_code != ErrorCodes.NO_ERROR:
                    self.done.set()
                continue
            try:
                events = self.client.conn.receive_data(item)
            except h2.exceptions.ProtocolError as exc:
                # h2 queued a GOAWAY for the client; it goes out as we close.
                log.debug("HTTP/2 protocol error from the client: %r", exc)
                self.done.set()
                return
            for event in events:
                self._on_client_event(event)
        self.client.kick()
        self._check_drained()

    def _on_client_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
            return
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            # More room towards the client: responses waiting for it may go on.
            sid = event.stream_id if isinstance(event, h2.events.WindowUpdated) else 0
            targets = list(self.streams.values()) if sid == 0 else [self.streams.get(sid)]
            for stream in targets:
                if stream is not None:
                    stream.to_client.pump()
            return
        stream_id = getattr(event, "stream_id", None)
        stream = self.streams.get(stream_id) if isinstance(stream_id, int) else None
        if isinstance(event, h2.events.DataReceived):
            if stream is None:
                self.client.ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.to_up.push(event.data, event.flow_controlled_length)
        elif isinstance(event, h2.events.TrailersReceived):
            if stream is not None:
                stream.to_up.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            if stream is not None:
                stream.client_ended = True
                stream.to_up.set_end()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
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

    def _check_drained(self) -> None:
        if self.draining and not self.streams:
            self.done.set()

    # -- routing to upstreams -------------------------------------------------------------

    def _dispatch(self, stream: _Stream) -> None:
        upstream = self.pool.get(stream.key)
        if upstream is not None:
            upstream.enqueue(stream)
            return
        self.waiting.setdefault(stream.key, []).append(stream)
        if stream.key not in self.connecting:
            task = asyncio.create_task(self._connect(stream.key))
            self.connecting[stream.key] = task
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, key: Hashable | None) -> None:
        upstream: _Upstream | None = None
        try:
            pipe = await self.connect(key)
            upstream = _Upstream(self, key, pipe)
            self.upstreams.append(upstream)
            upstream.start()
            async with asyncio.timeout(_HANDSHAKE_TIMEOUT):
                await upstream.handshake
            if upstream.lost:  # it sent its SETTINGS, then went away at once
                raise ConnectionResetError("the upstream closed the connection")
        except Exception as exc:
            if upstream is not None:
                self.upstream_lost(upstream, str(exc))
            self.connecting.pop(key, None)
            reason = unreachable_reason(key, exc)
            log.debug("HTTP/2 upstream for %r: %s", key, reason)
            for stream in self.waiting.pop(key, []):
                self.fail_stream(stream, reason)
            self._check_drained()
            return
        self.connecting.pop(key, None)
        self.pool[key] = upstream
        for stream in self.waiting.pop(key, []):
            if not stream.closed:
                upstream.enqueue(stream)

    def feed_upstream(self, upstream: _Upstream, data: bytes) -> None:
        for item in upstream.splitter.feed(data):
            if isinstance(item, _GoAway):
                self._upstream_goaway(upstream, item)
            else:
                try:
                    events = upstream.side.conn.receive_data(item)
                except h2.exceptions.ProtocolError as exc:
                    upstream.side.kick()
                    self.upstream_lost(upstream, f"bad HTTP/2 from the upstream: {exc}")
                    return
                for event in events:
                    self._on_upstream_event(upstream, event)
            if upstream.lost:
                return
        upstream.side.kick()
        self.client.kick()
        upstream.open_streams()

    def _on_upstream_event(self, upstream: _Upstream, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            if not upstream.handshake.done():
                upstream.handshake.set_result(None)
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
        if isinstance(event, h2.events.DataReceived):
            if stream is None:
                upstream.side.ack(event.flow_controlled_length, event.stream_id)
            else:
                stream.to_client.push(event.data, event.flow_controlled_length)
        elif stream is None:
            return
        elif isinstance(event, h2.events.InformationalResponseReceived):
            self._relay_head(stream, list(event.headers), final=False, end=False)
        elif isinstance(event, h2.events.ResponseReceived):
            # A response head with END_STREAM (gRPC "trailers-only") must stay one frame:
            # gRPC reads its status from the END_STREAM HEADERS frame.
            self._relay_head(
                stream, list(event.headers), final=True, end=event.stream_ended is not None
            )
        elif isinstance(event, h2.events.TrailersReceived):
            stream.to_client.trailers = list(event.headers)
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
        self.client.kick()
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
        self._retire(upstream)
        for upstream_id, stream in list(upstream.streams.items()):
            if upstream_id > goaway.last_stream_id:
                stream.to_up.drop()
                self._reset_client(stream, ErrorCodes.REFUSED_STREAM)
        if goaway.error_code != ErrorCodes.NO_ERROR:
            self.upstream_lost(upstream, f"the upstream ended the connection ({goaway.error_code})")
        elif not upstream.streams:
            self._close_upstream(upstream)

    def _retire(self, upstream: _Upstream) -> None:
        upstream.accepting = False
        if self.pool.get(upstream.key) is upstream:
            del self.pool[upstream.key]
        queued = list(upstream.queue)
        upstream.queue.clear()
        for stream in queued:
            if not stream.closed:
                self._dispatch(stream)

    def upstream_lost(self, upstream: _Upstream, reason: str) -> None:
        """The upstream connection ended or broke: streams without a complete response get
        our 502 (or gRPC UNAVAILABLE), or a reset when their response had begun."""
        if upstream.lost:
            return
        upstream.lost = True
        upstream.side.alive = False
        if not upstream.handshake.done():
            upstream.handshake.set_exception(ConnectionResetError(reason))
            upstream.handshake.exception()  # retrieved: _connect reports it
        self._retire(upstream)
        text = unreachable_reason(upstream.key, ConnectionResetError(reason))
        for stream in list(upstream.streams.values()):
            stream.to_up.drop()
            if stream.to_client.end:
                self.check(stream)  # complete: let it flow out
            else:
                self.fail_stream(stream, text)
        self._close_upstream(upstream)

    def _close_upstream(self, upstream: _Upstream) -> None:
        graceful = not upstream.lost
        upstream.lost = True
        task = asyncio.create_task(upstream.close(graceful=graceful))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # -- stream ends ------------------------------------------------------------------------

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
        self.client.kick()
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
                self._close_upstream(upstream)  # retired after a GOAWAY, now idle
            else:
                upstream.open_streams()
        self._check_drained()


async def serve_http2(client: Pipe, first: bytes, decide: Decide, connect: Connect) -> None:
    """Route the streams of one HTTP/2 client connection (see `router.route_http`); `first`
    starts with the connection preface."""
    await _Http2Router(client, decide, connect).serve(first)


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


def _grpc_message(text: str) -> bytes:
    # grpc-message is percent-encoded: bytes outside printable ASCII, and "%" itself.
    return b"".join(
        bytes([b]) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
        for b in text.encode("utf-8")
    )


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it is over, whatever it ended with."""
    if task is asyncio.current_task():
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("helper task ended with %r", exc, exc_info=exc)
