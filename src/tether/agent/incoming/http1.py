"""HTTP/1.x request routing: each request of a client connection goes to the upstream its
route key names (the original app, or a session's local app).

h11 parses both sides: a server-role connection for the client and a client-role connection
per upstream, so message framing (Content-Length, chunked, read-until-close) is re-done by
h11 on each side while bodies stream through chunk by chunk. Requests are served strictly in
order: h11 keeps later pipelined requests buffered until the current response is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, cast

import h11

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

# How long, and for how many bytes, we keep reading (and dropping) what a client still sends
# after we decided to close its connection. Closing a socket with unread data makes the
# kernel send RST, which can destroy the response still on its way to the client.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20

Headers = list[tuple[bytes, bytes]]
# What h11's next_event gives once NEED_DATA is dealt with.
_Event = h11.Event | type[h11.PAUSED]


class _UpstreamError(Exception):
    """The upstream could not be reached, or broke the exchange (closed, reset, garbage)."""

    def __init__(self, reason: str, *, answered: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        # Whether a response head had already been relayed to the client (then the client
        # connection cannot be saved).
        self.answered = answered


class _Outcome(enum.Enum):
    DONE = "done"  # the response is complete
    SWITCHED = "switched"  # protocol switched (101 / 2xx to CONNECT): splice bytes now


class _Upstream:
    """A client-role h11 connection to one route key's upstream, kept across requests."""

    def __init__(self, key: Hashable | None, pipe: Pipe) -> None:
        self.key = key
        self.pipe = pipe
        self.conn = h11.Connection(h11.CLIENT)
        self.reused = False  # it has served a request before
        self.broken = False  # writing to it failed: stop forwarding, drop it afterwards
        # A read in progress. Between requests we keep one running (`watch`) so that we learn
        # when the upstream closed an idle keep-alive connection before we send on it.
        self._pending: asyncio.Future[bytes] | None = None

    async def read(self) -> bytes:
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.pipe.read())
        try:
            return await self._pending
        finally:
            self._pending = None

    def watch(self) -> None:
        """Start reading while idle, so that `stale` can tell when the upstream closed."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.pipe.read())

    def stale(self) -> bool:
        """Whether the idle connection ended or sent something unasked (either way unusable)."""
        return self._pending is not None and self._pending.done()

    async def next_event(self) -> _Event:
        """The next event from the upstream; raises _UpstreamError if it breaks."""
        try:
            while True:
                event = self.conn.next_event()
                if event is not h11.NEED_DATA:
                    return cast(_Event, event)
                self.conn.receive_data(await self.read())
        except h11.RemoteProtocolError as exc:
            raise _UpstreamError(f"bad HTTP from the upstream: {exc}") from None
        except OSError as exc:
            raise _UpstreamError(f"the upstream connection broke: {exc}") from None

    async def send(self, *events: h11.Event) -> None:
        """Send events to the upstream; raises _UpstreamError if it cannot take them."""
        data = b"".join(self.conn.send(event) or b"" for event in events)
        if data:
            try:
                await self.pipe.write(data)
            except OSError as exc:
                raise _UpstreamError(f"the upstream connection broke: {exc}") from None

    def abort(self) -> None:
        """Reset the connection at once (no waiting)."""
        self.broken = True
        if self._pending is not None:
            self._pending.cancel()
        self.pipe.abort()

    async def close(self) -> None:
        self.broken = True
        if self._pending is not None:
            await _cancel(self._pending)
            self._pending = None
        with contextlib.suppress(OSError):
            await self.pipe.close()


class _Http1Router:
    """Serves one HTTP/1.x client connection."""

    def __init__(self, client: Pipe, decide: Decide, connect: Connect) -> None:
        self.client = client
        self.decide = decide
        self.connect = connect
        self.conn = h11.Connection(h11.SERVER)
        self.client_eof = False
        self.pool: dict[Hashable | None, _Upstream] = {}
        self.opened: list[_Upstream] = []

    # -- the connection ---------------------------------------------------------------------

    async def serve(self, first: bytes) -> None:
        self.conn.receive_data(first)
        try:
            graceful = False
            try:
                await self._serve_requests()
                graceful = True
            except h11.RemoteProtocolError as exc:
                log.debug("bad HTTP/1 request from the client: %s", exc)
                graceful = await self._reject(exc)
            except (OSError, h11.LocalProtocolError, _UpstreamError) as exc:
                log.debug("HTTP/1 connection ended: %r", exc)
            except Exception:
                log.debug("HTTP/1 connection failed", exc_info=True)
            for upstream in self.opened:
                await upstream.close()
            if graceful:
                await self._close_client()
            else:
                self.client.abort()
                with contextlib.suppress(OSError):
                    await self.client.close()
        except asyncio.CancelledError:
            # No awaiting here: a cancelled task must not be stopped halfway through cleanup.
            for upstream in self.opened:
                upstream.abort()
            self.client.abort()
            raise

    async def _serve_requests(self) -> None:
        while True:
            event = await self._next_client_event()
            if not isinstance(event, h11.Request):
                return  # ConnectionClosed: the client is done
            if not await self._exchange(event):
                return
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # one side asked for the connection to close
            self.conn.start_next_cycle()

    async def _next_client_event(self) -> _Event:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return cast(_Event, event)
            data = await self.client.read()
            self.client_eof = not data
            self.conn.receive_data(data)

    async def _send_client(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.client.write(data)

    # -- one request --------------------------------------------------------------------------

    async def _exchange(self, request: h11.Request) -> bool:
        """Relay one request and its response; False when the connection is over."""
        head = RequestHead(
            method=decode(request.method),
            target=decode(request.target),
            headers=tuple((decode(n), decode(v)) for n, v in request.headers.raw_items()),
            http2=False,
        )
        key = safe_decide(self.decide, head)
        outgoing = _upstream_request(request)
        has_body = _has_body(request)
        if not has_body:
            # h11 hands out the EndOfMessage of a bodyless request without reading more;
            # taking it now makes the whole request replayable on a fresh connection.
            await self._next_client_event()

        body_task: asyncio.Task[None] | None = None
        try:
            for attempt in (1, 2):
                try:
                    upstream = await self._upstream(key)
                except _UpstreamError as exc:
                    await self._answer_unreachable(request, exc.reason)
                    return await self._after_answering(None)
                # A kept-alive upstream may have closed just as we send: a bodyless request
                # is then simply retried once on a new connection.
                retry = upstream.reused and not has_body and attempt == 1
                try:
                    if has_body:
                        await upstream.send(outgoing)
                        body_task = asyncio.create_task(self._relay_request_body(upstream))
                    else:
                        await upstream.send(outgoing, h11.EndOfMessage())
                    outcome = await self._relay_response(upstream, request, body_task)
                except _UpstreamError as exc:
                    await self._drop(upstream)
                    if exc.answered:
                        raise  # the client has half a response: its connection cannot go on
                    if retry:
                        log.debug("kept-alive upstream went away (%s); retrying", exc.reason)
                        continue
                    await self._answer_unreachable(request, unreachable_reason(key, exc))
                    return await self._after_answering(body_task)
                break
            else:  # pragma: no cover - the loop always breaks or returns
                return False
            if outcome is _Outcome.SWITCHED:
                await self._drop(upstream, close=False)
                await self._splice(upstream)
                return False
            await self._after_answering(body_task)
            await self._release(upstream)
            return True
        finally:
            if body_task is not None:
                await _cancel(body_task)

    async def _after_answering(self, body_task: asyncio.Task[None] | None) -> bool:
        """Once the response is out: finish reading the request body (still streaming to the
        upstream, or dropped if the upstream is gone) so that the next request can be read.
        False when the connection closes instead."""
        if self.conn.our_state is h11.MUST_CLOSE:
            return False
        if body_task is not None:
            await _settle(body_task)
        while self.conn.their_state is h11.SEND_BODY:
            event = await self._next_client_event()
            if isinstance(event, h11.ConnectionClosed):
                return False
        return True

    async def _relay_request_body(self, upstream: _Upstream) -> None:
        """Stream the client's request body to the upstream. If the upstream goes away we keep
        reading (and dropping) the body: the client connection stays usable afterwards."""
        while True:
            event = await self._next_client_event()
            if isinstance(event, h11.Data):
                await self._forward(upstream, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                trailers: Headers = list(event.headers.raw_items())
                await self._forward(upstream, h11.EndOfMessage(headers=trailers))
                return
            else:
                raise ConnectionResetError("the client closed the connection mid-request")

    async def _forward(self, upstream: _Upstream, event: h11.Event) -> None:
        if upstream.broken:
            return
        try:
            await upstream.send(event)
        except (_UpstreamError, h11.LocalProtocolError) as exc:
            log.debug("upstream stopped taking the request body: %r", exc)
            upstream.broken = True

    async def _relay_response(
        self, upstream: _Upstream, request: h11.Request, body_task: asyncio.Task[None] | None
    ) -> _Outcome:
        """Relay the upstream's response to the client; raises _UpstreamError. While it runs,
        `body_task` streams the request body; a client error there ends this relay too."""
        relay = asyncio.ensure_future(self._relay_response_events(upstream, request, body_task))
        try:
            if body_task is not None:
                await asyncio.wait({relay, body_task}, return_when=asyncio.FIRST_EXCEPTION)
                if not relay.done():
                    # The request body failed: the client broke the request (or left).
                    await _cancel(relay)
                    await self._drop(upstream)
                    await body_task  # raises the client's error
            return await relay
        finally:
            relay.cancel()  # only if we are cancelled ourselves (else it is done by now)

    async def _relay_response_events(
        self, upstream: _Upstream, request: h11.Request, body_task: asyncio.Task[None] | None
    ) -> _Outcome:
        answered = False
        try:
            while True:
                event = await upstream.next_event()
                if isinstance(event, h11.InformationalResponse):
                    if event.status_code == 101:
                        if body_task is not None:
                            await body_task  # h11 only switches once the request is complete
                        await self._send_client(
                            h11.InformationalResponse(
                                status_code=101,
                                headers=list(event.headers.raw_items()),
                                reason=event.reason,
                            )
                        )
                        return _Outcome.SWITCHED
                    await self._send_client(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=list(event.headers.raw_items()),
                            reason=event.reason,
                        )
                    )
                elif isinstance(event, h11.Response):
                    headers: Headers = list(event.headers.raw_items())
                    if self._must_close_after(request, event.status_code, headers):
                        headers = _with_connection_close(headers)
                    answered = True
                    await self._send_client(
                        h11.Response(
                            status_code=event.status_code, headers=headers, reason=event.reason
                        )
                    )
                    if request.method == b"CONNECT" and 200 <= event.status_code < 300:
                        return _Outcome.SWITCHED
                elif isinstance(event, h11.Data):
                    await self._send_client(h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    trailers: Headers = list(event.headers.raw_items())
                    if self.conn.their_http_version != b"1.1":
                        trailers = []  # an HTTP/1.0 client gets no chunked framing to carry them
                    await self._send_client(h11.EndOfMessage(headers=trailers))
                    return _Outcome.DONE
                else:
                    raise _UpstreamError("the upstream closed the connection without answering")
        except _UpstreamError as exc:
            exc.answered = answered
            raise

    def _must_close_after(self, request: h11.Request, status: int, headers: Headers) -> bool:
        # A client still waiting for "100 Continue" may or may not send its body now: we cannot
        # know where its next request would start, so the connection ends after this answer.
        if self.conn.they_are_waiting_for_100_continue:
            return True
        # A body delimited by the upstream closing: mirror that close to the client (which sees
        # the same behaviour as from the app itself), although h11 re-frames it as chunked.
        if status < 200 or status in (204, 304) or request.method == b"HEAD":
            return False
        if request.method == b"CONNECT" and 200 <= status < 300:
            return False
        names = {name.lower() for name, _ in headers}
        return b"transfer-encoding" not in names and b"content-length" not in names

    async def _answer_unreachable(self, request: h11.Request, reason: str) -> None:
        """Answer `502 Bad Gateway` ourselves, with `reason` as a short text body."""
        body = (reason + "\n").encode("utf-8", "replace")
        headers: Headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        if self.conn.they_are_waiting_for_100_continue:
            headers = _with_connection_close(headers)
        log.debug("answering 502 to %r %r: %s", request.method, request.target, reason)
        await self._send_client(
            h11.Response(status_code=502, headers=headers, reason=b"Bad Gateway")
        )
        if request.method != b"HEAD":
            await self._send_client(h11.Data(data=body))
        await self._send_client(h11.EndOfMessage())

    # -- upstreams ------------------------------------------------------------------------------

    async def _upstream(self, key: Hashable | None) -> _Upstream:
        upstream = self.pool.get(key)
        if upstream is not None and (upstream.stale() or upstream.broken):
            await self._drop(upstream)
            upstream = None
        if upstream is None:
            try:
                pipe = await self.connect(key)
            except Exception as exc:
                raise _UpstreamError(unreachable_reason(key, exc)) from None
            upstream = _Upstream(key, pipe)
            self.pool[key] = upstream
            self.opened.append(upstream)
        return upstream

    async def _release(self, upstream: _Upstream) -> None:
        """Keep the upstream for the next request if it is ready for one; else drop it."""
        conn = upstream.conn
        if not upstream.broken and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            upstream.reused = True
            upstream.watch()
        else:
            await self._drop(upstream)

    async def _drop(self, upstream: _Upstream, *, close: bool = True) -> None:
        if self.pool.get(upstream.key) is upstream:
            del self.pool[upstream.key]
        if close:
            await upstream.close()

    # -- after a protocol switch --------------------------------------------------------------

    async def _splice(self, upstream: _Upstream) -> None:
        """Relay raw bytes both ways until both directions end (WebSocket, CONNECT, h2c...).
        h11 may already hold bytes of the new protocol from either side: they go first."""
        client_rest, client_eof = self.conn.trailing_data
        upstream_rest, upstream_eof = upstream.conn.trailing_data
        tasks = [
            asyncio.create_task(_one_way(self.client.read, client_rest, client_eof, upstream.pipe)),
            asyncio.create_task(_one_way(upstream.read, upstream_rest, upstream_eof, self.client)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [t for t in done if t.exception() is not None]
            if failed:
                log.debug("spliced connection broke: %r", failed[0].exception())
                upstream.pipe.abort()
                self.client.abort()
        finally:
            for task in tasks:
                await _cancel(task)
        self.client_eof = True

    # -- ending ---------------------------------------------------------------------------------

    async def _reject(self, exc: h11.RemoteProtocolError) -> bool:
        """Answer a malformed request with h11's status hint (400, 431...); the connection then
        closes. False if no answer was possible."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return False
        body = f"tether: bad HTTP request: {exc}\n".encode("utf-8", "replace")
        headers: Headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        try:
            await self._send_client(
                h11.Response(status_code=exc.error_status_hint, headers=headers)
            )
            await self._send_client(h11.Data(data=body))
            await self._send_client(h11.EndOfMessage())
        except (OSError, h11.LocalProtocolError):
            return False
        return True

    async def _close_client(self) -> None:
        if not self.client_eof:
            self.client.write_eof()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_LINGER_SECONDS):
                    drained = 0
                    while drained < _LINGER_BYTES:
                        data = await self.client.read()
                        if not data:
                            break
                        drained += len(data)
        with contextlib.suppress(OSError):
            await self.client.close()


async def serve_http1(client: Pipe, first: bytes, decide: Decide, connect: Connect) -> None:
    """Route the requests of one HTTP/1.x client connection (see `router.route_http`)."""
    await _Http1Router(client, decide, connect).serve(first)


# -- helpers -------------------------------------------------------------------------------------


def _upstream_request(request: h11.Request) -> h11.Request:
    headers: Headers = list(request.headers.raw_items())
    if not any(name.lower() == b"host" for name, _ in headers):
        # h11 only writes HTTP/1.1, which needs a Host header; an HTTP/1.0 request may have
        # none. An empty one means "no authority" (RFC 9112, section 3.2).
        headers.insert(0, (b"Host", b""))
    return h11.Request(method=request.method, target=request.target, headers=headers)


def _has_body(request: h11.Request) -> bool:
    for name, value in request.headers.raw_items():
        lower = name.lower()
        if lower == b"transfer-encoding":
            return True
        if lower == b"content-length" and value.strip() != b"0":
            return True
    return False


def _with_connection_close(headers: Sequence[tuple[bytes, bytes]]) -> Headers:
    kept = [(n, v) for n, v in headers if n.lower() not in (b"connection", b"keep-alive")]
    return [*kept, (b"Connection", b"close")]


async def _settle(task: asyncio.Task[None]) -> None:
    """Wait for a request-body task; a cancelled one is fine, an error (the client's) is
    raised. Unlike `await task`, being cancelled ourselves is never mistaken for the task's
    cancellation."""
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        raise exc


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it is over, whatever it ended with."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("helper task ended with %r", exc, exc_info=exc)


async def _one_way(
    read: Callable[[], Awaitable[bytes]], initial: bytes, eof: bool, destination: Pipe
) -> None:
    if initial:
        await destination.write(initial)
    if not eof:
        while data := await read():
            await destination.write(data)
    destination.write_eof()
