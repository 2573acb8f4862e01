"""http1_core as byte tables: events in (client bytes, upstream bytes, connects, EOFs,
failures), the actions out, byte for byte. No sockets, no event loop, no clock."""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import pytest

from tether.agent.incoming.filters import HttpFilter
from tether.agent.incoming.http1_core import (
    AbortClient,
    Action,
    CloseClient,
    CloseUpstream,
    Http1Core,
    OpenUpstream,
    ReadClient,
    SendClient,
    SendUpstream,
    Splice,
)
from tether.agent.incoming.routing import Decide, RequestHead

ALICE = HttpFilter(headers=(re.compile(r"^x-dev: alice$"),))


def by_filter(head: RequestHead) -> Hashable | None:
    """`x-dev: alice` goes to the local app (key "local"); probes stay with the original."""
    return "local" if ALICE.takes(head.method, head.target, head.headers) else None


def broken_decide(head: RequestHead) -> Hashable | None:
    raise RuntimeError("broken filter")


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ev:
    """One event for the core: `what` names the method, `conn` and `data` its arguments."""

    what: str
    conn: int = 0
    data: bytes = b""

    def feed(self, core: Http1Core) -> list[Action]:
        text = self.data.decode()
        if self.what == "client":
            return core.client_data(self.data)
        if self.what == "client_eof":
            return core.client_eof()
        if self.what == "client_reset":
            return core.client_reset()
        if self.what == "opened":
            return core.upstream_opened(self.conn)
        if self.what == "failed":
            return core.upstream_failed(self.conn, ConnectionRefusedError(text))
        if self.what == "up":
            return core.upstream_data(self.conn, self.data)
        if self.what == "up_eof":
            return core.upstream_eof(self.conn)
        if self.what == "up_reset":
            return core.upstream_reset(self.conn, ConnectionResetError(text))
        if self.what == "up_write_failed":
            return core.upstream_write_failed(self.conn, BrokenPipeError(text))
        raise AssertionError(self.what)


def client(data: bytes) -> Ev:
    return Ev("client", data=data)


def client_eof() -> Ev:
    return Ev("client_eof")


def client_reset() -> Ev:
    return Ev("client_reset")


def opened(conn: int) -> Ev:
    return Ev("opened", conn)


def failed(conn: int, why: str) -> Ev:
    return Ev("failed", conn, why.encode())


def up(conn: int, data: bytes) -> Ev:
    return Ev("up", conn, data)


def up_eof(conn: int) -> Ev:
    return Ev("up_eof", conn)


def up_reset(conn: int, why: str) -> Ev:
    return Ev("up_reset", conn, why.encode())


def up_write_failed(conn: int, why: str) -> Ev:
    return Ev("up_write_failed", conn, why.encode())


# -- expected actions ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientLike:
    """A SendClient whose bytes match `pattern` (for texts quoting h11's error messages)."""

    pattern: bytes


Expected = Action | ClientLike

NEXT = ReadClient(next_request=True)  # read the next request
MORE = ReadClient(next_request=False)  # read more of the request body


def to_client(data: bytes) -> SendClient:
    return SendClient(data)


def to_up(conn: int, data: bytes) -> SendUpstream:
    return SendUpstream(conn, data)


def open_up(conn: int, key: Hashable | None) -> OpenUpstream:
    return OpenUpstream(conn, key)


def close_up(conn: int) -> CloseUpstream:
    return CloseUpstream(conn)


def close_client(linger: bool = True) -> CloseClient:
    return CloseClient(linger)


def bad_gateway(reason: str, *extra: bytes, head: bool = False) -> SendClient:
    """Our 502 answer, its body `reason` (plus the headers `extra`)."""
    body = reason.encode() + b"\n"
    headers = (
        b"Content-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Length: %d\r\n" % len(body)
        + b"".join(extra)
    )
    return SendClient(b"HTTP/1.1 502 Bad Gateway\r\n" + headers + b"\r\n" + (b"" if head else body))


LOCAL_DOWN = "tether: the local app on the developer's machine did not answer"
POD_DOWN = "tether: the app in the pod did not answer"
CLOSED_EARLY = (
    " (bad HTTP from the upstream: can't handle event type ConnectionClosed when role=SERVER"
    " and state=SEND_RESPONSE)"
)


def bad_request(status: bytes = b"400") -> ClientLike:
    return ClientLike(
        b"HTTP/1.1 " + status + b" \r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: \\d+\r\nConnection: close\r\n\r\ntether: bad HTTP request: .*\n"
    )


# -- requests and answers ------------------------------------------------------------------------


def get(target: bytes, *headers: bytes, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(headers) + b"\r\n"


def post(target: bytes, *headers: bytes) -> bytes:
    return get(target, *headers, method=b"POST")


def length(size: int) -> bytes:
    return b"Content-Length: %d\r\n" % size


def ok(body: bytes, *headers: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(headers)
        + b"Content-Length: %d\r\n\r\n" % len(body)
        + body
    )


DEV = b"x-dev: alice\r\n"
CLOSE = b"Connection: close\r\n"
CHUNKED = b"Transfer-Encoding: chunked\r\n"
CONTINUE = post(b"/continue", length(2), b"Expect: 100-continue\r\n")


@dataclass
class Case:
    """Steps of one connection: each event, then exactly the actions it must give."""

    name: str
    steps: Sequence[tuple[Ev, Sequence[Expected]]]
    decide: Decide = field(default=by_filter)


CASES = [
    Case(
        "routing by filter, one connection per route key",
        [
            (client(get(b"/one")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/one"))]),
            (up(1, ok(b"original")), [to_client(ok(b"original")), NEXT]),
            (client(get(b"/two", DEV)), [open_up(2, "local")]),
            (opened(2), [to_up(2, get(b"/two", DEV))]),
            (up(2, ok(b"local")), [to_client(ok(b"local")), NEXT]),
            # Header names in any case; they keep their case on the way through.
            (
                client(get(b"/three", b"X-Dev: alice\r\n")),
                [to_up(2, get(b"/three", b"X-Dev: alice\r\n"))],
            ),
            (up(2, ok(b"local")), [to_client(ok(b"local")), NEXT]),
            (
                client(get(b"/four", b"x-dev: bob\r\n")),
                [to_up(1, get(b"/four", b"x-dev: bob\r\n"))],
            ),
            (up(1, ok(b"original")), [to_client(ok(b"original")), NEXT]),
            (client_eof(), [close_up(1), close_up(2), close_client(linger=False)]),
        ],
    ),
    Case(
        "a Kubernetes probe stays with the original app",
        [
            (
                client(get(b"/healthz", b"User-Agent: kube-probe/1.30\r\n", DEV)),
                [open_up(1, None)],
            ),
        ],
    ),
    Case(
        "a failing decide sends the request to the original app",
        [(client(get(b"/x", DEV)), [open_up(1, None)])],
        decide=broken_decide,
    ),
    Case(
        "pipelined requests are answered in order, one at a time",
        [
            (
                client(get(b"/p1") + get(b"/p2", DEV) + get(b"/p3", method=b"HEAD")),
                [open_up(1, None)],
            ),
            (opened(1), [to_up(1, get(b"/p1"))]),
            # /p2 goes out only once /p1 is answered, and needs no reading.
            (up(1, ok(b"one")), [to_client(ok(b"one")), open_up(2, "local")]),
            (opened(2), [to_up(2, get(b"/p2", DEV))]),
            (up(2, ok(b"two")), [to_client(ok(b"two")), to_up(1, get(b"/p3", method=b"HEAD"))]),
            (
                up(1, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),  # HEAD: no body
                [to_client(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), NEXT],
            ),
        ],
    ),
    Case(
        "a Content-Length body streams in parts",
        [
            (
                client(get(b"/up", length(10), method=b"PUT") + b"abcd"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [to_up(1, get(b"/up", length(10), method=b"PUT") + b"abcd"), MORE],
            ),
            (client(b"ef"), [to_up(1, b"ef"), MORE]),
            (client(b"ghij"), [to_up(1, b"ghij")]),
            (up(1, ok(b"10")), [to_client(ok(b"10")), NEXT]),
        ],
    ),
    Case(
        "chunked request and answer, trailers kept",
        [
            (
                client(post(b"/sha", CHUNKED, DEV) + b"3\r\nabc\r\n"),
                [open_up(1, "local")],
            ),
            (
                opened(1),
                [to_up(1, post(b"/sha", CHUNKED, DEV) + b"3\r\nabc\r\n"), MORE],
            ),
            (
                client(b"1\r\nd\r\n0\r\nX-Sum: 4\r\n\r\n"),
                [to_up(1, b"1\r\nd\r\n0\r\nX-Sum: 4\r\n\r\n")],
            ),
            (
                up(1, b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n4\r\nabcd\r\n"),
                [to_client(b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n4\r\nabcd\r\n")],
            ),
            (
                up(1, b"0\r\nX-Trailer: local\r\n\r\n"),
                [to_client(b"0\r\nX-Trailer: local\r\n\r\n"), NEXT],
            ),
        ],
    ),
    Case(
        "an answer before the whole body: the body still goes to the app, then keep-alive",
        [
            (
                client(post(b"/early", length(6)) + b"abc"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [to_up(1, post(b"/early", length(6)) + b"abc"), MORE],
            ),
            (up(1, ok(b"early")), [to_client(ok(b"early"))]),
            (client(b"def"), [to_up(1, b"def"), NEXT]),
            (client(get(b"/again")), [to_up(1, get(b"/again"))]),
        ],
    ),
    Case(
        "an answer with Connection: close before the whole body ends the connection",
        [
            (
                client(post(b"/early", length(6)) + b"abc"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [to_up(1, post(b"/early", length(6)) + b"abc"), MORE],
            ),
            (up(1, ok(b"no", CLOSE)), [to_client(ok(b"no", CLOSE)), close_up(1), close_client()]),
            (client(b"def"), []),  # over: events are ignored
        ],
    ),
    Case(
        "the app stops taking the body: its answer is still relayed, the body dropped",
        [
            (
                client(post(b"/big", length(6)) + b"abc"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [to_up(1, post(b"/big", length(6)) + b"abc"), MORE],
            ),
            (up_write_failed(1, "broken pipe"), []),
            (client(b"def"), []),
            (up(1, ok(b"too big")), [to_client(ok(b"too big")), close_up(1), NEXT]),
        ],
    ),
    Case(
        "unreachable local app: 502, and the connection goes on",
        [
            (client(get(b"/x", DEV)), [open_up(1, "local")]),
            (
                failed(1, "connection refused"),
                [bad_gateway(LOCAL_DOWN + " (connection refused)"), NEXT],
            ),
            (client(get(b"/y")), [open_up(2, None)]),
            (opened(2), [to_up(2, get(b"/y"))]),
            (up(2, ok(b"y")), [to_client(ok(b"y")), NEXT]),
            # A request body nobody reads: answered, dropped, the connection still usable.
            (
                client(post(b"/z", DEV, length(4))),
                [open_up(3, "local")],
            ),
            (failed(3, ""), [bad_gateway(LOCAL_DOWN), MORE]),
            (client(b"data" + get(b"/w")), [to_up(2, get(b"/w"))]),
        ],
    ),
    Case(
        "502 to a HEAD request has no body",
        [
            (client(get(b"/h", method=b"HEAD")), [open_up(1, None)]),
            (failed(1, "no route"), [bad_gateway(POD_DOWN + " (no route)", head=True), NEXT]),
        ],
    ),
    Case(
        "502 when the app closes without answering (a fresh connection: no retry)",
        [
            (client(get(b"/drop", DEV)), [open_up(1, "local")]),
            (opened(1), [to_up(1, get(b"/drop", DEV))]),
            (up_eof(1), [close_up(1), bad_gateway(LOCAL_DOWN + CLOSED_EARLY), NEXT]),
            (client(get(b"/ok", DEV)), [open_up(2, "local")]),
        ],
    ),
    Case(
        "502 when the app's connection is reset before an answer",
        [
            (client(get(b"/r")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/r"))]),
            (
                up_reset(1, "reset by peer"),
                [
                    close_up(1),
                    bad_gateway(POD_DOWN + " (the upstream connection broke: reset by peer)"),
                    NEXT,
                ],
            ),
        ],
    ),
    Case(
        "502 when the app answers garbage",
        [
            (client(get(b"/g")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/g"))]),
            (
                up(1, b"SSH-2.0-OpenSSH\r\n\r\n"),
                [
                    close_up(1),
                    ClientLike(b"HTTP/1.1 502 Bad Gateway\r\n.*bad HTTP from the upstream: .*"),
                    NEXT,
                ],
            ),
        ],
    ),
    Case(
        "the app dying mid-answer cuts the client",
        [
            (client(get(b"/die")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/die"))]),
            (
                up(1, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
                [to_client(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")],
            ),
            (up_reset(1, "dying"), [close_up(1), AbortClient()]),
        ],
    ),
    Case(
        "the app closing mid-answer cuts the client too",
        [
            (client(get(b"/die")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/die"))]),
            (
                up(1, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part"),
                [to_client(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")],
            ),
            (up_eof(1), [close_up(1), AbortClient()]),
        ],
    ),
    Case(
        "a kept-alive upstream that closed while idle is dropped; the next request reconnects",
        [
            (client(get(b"/a")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/a"))]),
            (up(1, ok(b"a")), [to_client(ok(b"a")), NEXT]),
            (up_eof(1), [close_up(1)]),
            (client(get(b"/b")), [open_up(2, None)]),
        ],
    ),
    Case(
        "an idle upstream sending something unasked is dropped",
        [
            (client(get(b"/a")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/a"))]),
            (up(1, ok(b"a") + b"HTTP/1.1 200 OK\r\n"), [to_client(ok(b"a")), close_up(1), NEXT]),
            (client(get(b"/b")), [open_up(2, None)]),
        ],
    ),
    Case(
        "an upstream that closes after answering, while the body still streams: not reused",
        [
            (client(post(b"/early", length(6)) + b"abc"), [open_up(1, None)]),
            (opened(1), [to_up(1, post(b"/early", length(6)) + b"abc"), MORE]),
            (up(1, ok(b"early")), [to_client(ok(b"early"))]),
            (up_eof(1), []),
            (client(b"def"), [to_up(1, b"def"), close_up(1), NEXT]),
            (client(get(b"/again")), [open_up(2, None)]),
        ],
    ),
    Case(
        "an idle upstream whose connection breaks is dropped",
        [
            (client(get(b"/a", DEV)), [open_up(1, "local")]),
            (opened(1), [to_up(1, get(b"/a", DEV))]),
            (up(1, ok(b"a")), [to_client(ok(b"a")), NEXT]),
            (up_reset(1, "reset"), [close_up(1)]),
            (up(1, b"late"), []),  # a dropped connection's events are ignored
            (client(get(b"/b", DEV)), [open_up(2, "local")]),
        ],
    ),
    Case(
        "a kept-alive upstream closing just as a request goes out: retried once",
        [
            (client(get(b"/a")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/a"))]),
            (up(1, ok(b"a")), [to_client(ok(b"a")), NEXT]),
            (client(get(b"/b")), [to_up(1, get(b"/b"))]),
            (up_eof(1), [close_up(1), open_up(2, None)]),
            (opened(2), [to_up(2, get(b"/b"))]),
            (up_eof(2), [close_up(2), bad_gateway(POD_DOWN + CLOSED_EARLY), NEXT]),
        ],
    ),
    Case(
        "no retry for a request with a body",
        [
            (client(get(b"/a")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/a"))]),
            (up(1, ok(b"a")), [to_client(ok(b"a")), NEXT]),
            (
                client(post(b"/b", length(1)) + b"!"),
                [to_up(1, post(b"/b", length(1)) + b"!")],
            ),
            (up_eof(1), [close_up(1), bad_gateway(POD_DOWN + CLOSED_EARLY), NEXT]),
        ],
    ),
    Case(
        "101: the client and the app are spliced, the bytes h11 holds go first",
        [
            (client(get(b"/ws", DEV)), [open_up(1, "local")]),
            (opened(1), [to_up(1, get(b"/ws", DEV))]),
            (up(1, ok(b"first")), [to_client(ok(b"first")), NEXT]),
            (
                client(get(b"/w", b"Connection: Upgrade\r\nUpgrade: echo\r\n") + b"hello"),
                [open_up(2, None)],
            ),
            (opened(2), [to_up(2, get(b"/w", b"Connection: Upgrade\r\nUpgrade: echo\r\n"))]),
            (
                up(2, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\nearly"),
                [
                    to_client(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n"),
                    close_up(1),  # the idle kept-alive one is not needed any more
                    Splice(2, b"hello", False, b"early", False),
                ],
            ),
            (client(b"more"), []),  # the shell relays from here
        ],
    ),
    Case(
        "101 while the request body still comes: it waits for the end of the body",
        [
            (
                client(post(b"/up", b"Upgrade: echo\r\n", length(4)) + b"ab"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [
                    to_up(
                        1,
                        post(b"/up", b"Upgrade: echo\r\n", length(4)) + b"ab",
                    ),
                    MORE,
                ],
            ),
            (up(1, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n"), []),
            (up_eof(1), []),
            (
                client(b"cd"),
                [
                    to_up(1, b"cd"),
                    to_client(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n\r\n"),
                    Splice(1, b"", False, b"", True),
                ],
            ),
        ],
    ),
    Case(
        "CONNECT: a 2xx splices",
        [
            (
                client(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" + DEV + b"\r\nping"),
                [open_up(1, "local")],
            ),
            (
                opened(1),
                [to_up(1, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" + DEV + b"\r\n")],
            ),
            (
                up(1, b"HTTP/1.1 200 OK\r\n\r\npong"),
                [to_client(b"HTTP/1.1 200 OK\r\n\r\n"), Splice(1, b"ping", False, b"pong", False)],
            ),
        ],
    ),
    Case(
        "CONNECT with a body: the body goes to the app first, then the splice",
        [
            (
                client(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" + length(3) + b"\r\nab"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [
                    to_up(
                        1, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n" + length(3) + b"\r\nab"
                    ),
                    MORE,
                ],
            ),
            (up(1, b"HTTP/1.1 200 OK\r\n\r\n"), [to_client(b"HTTP/1.1 200 OK\r\n\r\n")]),
            (client(b"c" + b"raw"), [to_up(1, b"c"), Splice(1, b"raw", False, b"", False)]),
        ],
    ),
    Case(
        "CONNECT refused: an ordinary answer",
        [
            (client(b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"), [open_up(1, None)]),
            (opened(1), [to_up(1, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")]),
            (
                up(1, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"),
                [to_client(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno"), NEXT],
            ),
        ],
    ),
    Case(
        "Connection: close from the client: answered, then closed (lingering)",
        [
            (client(get(b"/c", CLOSE)), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/c", CLOSE))]),
            (
                up(1, ok(b"c")),
                [
                    to_client(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n" + CLOSE + b"\r\nc"),
                    close_up(1),
                    close_client(),
                ],
            ),
        ],
    ),
    Case(
        "Connection: close from the app closes the client",
        [
            (client(get(b"/close")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/close"))]),
            (up(1, ok(b"bye", CLOSE)), [to_client(ok(b"bye", CLOSE)), close_up(1), close_client()]),
        ],
    ),
    Case(
        "a body delimited by the app closing: chunked to the client, then closed",
        [
            (client(get(b"/eof", DEV)), [open_up(1, "local")]),
            (opened(1), [to_up(1, get(b"/eof", DEV))]),
            (
                up(1, b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),
                [
                    to_client(
                        b"HTTP/1.1 200 OK\r\n" + CLOSE + CHUNKED + b"\r\nd\r\nuntil the end\r\n"
                    )
                ],
            ),
            (up_eof(1), [to_client(b"0\r\n\r\n"), close_up(1), close_client()]),
        ],
    ),
    Case(
        "HTTP/1.0 client: a Host header for the app, close-delimited answer, no trailers",
        [
            (client(b"GET /old HTTP/1.0\r\n" + DEV + b"\r\n"), [open_up(1, "local")]),
            (opened(1), [to_up(1, b"GET /old HTTP/1.1\r\nHost: \r\n" + DEV + b"\r\n")]),
            (
                up(1, b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n3\r\nold\r\n0\r\nX-T: 1\r\n\r\n"),
                [
                    to_client(b"HTTP/1.1 200 OK\r\n" + CLOSE + b"\r\nold"),
                    close_up(1),
                    close_client(),
                ],
            ),
        ],
    ),
    Case(
        "Expect: 100-continue: the app's 100 is relayed, then the body",
        [
            (
                client(CONTINUE),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [
                    to_up(
                        1,
                        CONTINUE,
                    ),
                    MORE,
                ],
            ),
            (
                up(1, b"HTTP/1.1 100 Continue\r\n\r\n"),
                [to_client(b"HTTP/1.1 100 Continue\r\n\r\n")],
            ),
            (client(b"hi"), [to_up(1, b"hi")]),
            (up(1, ok(b"2")), [to_client(ok(b"2")), NEXT]),
        ],
    ),
    Case(
        "a 502 to a client waiting for 100-continue closes the connection",
        [
            (
                client(CONTINUE),
                [open_up(1, None)],
            ),
            (failed(1, "refused"), [bad_gateway(POD_DOWN + " (refused)", CLOSE), close_client()]),
        ],
    ),
    Case(
        "a malformed request gets 400 and close",
        [(client(b"GET / HTTP/1.1\r\nHost x\r\n\r\n"), [bad_request(), close_client()])],
    ),
    Case(
        "an oversized request head gets 431",
        [
            (client(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 10000), [NEXT]),
            (client(b"a" * 60000), [bad_request(b"431"), close_client()]),
        ],
    ),
    Case(
        "a malformed body before any answer: 400, the upstream closed",
        [
            (client(post(b"/b", CHUNKED)), [open_up(1, None)]),
            (opened(1), [to_up(1, post(b"/b", CHUNKED)), MORE]),
            (client(b"zz\r\n"), [bad_request(), close_up(1), close_client()]),
        ],
    ),
    Case(
        "a malformed body once the answer started: reset",
        [
            (client(post(b"/b", CHUNKED)), [open_up(1, None)]),
            (opened(1), [to_up(1, post(b"/b", CHUNKED)), MORE]),
            (
                up(1, b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n"),
                [to_client(b"HTTP/1.1 200 OK\r\n" + CHUNKED + b"\r\n")],
            ),
            (client(b"zz\r\n"), [close_up(1), AbortClient()]),
        ],
    ),
    Case(
        "the client leaving in the middle of its body",
        [
            (
                client(post(b"/b", length(9)) + b"abc"),
                [open_up(1, None)],
            ),
            (
                opened(1),
                [to_up(1, post(b"/b", length(9)) + b"abc"), MORE],
            ),
            (client_eof(), [bad_request(), close_up(1), close_client(linger=False)]),
        ],
    ),
    Case(
        "a client connection that breaks",
        [
            (client(get(b"/a")), [open_up(1, None)]),
            (opened(1), [to_up(1, get(b"/a"))]),
            (client_reset(), [close_up(1), AbortClient()]),
            (up(1, ok(b"late")), []),
        ],
    ),
    Case(
        "a connection attempt still under way is abandoned at the end",
        [
            (client(get(b"/a", CLOSE) + get(b"/b")), [open_up(1, None)]),
            (client_reset(), [close_up(1), AbortClient()]),
        ],
    ),
    Case(
        "a request split anywhere is the same request",
        [
            (client(b"GE"), [NEXT]),
            (client(b"T /split HT"), [NEXT]),
            (client(b"TP/1.1\r\nHost: x\r\n" + DEV + b"\r"), [NEXT]),
            (client(b"\n"), [open_up(1, "local")]),
            (opened(1), [to_up(1, get(b"/split", DEV))]),
            (up(1, b"HTTP/1.1 200 OK\r\nContent-"), []),
            (
                up(1, b"Length: 2\r\n\r\no"),
                [to_client(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")],
            ),
            (up(1, b"k"), [to_client(b"k"), NEXT]),
        ],
    ),
]


def merged(actions: Sequence[Action]) -> list[Action]:
    """Consecutive writes to the same place joined (how bytes are cut into actions is not
    part of the contract)."""
    out: list[Action] = []
    for action in actions:
        last = out[-1] if out else None
        if isinstance(action, SendClient) and isinstance(last, SendClient):
            out[-1] = SendClient(last.data + action.data)
        elif (
            isinstance(action, SendUpstream)
            and isinstance(last, SendUpstream)
            and last.conn == action.conn
        ):
            out[-1] = SendUpstream(last.conn, last.data + action.data)
        else:
            out.append(action)
    return out


def matches(expected: Expected, got: Action) -> bool:
    if isinstance(expected, ClientLike):
        return isinstance(got, SendClient) and bool(re.fullmatch(expected.pattern, got.data, re.S))
    return expected == got


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_core(case: Case) -> None:
    core = Http1Core(case.decide)
    for number, (event, expected) in enumerate(case.steps, 1):
        got = merged(event.feed(core))
        ok_ = len(got) == len(expected) and all(map(matches, expected, got))
        assert ok_, (
            f"step {number} ({event!r:.200}):\n  expected {expected!r:.600}\n  got {got!r:.600}"
        )


def test_finished_core_takes_no_more_events() -> None:
    core = Http1Core(by_filter)
    assert core.client_data(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")[-1] == close_client()
    assert core.finished
    assert core.client_data(get(b"/")) == []
    assert core.upstream_opened(1) == []
