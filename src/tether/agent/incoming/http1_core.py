"""The HTTP/1.x steal router without I/O: events in, actions out, the way h11 itself is built.

`Http1Core` serves one client connection. Each request goes to the upstream that `decide`
picks for its head (None = the original app in the pod, another key = a session's local app);
h11 parses both sides: a server-role connection for the client and a client-role connection
per upstream, so message framing (Content-Length, chunked, read-until-close) is re-done on each
side while bodies stream through chunk by chunk. Requests are served strictly in order: h11
keeps later pipelined requests buffered until the current answer is complete.

The caller (the asyncio shell in `http1`) reports what happened with the event methods
(`client_data`, `upstream_opened`, `upstream_data`...); each returns the actions to perform,
in order. The core reads no clock and does no I/O: the shell owns the sockets, back-pressure,
the splice after a protocol switch, and the lingering close.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeAlias

import h11

from tether.agent.incoming.routing import (
    Decide,
    RequestHead,
    decode,
    log,
    safe_decide,
    unreachable_reason,
)

Headers = list[tuple[bytes, bytes]]

# -- actions ---------------------------------------------------------------------------------------
#
# Upstream connections are named by ids of their own, not by route key: one key can have
# several connections over a client connection's life (a stale kept-alive one being closed
# while its replacement opens, a retry), and a late event from a dropped connection must not
# be taken for one from its successor.


@dataclass(frozen=True, slots=True)
class ReadClient:
    """Read the client's next bytes and report them (`client_data`, `client_eof` or
    `client_reset`). At most one is outstanding; none is asked for while the core has what it
    needs, which keeps pipelined requests in the client's socket until their turn.

    `next_request`: these bytes start a new request (every earlier answer is complete). The
    shell lets what it already sent the client drain first, so that a client pipelining
    requests is answered at the pace it reads; during a request body it must not wait for the
    answer (an app may answer before it has read the whole body).
    """

    next_request: bool


@dataclass(frozen=True, slots=True)
class SendClient:
    """Write `data` to the client, after everything sent to it before."""

    data: bytes


@dataclass(frozen=True, slots=True)
class OpenUpstream:
    """Open a new connection to route key `key`'s upstream; `conn` names it from now on.

    Report `upstream_opened` or `upstream_failed`. Once open, read it all the time, one chunk
    at a time (the next once what the previous one caused has been written), and report
    `upstream_data`, `upstream_eof` or `upstream_reset`; a failed write to it is
    `upstream_write_failed`. Reading while the connection is idle is how a kept-alive
    upstream that closed is noticed before a request is sent on it.
    """

    conn: int
    key: Hashable | None


@dataclass(frozen=True, slots=True)
class SendUpstream:
    """Write `data` to upstream connection `conn`, after everything sent to it before."""

    conn: int
    data: bytes


@dataclass(frozen=True, slots=True)
class CloseUpstream:
    """Done with upstream connection `conn` (or its attempt to connect): stop reading it, drop
    what is not written to it yet, and close it. Later events about it are ignored."""

    conn: int


@dataclass(frozen=True, slots=True)
class Splice:
    """Final: the protocol switched (101 Switching Protocols, or 2xx to CONNECT). From now on
    relay raw bytes both ways between the client and upstream connection `conn` until both
    directions have ended, then close both (the client without lingering); a broken
    direction resets both.

    The bytes h11 already holds go first: `to_upstream` (what the client sent after its
    request) and `to_client` (what the upstream sent after its answer head). `client_ended` /
    `upstream_ended`: that side's EOF was seen already, so the other side is half-closed
    right after those bytes and that side is not read any more.
    """

    conn: int
    to_upstream: bytes
    client_ended: bool
    to_client: bytes
    upstream_ended: bool


@dataclass(frozen=True, slots=True)
class CloseClient:
    """Final: the connection is over (every upstream connection got its CloseUpstream first).
    Once what was sent to the client is written, half-close it; with `linger`, keep reading
    and dropping what the client still sends, for a bounded time and number of bytes, before
    closing: closing a socket with unread data makes the kernel send RST, which can destroy
    the answer still on its way."""

    linger: bool


@dataclass(frozen=True, slots=True)
class AbortClient:
    """Final: reset the client connection at once (its answer cannot be completed); every
    upstream connection got its CloseUpstream first."""


Action: TypeAlias = (
    ReadClient
    | SendClient
    | OpenUpstream
    | SendUpstream
    | CloseUpstream
    | Splice
    | CloseClient
    | AbortClient
)


# -- the core --------------------------------------------------------------------------------------


class _UpstreamError(Exception):
    """How an upstream broke an exchange, as the detail of the 502 answer."""


class _Link:
    """One upstream connection: a client-role h11 connection, kept across requests."""

    __slots__ = ("broken", "conn", "gone", "id", "key", "reused")

    def __init__(self, conn_id: int, key: Hashable | None) -> None:
        self.id = conn_id
        self.key = key
        self.conn = h11.Connection(h11.CLIENT)
        self.reused = False  # it has served a request before
        self.broken = False  # a write to it failed: nothing more is sent on it
        self.gone = False  # it ended or sent something unasked: not for another request


class _Phase(enum.Enum):
    CONNECTING = "connecting"  # the upstream connection is being opened; nothing sent yet
    RELAYING = "relaying"  # the request went out (its body may still stream); answer awaited
    ANSWERED = "answered"  # the client has its whole answer; the request body still comes
    SWITCHING = "switching"  # the upstream switched protocols; splice once the request ends


class _Exchange:
    """One request and its answer."""

    __slots__ = (
        "answered",
        "attempt",
        "has_body",
        "key",
        "link",
        "outgoing",
        "phase",
        "request",
        "request_done",
        "retry",
        "switch",
    )

    def __init__(self, request: h11.Request, key: Hashable | None) -> None:
        self.request = request
        self.key = key
        self.outgoing = _upstream_request(request)
        self.has_body = _has_body(request)
        self.link: _Link | None = None  # None once the upstream is gone (the body is dropped)
        self.phase = _Phase.CONNECTING
        self.attempt = 0
        self.retry = False  # an upstream failure before any answer means: try a new connection
        self.answered = False  # the answer's head went to the client: it cannot be redone
        self.request_done = False  # the client's EndOfMessage was taken
        self.switch: h11.InformationalResponse | None = None  # a 101 held until request_done


class Http1Core:
    """The routing of one HTTP/1.x client connection, as a state machine without I/O.

    Feed it what happened with the event methods; each returns the actions to perform, in
    order (see the action classes). Start with `client_data` and the bytes already read.
    After a final action (`Splice`, `CloseClient`, `AbortClient`) `finished` is true and
    every event returns no action.
    """

    def __init__(self, decide: Decide) -> None:
        self._decide = decide
        self._conn = h11.Connection(h11.SERVER)
        self._links: dict[int, _Link] = {}  # every upstream connection opening or open
        self._pool: dict[Hashable | None, _Link] = {}  # the one in use or kept, per route key
        self._last_id = 0
        self._ex: _Exchange | None = None
        self._reading = False  # a ReadClient is outstanding
        self._client_ended = False
        self._finished = False
        self._out: list[Action] = []

    @property
    def finished(self) -> bool:
        """Whether a final action was given: the core takes no more events."""
        return self._finished

    # -- events --------------------------------------------------------------------------------

    def client_data(self, data: bytes) -> list[Action]:
        """The client sent `data` (the answer to ReadClient; also the bytes read first)."""
        return self._run(self._on_client_data, data)

    def client_eof(self) -> list[Action]:
        """The client half-closed its side (the answer to ReadClient)."""
        return self._run(self._on_client_eof)

    def client_reset(self) -> list[Action]:
        """The client connection broke (a read or write failed): give up on it."""
        return self._run(self._end, False)

    def upstream_opened(self, conn: int) -> list[Action]:
        """Upstream connection `conn` (from OpenUpstream) is open."""
        return self._run(self._on_opened, conn)

    def upstream_failed(self, conn: int, error: BaseException) -> list[Action]:
        """Upstream connection `conn` could not be opened (`error` says why)."""
        return self._run(self._on_failed, conn, error)

    def upstream_data(self, conn: int, data: bytes) -> list[Action]:
        """Upstream connection `conn` sent `data`."""
        return self._run(self._on_upstream, conn, data, None)

    def upstream_eof(self, conn: int) -> list[Action]:
        """Upstream connection `conn` half-closed its side."""
        return self._run(self._on_upstream, conn, b"", None)

    def upstream_reset(self, conn: int, error: BaseException) -> list[Action]:
        """Reading upstream connection `conn` failed (`error`): it is unusable."""
        return self._run(self._on_upstream, conn, b"", error)

    def upstream_write_failed(self, conn: int, error: BaseException) -> list[Action]:
        """Writing to upstream connection `conn` failed. Nothing more is sent on it, but its
        answer is still read: an app may answer early and then stop reading the body."""
        return self._run(self._on_write_failed, conn, error)

    # -- running a step ------------------------------------------------------------------------

    def _run(self, step: Callable[..., None], *args: object) -> list[Action]:
        if self._finished:
            return []
        try:
            step(*args)
        except h11.LocalProtocolError as exc:
            # We would send bad HTTP: the connection cannot go on.
            log.debug("HTTP/1 connection ended: %r", exc)
            self._end(False)
        except Exception:
            log.debug("HTTP/1 connection failed", exc_info=True)
            self._end(False)
        out, self._out = self._out, []
        return out

    # -- the client side -------------------------------------------------------------------------

    def _on_client_data(self, data: bytes) -> None:
        self._reading = False
        if data:  # h11 takes b"" for EOF
            self._conn.receive_data(data)
        self._pump_client()

    def _on_client_eof(self) -> None:
        self._reading = False
        self._client_ended = True
        self._conn.receive_data(b"")
        self._pump_client()

    def _pump_client(self) -> None:
        """Take the client's events for as long as the current state wants them."""
        while not self._finished:
            ex = self._ex
            if ex is not None and (ex.request_done or ex.phase is _Phase.CONNECTING):
                return  # the request is complete, or its body waits for the upstream
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._reject(exc)
                return
            if event is h11.NEED_DATA:
                if not self._reading:
                    self._reading = True
                    self._out.append(ReadClient(next_request=ex is None))
                return
            if event is h11.PAUSED:
                return
            if ex is None:
                if isinstance(event, h11.Request):
                    self._begin(event)
                else:
                    self._end(True)  # ConnectionClosed: the client is done
            elif isinstance(event, h11.Data):
                self._forward(ex, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._forward(ex, h11.EndOfMessage(headers=list(event.headers.raw_items())))
                ex.request_done = True
                if ex.phase is _Phase.SWITCHING:
                    self._switch(ex)
                elif ex.phase is _Phase.ANSWERED:
                    self._release(ex)
                    self._next_request()
            else:  # pragma: no cover - h11 raises on an EOF in the middle of a body
                self._end(False)

    def _forward(self, ex: _Exchange, event: h11.Data | h11.EndOfMessage) -> None:
        """Relay a part of the request body; dropped once its upstream is gone, so that the
        client connection stays usable after our answer."""
        link = ex.link
        if link is None or link.broken:
            return
        try:
            data = link.conn.send(event)
        except h11.LocalProtocolError as exc:
            log.debug("upstream stopped taking the request body: %r", exc)
            link.broken = True
            return
        if data:
            self._out.append(SendUpstream(link.id, data))

    def _reject(self, exc: h11.RemoteProtocolError) -> None:
        """Answer a malformed request with h11's status hint (400, 431...) and close; reset
        the connection if an answer is under way already."""
        log.debug("bad HTTP/1 request from the client: %s", exc)
        if self._conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            self._end(False)
            return
        body = f"tether: bad HTTP request: {exc}\n".encode("utf-8", "replace")
        headers: Headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
            (b"Connection", b"close"),
        ]
        try:
            data = self._encode(
                h11.Response(status_code=exc.error_status_hint, headers=headers),
                h11.Data(data=body),
                h11.EndOfMessage(),
            )
        except h11.LocalProtocolError:
            self._end(False)
            return
        self._out.append(SendClient(data))
        self._end(True)

    # -- one exchange --------------------------------------------------------------------------

    def _begin(self, request: h11.Request) -> None:
        head = RequestHead(
            method=decode(request.method),
            target=decode(request.target),
            headers=tuple((decode(n), decode(v)) for n, v in request.headers.raw_items()),
            http2=False,
        )
        ex = _Exchange(request, safe_decide(self._decide, head))
        self._ex = ex
        if not ex.has_body:
            # h11 hands out the EndOfMessage of a bodyless request without reading more;
            # taking it now makes the whole request replayable on a fresh connection.
            self._conn.next_event()
            ex.request_done = True
        self._attempt(ex)

    def _attempt(self, ex: _Exchange) -> None:
        ex.attempt += 1
        link = self._pool.get(ex.key)
        if link is not None and (link.gone or link.broken):
            self._drop(link)
            link = None
        if link is None:
            self._last_id += 1
            link = _Link(self._last_id, ex.key)
            self._links[link.id] = link
            self._pool[ex.key] = link
            ex.link = link
            ex.phase = _Phase.CONNECTING
            ex.retry = False
            self._out.append(OpenUpstream(link.id, ex.key))
            return
        ex.link = link
        # A kept-alive upstream may have closed just as we send: a bodyless request is then
        # simply retried once on a new connection.
        ex.retry = link.reused and not ex.has_body and ex.attempt == 1
        self._send_request(ex, link)

    def _on_opened(self, conn: int) -> None:
        link = self._links.get(conn)
        ex = self._ex
        if (
            link is not None
            and ex is not None
            and ex.link is link
            and ex.phase is _Phase.CONNECTING
        ):
            self._send_request(ex, link)

    def _on_failed(self, conn: int, error: BaseException) -> None:
        link = self._links.pop(conn, None)
        if link is None:
            return
        if self._pool.get(link.key) is link:
            del self._pool[link.key]
        ex = self._ex
        if ex is not None and ex.link is link:
            ex.link = None
            self._answer_unreachable(ex, unreachable_reason(ex.key, error))
            self._answer_done(ex)

    def _send_request(self, ex: _Exchange, link: _Link) -> None:
        ex.phase = _Phase.RELAYING
        data = link.conn.send(ex.outgoing) or b""
        if not ex.has_body:
            data += link.conn.send(h11.EndOfMessage()) or b""
        self._out.append(SendUpstream(link.id, data))
        if ex.has_body:
            self._pump_client()

    # -- the upstream side -----------------------------------------------------------------------

    def _on_upstream(self, conn: int, data: bytes, error: BaseException | None) -> None:
        """Data (b"" = EOF) or a read error from an upstream connection."""
        link = self._links.get(conn)
        if link is None:
            return
        ex = self._ex
        if ex is None or ex.link is not link:
            # An idle kept-alive connection that ended or sent something unasked: unusable.
            self._drop(link)
            return
        if ex.phase is _Phase.ANSWERED:
            # After a complete answer, while the request body still streams to it.
            link.gone = True
            link.broken = link.broken or error is not None
            return
        if error is not None:
            self._upstream_broke(ex, link, f"the upstream connection broke: {error}")
            return
        link.conn.receive_data(data)
        if ex.phase is _Phase.RELAYING:
            self._pump_upstream(ex, link)
        # SWITCHING: h11 keeps the bytes (or the EOF) for the splice; CONNECTING (a shell
        # reporting data before the connection is open): for once the request is sent.

    def _on_write_failed(self, conn: int, error: BaseException) -> None:
        link = self._links.get(conn)
        if link is None:
            return
        log.debug("upstream stopped taking the request: %r", error)
        link.broken = True
        ex = self._ex
        if ex is None or ex.link is not link:
            self._drop(link)
        # Otherwise the reading side tells how the exchange ends (an answer, EOF, a reset).

    def _pump_upstream(self, ex: _Exchange, link: _Link) -> None:
        """Relay the upstream's answer events that h11 has, up to the end of the answer."""
        conn = link.conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._upstream_broke(ex, link, f"bad HTTP from the upstream: {exc}")
                return
            if isinstance(event, h11.Data):
                if event.data:
                    # The bytes h11 just cut out go to the client as they are (no copy).
                    pieces = self._conn.send_with_data_passthrough(h11.Data(data=event.data))
                    if pieces:
                        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                        self._out.append(SendClient(data))
            elif isinstance(event, h11.Response):
                headers: Headers = list(event.headers.raw_items())
                if self._must_close_after(ex.request, event.status_code, headers):
                    headers = _with_connection_close(headers)
                ex.answered = True
                self._send_client(
                    h11.Response(
                        status_code=event.status_code, headers=headers, reason=event.reason
                    )
                )
                if ex.request.method == b"CONNECT" and 200 <= event.status_code < 300:
                    self._switching(ex, None)
                    return
            elif isinstance(event, h11.InformationalResponse):
                relayed = h11.InformationalResponse(
                    status_code=event.status_code,
                    headers=list(event.headers.raw_items()),
                    reason=event.reason,
                )
                if event.status_code == 101:
                    self._switching(ex, relayed)
                    return
                self._send_client(relayed)
            elif isinstance(event, h11.EndOfMessage):
                trailers: Headers = list(event.headers.raw_items())
                if self._conn.their_http_version != b"1.1":
                    trailers = []  # an HTTP/1.0 client gets no chunked framing to carry them
                self._send_client(h11.EndOfMessage(headers=trailers))
                self._answer_done(ex)
                return
            elif event is h11.NEED_DATA or event is h11.PAUSED:
                return
            else:  # ConnectionClosed
                self._upstream_broke(
                    ex, link, "the upstream closed the connection without answering"
                )
                return

    def _switching(self, ex: _Exchange, switch: h11.InformationalResponse | None) -> None:
        """The upstream switched protocols (`switch`: its 101, still to be relayed; None: a 2xx
        to CONNECT, relayed already). h11 only switches once the request is complete, so a
        request body still coming is relayed first."""
        ex.phase = _Phase.SWITCHING
        ex.switch = switch
        if ex.request_done:
            self._switch(ex)
        else:
            self._pump_client()

    def _switch(self, ex: _Exchange) -> None:
        link = ex.link
        if link is None:  # pragma: no cover - a broken upstream ends SWITCHING
            self._end(False)
            return
        if ex.switch is not None:
            self._send_client(ex.switch)
        del self._links[link.id]
        for other in self._links.values():
            self._out.append(CloseUpstream(other.id))
        self._links.clear()
        self._pool.clear()
        client_rest, client_ended = self._conn.trailing_data
        upstream_rest, upstream_ended = link.conn.trailing_data
        self._out.append(Splice(link.id, client_rest, client_ended, upstream_rest, upstream_ended))
        self._finished = True
        self._ex = None

    def _must_close_after(self, request: h11.Request, status: int, headers: Headers) -> bool:
        # A client still waiting for "100 Continue" may or may not send its body now: we cannot
        # know where its next request would start, so the connection ends after this answer.
        if self._conn.they_are_waiting_for_100_continue:
            return True
        # A body delimited by the upstream closing: mirror that close to the client (which sees
        # the same behaviour as from the app itself), although h11 re-frames it as chunked.
        if status < 200 or status in (204, 304) or request.method == b"HEAD":
            return False
        if request.method == b"CONNECT" and 200 <= status < 300:
            return False
        names = {name.lower() for name, _ in headers}
        return b"transfer-encoding" not in names and b"content-length" not in names

    def _upstream_broke(self, ex: _Exchange, link: _Link, reason: str) -> None:
        """The upstream could not carry the exchange (closed, reset, bad HTTP)."""
        self._drop(link)
        ex.link = None
        if ex.answered:
            # The client has part of an answer: its connection cannot go on.
            log.debug("HTTP/1 connection ended: %s", reason)
            self._end(False)
        elif ex.retry:
            log.debug("kept-alive upstream went away (%s); retrying", reason)
            self._attempt(ex)
        else:
            self._answer_unreachable(ex, unreachable_reason(ex.key, _UpstreamError(reason)))
            self._answer_done(ex)

    def _answer_unreachable(self, ex: _Exchange, reason: str) -> None:
        """Answer `502 Bad Gateway` ourselves, with `reason` as a short text body."""
        body = (reason + "\n").encode("utf-8", "replace")
        headers: Headers = [
            (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()),
        ]
        if self._conn.they_are_waiting_for_100_continue:
            headers = _with_connection_close(headers)
        log.debug("answering 502 to %r %r: %s", ex.request.method, ex.request.target, reason)
        events: list[h11.Event] = [
            h11.Response(status_code=502, headers=headers, reason=b"Bad Gateway")
        ]
        if ex.request.method != b"HEAD":
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        self._out.append(SendClient(self._encode(*events)))

    def _answer_done(self, ex: _Exchange) -> None:
        """The client has its whole answer: on to the next request once this one is read."""
        if self._conn.our_state is h11.MUST_CLOSE:
            self._end(True)
            return
        ex.phase = _Phase.ANSWERED
        if ex.request_done:
            self._release(ex)
            self._next_request()
        else:
            self._pump_client()

    def _next_request(self) -> None:
        self._ex = None
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
            self._pump_client()
        else:
            self._end(True)  # one side asked for the connection to close

    # -- upstream connections ----------------------------------------------------------------

    def _release(self, ex: _Exchange) -> None:
        """Keep the exchange's upstream for the next request if it is ready for one."""
        link, ex.link = ex.link, None
        if link is None or link.id not in self._links:
            return
        conn = link.conn
        if not (link.broken or link.gone) and conn.our_state is conn.their_state is h11.DONE:
            conn.start_next_cycle()
            rest, ended = conn.trailing_data
            if not rest and not ended:  # else it sent more than its answer: unusable
                link.reused = True
                return
        self._drop(link)

    def _drop(self, link: _Link) -> None:
        if self._links.pop(link.id, None) is not None:
            self._out.append(CloseUpstream(link.id))
        if self._pool.get(link.key) is link:
            del self._pool[link.key]

    # -- ending ------------------------------------------------------------------------------

    def _end(self, graceful: bool) -> None:
        for link in self._links.values():
            self._out.append(CloseUpstream(link.id))
        self._links.clear()
        self._pool.clear()
        self._out.append(CloseClient(linger=not self._client_ended) if graceful else AbortClient())
        self._finished = True
        self._ex = None

    # -- encoding ------------------------------------------------------------------------------

    def _send_client(self, event: h11.Event) -> None:
        data = self._conn.send(event)
        if data:
            self._out.append(SendClient(data))

    def _encode(self, *events: h11.Event) -> bytes:
        return b"".join(self._conn.send(event) or b"" for event in events)


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
