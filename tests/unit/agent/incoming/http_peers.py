"""Real loopback peers for the HTTP router tests: a router listener, HTTP/1 (h11) and HTTP/2
(h2) servers that say who they are, and clients."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import re
import socket
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h11

from tether.agent.incoming.filters import HttpFilter
from tether.agent.incoming.pipes import Pipe, SocketPipe
from tether.agent.incoming.router import RequestHead, route_http

LOOPBACK = "127.0.0.1"
Header = tuple[bytes, bytes]


def alice_filter() -> HttpFilter:
    """The filter most tests use: requests with `x-dev: alice` go to the local app."""
    return HttpFilter(headers=(re.compile(r"^x-dev: alice$"),))


def filters_decide(
    filters: Sequence[tuple[Hashable, HttpFilter]], seen: list[RequestHead] | None = None
) -> Callable[[RequestHead], Hashable | None]:
    """A Decide over (key, filter) pairs, first match wins (probes per the filter)."""

    def decide(head: RequestHead) -> Hashable | None:
        if seen is not None:
            seen.append(head)
        for key, f in filters:
            if f.takes(head.method, head.target, head.headers):
                return key
        return None

    return decide


async def closed_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    server = await asyncio.start_server(lambda r, w: None, LOOPBACK, 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


class Router:
    """A loopback listener running `route_http` on every connection."""

    def __init__(
        self, decide: Callable[[RequestHead], Hashable | None], ports: dict[Hashable, int]
    ) -> None:
        self.decide = decide
        self.ports = ports  # route key (None = original) -> upstream port
        self.connects: collections.Counter[Hashable] = collections.Counter()
        # What the first read of each connection got (before `route_http` sees it).
        self.first_reads: asyncio.Queue[bytes] = asyncio.Queue()
        self.finished = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, LOOPBACK, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def connect(self, key: Hashable | None) -> Pipe:
        self.connects[key] += 1
        reader, writer = await asyncio.open_connection(LOOPBACK, self.ports[key])
        return SocketPipe(reader, writer)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._idle.clear()
        try:
            first = await reader.read(65536)
            self.first_reads.put_nowait(first)
            if first:
                await route_http(SocketPipe(reader, writer), first, self.decide, self.connect)
                self.finished += 1
        except asyncio.CancelledError:
            # Cancelled by close(); ending normally keeps asyncio's server callback quiet.
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
            if not self._tasks:
                self._idle.set()

    async def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until every routed connection is over."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()


class _Peers:
    """Connections accepted by a test server, to count them and to close them at the end."""

    def __init__(self) -> None:
        self.port = 0
        self.accepted = 0
        self.open = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._all_closed = asyncio.Event()
        self._all_closed.set()

    async def _listen(
        self,
        handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any],
        sock: socket.socket | None = None,
    ) -> int:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            self._writers.add(writer)
            self.accepted += 1
            self.open += 1
            self._all_closed.clear()
            try:
                await handler(reader, writer)
            except (OSError, h11.ProtocolError, h2.exceptions.ProtocolError):
                pass
            except asyncio.CancelledError:
                pass  # by close(); ending normally keeps asyncio's server callback quiet
            finally:
                self.open -= 1
                if not self.open:
                    self._all_closed.set()
                self._writers.discard(writer)
                self._tasks.discard(task)
                writer.close()

        if sock is None:
            self._server = await asyncio.start_server(wrapped, LOOPBACK, 0)
        else:
            self._server = await asyncio.start_server(wrapped, sock=sock)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def wait_all_closed(self, timeout: float = 5.0) -> None:
        """Wait until every accepted connection is over."""
        async with asyncio.timeout(timeout):
            await self._all_closed.wait()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()


# -- HTTP/1 ----------------------------------------------------------------------------------------


@dataclass
class Seen:
    """A request as a test server received it."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


class H1Server(_Peers):
    """An HTTP/1.1 server (h11) answering "<name> <method> <target> <body length>" and
    `X-Server: <name>`; some paths behave specially (see `_respond`)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.seen: list[Seen] = []
        self.gate = asyncio.Event()  # /stream waits for it between its two parts

    async def start(self, sock: socket.socket | None = None) -> int:
        """Listen on loopback, or on `sock` (a listening socket, e.g. one made in another
        network namespace)."""
        return await self._listen(self._serve, sock)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)

        async def next_event() -> Any:
            while True:
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
                conn.receive_data(await reader.read(65536))

        async def send(*events: Any) -> None:
            writer.write(b"".join(conn.send(e) or b"" for e in events))
            await writer.drain()

        while True:
            request = await next_event()
            if not isinstance(request, h11.Request):
                return
            target = request.target.decode()
            seen = Seen(request.method.decode(), target, list(request.headers.raw_items()))
            self.seen.append(seen)
            path = urlsplit(target).path
            headers = [(b"X-Server", self.name.encode())]
            if request.method == b"CONNECT":
                await next_event()  # EndOfMessage
                await send(h11.Response(status_code=200, headers=headers))
                await self._echo(conn, reader, writer)
                return
            if path == "/upgrade":
                await next_event()  # EndOfMessage
                await send(
                    h11.InformationalResponse(
                        status_code=101,
                        headers=[*headers, (b"Upgrade", b"echo"), (b"Connection", b"Upgrade")],
                    )
                )
                await self._echo(conn, reader, writer)
                return
            digest = hashlib.sha256()
            length = 0
            body = bytearray()
            while True:
                event = await next_event()
                if isinstance(event, h11.EndOfMessage):
                    break
                assert isinstance(event, h11.Data)
                digest.update(event.data)
                length += len(event.data)
                if length <= 1 << 16:
                    body += event.data
            seen.body = bytes(body)
            await self._respond(send, request, path, target, headers, length, digest)
            if conn.our_state is h11.MUST_CLOSE or path == "/then-close":
                return
            conn.start_next_cycle()

    async def _echo(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """After a protocol switch: echo raw bytes, each read prefixed with our name."""
        rest, _ = conn.trailing_data
        prefix = self.name.encode() + b":"
        if rest:
            writer.write(prefix + rest)
        while data := await reader.read(65536):
            writer.write(prefix + data)
            await writer.drain()
        writer.write_eof()

    async def _respond(
        self,
        send: Callable[..., Any],
        request: h11.Request,
        path: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        length: int,
        digest: Any,
    ) -> None:
        if path == "/big":
            size = int(parse_qs(urlsplit(target).query)["n"][0])
            await send(
                h11.Response(
                    status_code=200, headers=[*headers, (b"Content-Length", str(size).encode())]
                )
            )
            block = bytes(range(256)) * 256
            sent = 0
            while sent < size:
                part = block[: size - sent]
                await send(h11.Data(data=part))
                sent += len(part)
            await send(h11.EndOfMessage())
            return
        if path == "/die":
            # Half a response, then the connection is reset.
            await send(
                h11.Response(status_code=200, headers=[*headers, (b"Content-Length", b"100")])
            )
            await send(h11.Data(data=b"only part"))
            raise ConnectionResetError("dying on purpose")
        if path == "/stream":
            await send(h11.Response(status_code=200, headers=headers))
            await send(h11.Data(data=b"first part;"))
            await self.gate.wait()
            await send(h11.Data(data=b"second part"), h11.EndOfMessage())
            return
        if path == "/sha":
            text = f"{self.name} {length} {digest.hexdigest()}".encode()
        else:
            text = f"{self.name} {request.method.decode()} {target} {length}".encode()
        await send(
            h11.Response(
                status_code=200, headers=[*headers, (b"Content-Length", str(len(text)).encode())]
            )
        )
        if request.method != b"HEAD":
            await send(h11.Data(data=text))
        await send(h11.EndOfMessage())


@dataclass
class Reply:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.decode().lower() == name.lower():
                return value.decode()
        return None

    @property
    def server(self) -> str | None:
        return self.header("x-server")


class H1Client:
    """An HTTP/1.1 client (h11) on one connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, port: int) -> H1Client:
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        return cls(reader, writer)

    async def send(self, *events: Any) -> None:
        self.writer.write(b"".join(self.conn.send(e) or b"" for e in events))
        await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.conn.receive_data(await self.reader.read(65536))

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | Iterable[bytes] = b"",
    ) -> Reply:
        hdrs = [(b"Host", b"example"), *((k.encode(), v.encode()) for k, v in headers)]
        parts = [body] if isinstance(body, bytes) else list(body)
        if isinstance(body, bytes):
            if body or method in ("POST", "PUT"):
                hdrs.append((b"Content-Length", str(len(body)).encode()))
        else:
            hdrs.append((b"Transfer-Encoding", b"chunked"))
        await self.send(h11.Request(method=method, target=target, headers=hdrs))
        for part in parts:
            if part:
                await self.send(h11.Data(data=part))
        await self.send(h11.EndOfMessage())
        return await self.read_reply()

    async def read_reply(self) -> Reply:
        event = await self.next_event()
        assert isinstance(event, h11.Response), event
        body = bytearray()
        while True:
            part = await self.next_event()
            if isinstance(part, h11.EndOfMessage):
                break
            body += part.data
        reply = Reply(event.status_code, list(event.headers.raw_items()), bytes(body))
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return reply

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def read_pipelined(reader: asyncio.StreamReader, requests: Sequence[str]) -> list[Reply]:
    """Parse the replies to pipelined bodyless requests ("METHOD target") from `reader`."""
    conn = h11.Connection(h11.CLIENT)
    replies: list[Reply] = []
    for line in requests:
        method, target = line.split(" ", 1)
        # h11 needs to have "sent" the request to parse its response (HEAD has no body...).
        conn.send(h11.Request(method=method, target=target, headers=[(b"Host", b"x")]))
        conn.send(h11.EndOfMessage())
        head: Any = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
                continue
            if isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        replies.append(Reply(head.status_code, list(head.headers.raw_items()), bytes(body)))
        conn.start_next_cycle()
    return replies


# -- HTTP/2 ----------------------------------------------------------------------------------------


class H2Endpoint:
    """One h2 connection over asyncio streams with flow-controlled sending; events are given
    to `on_event` by a reader task."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        conn: h2.connection.H2Connection,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.window_changed = asyncio.Event()
        self.closed = asyncio.Event()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    async def run(self, on_event: Callable[[h2.events.Event], None]) -> None:
        try:
            while data := await self.reader.read(65536):
                for event in self.conn.receive_data(data):
                    if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
                        self.window_changed.set()
                    on_event(event)
                self.flush()
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            self.window_changed.set()

    async def send_body(self, stream_id: int, body: bytes) -> None:
        """Send `body` as the window allows, then end the stream."""
        view = memoryview(body)
        while view:
            room = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if room <= 0:
                if self.closed.is_set():
                    raise ConnectionResetError("connection closed")
                self.window_changed.clear()
                await self.window_changed.wait()
                continue
            self.conn.send_data(stream_id, bytes(view[:room]))
            view = view[room:]
            self.flush()
            await self.writer.drain()
        self.conn.end_stream(stream_id)
        self.flush()
        await self.writer.drain()


@dataclass
class H2Exchange:
    """One stream's response as the test client got it."""

    headers: list[Header] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    reset: int | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    got_headers: asyncio.Event = field(default_factory=asyncio.Event)

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def status(self) -> int:
        return int(self.header(b":status") or b"0")


class H2Client:
    """An HTTP/2 client (h2, prior knowledge) with concurrent streams."""

    def __init__(self, endpoint: H2Endpoint) -> None:
        self.ep = endpoint
        self.exchanges: dict[int, H2Exchange] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        split_preface: int = 0,
        between: Callable[[], Awaitable[object]] | None = None,
    ) -> H2Client:
        """Connect; with `split_preface`, the first bytes go out in two writes, split there,
        the second once `between()` is over (say, once the router has read the first)."""
        reader, writer = await asyncio.open_connection(LOOPBACK, port)
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        client = cls(H2Endpoint(reader, writer, conn))
        if split_preface:
            assert between is not None
            data = conn.data_to_send()
            writer.write(data[:split_preface])
            await writer.drain()
            await between()
            writer.write(data[split_preface:])
        client.ep.flush()
        client._task = asyncio.create_task(client.ep.run(client._on_event))
        return client

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            for pending in self.exchanges.values():
                pending.done.set()
            return
        sid = getattr(event, "stream_id", None)
        exchange = self.exchanges.get(sid) if isinstance(sid, int) else None
        if exchange is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            exchange.headers = list(event.headers)
            exchange.got_headers.set()
        elif isinstance(event, h2.events.DataReceived):
            exchange.body += event.data
            self.ep.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            exchange.done.set()
        elif isinstance(event, h2.events.StreamReset):
            exchange.reset = int(event.error_code)
            exchange.done.set()
            exchange.got_headers.set()

    async def start(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
    ) -> int:
        """Open a stream (and send `body`), ending it; its id."""
        conn = self.ep.conn
        sid = conn.get_next_available_stream_id()
        self.exchanges[sid] = H2Exchange()
        hdrs = [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            *((k.encode(), v.encode()) for k, v in headers),
        ]
        conn.send_headers(sid, hdrs, end_stream=body is None)
        self.ep.flush()
        if body is not None:
            await self.ep.send_body(sid, body)
        return sid

    async def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        timeout: float = 10.0,
    ) -> H2Exchange:
        sid = await self.start(path, method=method, headers=headers, body=body)
        return await self.wait(sid, timeout)

    async def wait(self, sid: int, timeout: float = 10.0) -> H2Exchange:
        exchange = self.exchanges[sid]
        async with asyncio.timeout(timeout):
            await exchange.done.wait()
        return exchange

    async def close(self) -> None:
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.ep.conn.close_connection()
            self.ep.flush()
        self.ep.writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])
        with contextlib.suppress(OSError):
            await self.ep.writer.wait_closed()


class H2Server(_Peers):
    """An HTTP/2 server (h2) answering "<name> <method> <path> <body length>" with
    `x-server: <name>`; /echo echoes the body, /big?n= sends n bytes, /hang answers the head
    and never ends, /drop drops the connection, /goaway answers and sends GOAWAY with it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.paths: list[str] = []

    async def start(self) -> int:
        return await self._listen(self._serve)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        ep = H2Endpoint(reader, writer, conn)
        ep.flush()
        requests: dict[int, tuple[list[Header], bytearray]] = {}
        tasks: set[asyncio.Task[None]] = set()

        def on_event(event: h2.events.Event) -> None:
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = (list(event.headers), bytearray())
            elif isinstance(event, h2.events.DataReceived):
                _, body = requests[event.stream_id]
                body.extend(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):  # (also after RequestReceived)
                headers, body = requests[event.stream_id]
                task = asyncio.create_task(self._respond(ep, event.stream_id, headers, body))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        try:
            await ep.run(on_event)
        finally:
            for task in list(tasks):
                task.cancel()
            if tasks:
                await asyncio.wait(list(tasks))

    async def _respond(
        self, ep: H2Endpoint, sid: int, headers: list[Header], body: bytearray
    ) -> None:
        h = dict(headers)
        method, target = h[b":method"].decode(), h[b":path"].decode()
        path = urlsplit(target).path
        self.paths.append(path)
        head = [(b":status", b"200"), (b"x-server", self.name.encode())]
        try:
            if path == "/hang":
                ep.conn.send_headers(sid, head)
                ep.flush()
                return
            if path == "/drop":
                ep.writer.transport.abort()
                return
            if path == "/echo":
                data = bytes(body)
            elif path == "/big":
                n = int(parse_qs(urlsplit(target).query)["n"][0])
                data = (bytes(range(256)) * (n // 256 + 1))[:n]
            else:
                data = f"{self.name} {method} {target} {len(body)}".encode()
            ep.conn.send_headers(sid, head)
            if path == "/goaway":
                # The whole answer and a GOAWAY in one write, so the peer reads them together
                # (it cannot start another stream on this connection in between). The
                # connection stays open: the peer, done with it, closes it.
                ep.conn.send_data(sid, data, end_stream=True)
                ep.conn.close_connection(last_stream_id=sid)
                ep.flush()
                return
            ep.flush()
            await ep.send_body(sid, data)
        except (h2.exceptions.ProtocolError, OSError):
            pass


def h2_body(exchange: H2Exchange) -> str:
    return bytes(exchange.body).decode(errors="replace")
