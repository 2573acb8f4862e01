"""Fuzz HTTP/1 request routing on the steal path: `router.route_http` (and so `http1`,
`routing` and the request filters) serving a client whose bytes are the fuzz input, with
in-memory upstreams that parse what they get with h11 and answer every request.

Invariants:
- `looks_like_http`: once the first line is complete, more bytes never change the verdict
  (except for a start of the HTTP/2 preface);
- route_http ends (no hang), leaves no task running, and closes every upstream it opened;
- nothing but the anticipated errors (bad HTTP from the client, a broken connection) reaches
  the routers' catch-all logging; never an h11 LocalProtocolError (we sent bad HTTP);
- the upstreams only ever get valid HTTP/1;
- each upstream gets exactly the requests `decide` sent its way, in order, with the method,
  target and headers the decision saw (plus a Host header where the client sent none);
- the client gets the answers in request order, and all of them unless the router gave up
  on the connection;
- cutting the client's bytes into reads differently changes none of this;
- `http1_core.Http1Core` driven alone, without asyncio (`drive_core`), decides, routes and
  answers exactly as the whole router does: the asyncio shell adds no behaviour of its own.
"""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import atheris
import h11

from fuzz.common import InvariantViolation, check, provider, run, split
from fuzz.fakes import ClientPipe, LogRecorder, Loop, QueuePipe

with atheris.instrument_imports(include=["tether", "h11"]):
    from tether.agent.incoming.filters import HttpFilter
    from tether.agent.incoming.http1_core import (
        AbortClient,
        Action,
        CloseUpstream,
        Http1Core,
        OpenUpstream,
        ReadClient,
        SendClient,
        SendUpstream,
        Splice,
    )
    from tether.agent.incoming.http2 import PREFACE
    from tether.agent.incoming.router import Decide, RequestHead, looks_like_http, route_http

FILTERS: list[tuple[Hashable, HttpFilter]] = [
    ("alice", HttpFilter(headers=(re.compile(r"^x-dev: alice$"),))),
    (
        "api",
        HttpFilter(path=re.compile(r"^/api/"), methods=frozenset({"POST", "PUT"}), mode="any"),
    ),
]
MARKER = b"x-fuzz-answer"


@dataclass
class Seen:
    """Requests as `decide` saw them and as each upstream got them, and what was opened."""

    decided: list[tuple[Hashable | None, RequestHead]] = field(default_factory=list)
    upstreams: list[Upstream] = field(default_factory=list)


def decide_for(seen: Seen) -> Decide:
    def decide(head: RequestHead) -> Hashable | None:
        key = next((k for k, f in FILTERS if f.takes(head.method, head.target, head.headers)), None)
        seen.decided.append((key, head))
        return key

    return decide


class Upstream(QueuePipe):
    """An HTTP/1 server in memory: parses the router's bytes with h11 and answers each
    request with a numbered 200 once the request is complete."""

    answers = 0  # numbers the answers across all upstreams of one connection

    def __init__(self, key: Hashable | None, seen: Seen) -> None:
        super().__init__()
        self.key = key
        self.seen = seen
        self.conn = h11.Connection(h11.SERVER)
        self.requests: list[h11.Request] = []
        self.numbers: list[int] = []
        self.switched = False
        self.outbox: collections.deque[bytes] = collections.deque()  # for drive_core
        self.ended = False

    def feed(self, data: bytes) -> None:
        if not self.ended:
            self.outbox.append(data)
            self.ended = not data
        super().feed(data)

    def received(self, data: bytes) -> None:
        if self.switched:
            return  # raw bytes after CONNECT: dropped
        try:
            self.conn.receive_data(data)
            self._serve()
        except h11.RemoteProtocolError as exc:
            raise InvariantViolation(f"the router sent bad HTTP/1 upstream: {exc}") from exc

    def write_eof(self) -> None:
        if not self.switched:
            self.conn.receive_data(b"")
            try:
                self._serve()
            except h11.RemoteProtocolError as exc:
                raise InvariantViolation(f"bad end of HTTP/1 upstream: {exc}") from exc
        super().write_eof()

    def _serve(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
                    self.conn.start_next_cycle()
                    continue
                if self.conn.our_state is h11.MUST_CLOSE:
                    self.feed(b"")
                return
            if isinstance(event, h11.Request):
                self.requests.append(event)
            elif isinstance(event, h11.EndOfMessage):
                self._answer()
            elif isinstance(event, h11.ConnectionClosed):
                self.feed(b"")
                return

    def _answer(self) -> None:
        Upstream.answers += 1
        number = Upstream.answers
        self.numbers.append(number)
        request = self.requests[-1]
        body = b"answer %d" % number
        headers = [(MARKER, b"%d" % number), (b"content-length", b"%d" % len(body))]
        out = self.conn.send(h11.Response(status_code=200, headers=headers)) or b""
        if self.conn.our_state is h11.SWITCHED_PROTOCOL:  # a CONNECT: a tunnel from here on
            self.switched = True
            self.feed(out)
            return
        if request.method != b"HEAD":
            out += self.conn.send(h11.Data(data=body)) or b""
        out += self.conn.send(h11.EndOfMessage()) or b""
        self.feed(out)


@dataclass
class Result:
    """What one connection did: the routing seen, and the client's end."""

    seen: Seen
    client: ClientPipe


LOOP: Loop | None = None
RECORDER: LogRecorder | None = None


def serve(pieces: list[bytes]) -> Result:
    """Route one client connection made of `pieces`; checks the per-connection invariants."""
    global LOOP, RECORDER
    if LOOP is None or RECORDER is None:
        LOOP, RECORDER = Loop(), LogRecorder("tether.agent.incoming.router")
    RECORDER.records.clear()
    Upstream.answers = 0
    seen = Seen()
    # The manager reads the first bytes itself (to tell HTTP from other protocols).
    first, rest = (pieces[0], pieces[1:]) if pieces else (b"", [])
    client = ClientPipe(rest)

    async def connect(key: Hashable | None) -> Upstream:
        upstream = Upstream(key, seen)
        seen.upstreams.append(upstream)
        return upstream

    LOOP.run(route_http(client, first, decide_for(seen), connect))
    RECORDER.check_no_unexpected_errors((OSError, h11.RemoteProtocolError))
    for upstream in seen.upstreams:
        check(upstream.closed or upstream.aborted, "an upstream connection was left open")
    check(client.closed, "the client connection was not closed")
    check_routing(seen)
    check_answers(seen, client)
    return Result(seen, client)


def drive_core(raw: bytes) -> Result:
    """The connection of `serve([raw])` served by `Http1Core` alone, driven synchronously:
    upstreams answer at once, and their events go first, client reads last (as the asyncio
    fakes arrange with their quiet turns). Checks the same invariants as `serve`."""
    assert RECORDER is not None
    RECORDER.records.clear()
    Upstream.answers = 0
    seen = Seen()
    client = ClientPipe([])
    core = Http1Core(decide_for(seen))
    links: dict[int, Upstream] = {}
    opening: collections.deque[int] = collections.deque()
    want_client = False
    actions: list[Action] = core.client_data(raw)
    while True:
        for action in actions:
            if isinstance(action, SendClient):
                client.received += action.data
            elif isinstance(action, SendUpstream):
                links[action.conn].received(action.data)
            elif isinstance(action, ReadClient):
                want_client = True
            elif isinstance(action, OpenUpstream):
                upstream = Upstream(action.key, seen)
                seen.upstreams.append(upstream)
                links[action.conn] = upstream
                opening.append(action.conn)
            elif isinstance(action, CloseUpstream):
                links.pop(action.conn).closed = True
            else:
                if isinstance(action, Splice):
                    links.pop(action.conn).closed = True
                client.aborted = isinstance(action, AbortClient)
                client.closed = True
        if core.finished:
            break
        actions = _next_core_event(core, links, opening)
        if not actions and want_client:
            want_client = False
            actions = core.client_eof()  # all of the input was given at once
        check(bool(actions) or core.finished, "the core waits for an event that cannot come")
    RECORDER.check_no_unexpected_errors((OSError, h11.RemoteProtocolError))
    for upstream in seen.upstreams:
        check(upstream.closed, "the core left an upstream connection open")
    check_routing(seen)
    check_answers(seen, client)
    return Result(seen, client)


def _next_core_event(
    core: Http1Core, links: dict[int, Upstream], opening: collections.deque[int]
) -> list[Action]:
    """Feed the core the next upstream event (a connection open, bytes, an EOF), if any."""
    if opening:
        return core.upstream_opened(opening.popleft())
    for conn, upstream in links.items():
        if upstream.outbox:
            data = upstream.outbox.popleft()
            return core.upstream_data(conn, data) if data else core.upstream_eof(conn)
    return []


def check_routing(seen: Seen) -> None:
    for key in {k for k, _ in seen.decided} | {u.key for u in seen.upstreams}:
        wanted = [head for k, head in seen.decided if k == key]
        got = [r for u in seen.upstreams if u.key == key for r in u.requests]
        check(len(got) == len(wanted), f"{key!r}: {len(wanted)} requests routed, {len(got)} got")
        for head, request in zip(wanted, got, strict=True):
            check(head.method == _text(request.method), "the upstream got another method")
            check(head.target == _text(request.target), "the upstream got another target")
            # h11 writes Host first (RFC 9110 asks for that); the rest keep their order.
            relayed = [(_text(n), _text(v)) for n, v in request.headers.raw_items()]
            hosts = [h for h in head.headers if h[0].lower() == "host"] or [("Host", "")]
            check(relayed[: len(hosts)] == hosts, "the upstream got other Host headers")
            others = tuple(h for h in head.headers if h[0].lower() != "host")
            check(tuple(relayed[len(hosts) :]) == others, "the upstream got other headers")


def check_answers(seen: Seen, client: ClientPipe) -> None:
    shown = [int(n) for n in re.findall(rb"(?i)" + MARKER + rb": (\d+)\r\n", client.received)]
    answered = sorted(n for u in seen.upstreams for n in u.numbers)
    check(shown == sorted(shown), f"answers out of order: {shown}")
    check(set(shown) <= set(answered), "the client got an answer nobody gave")
    if not client.aborted:
        check(shown == answered, f"answers {answered} given, {shown} relayed")


def _answers(client: ClientPipe) -> list[bytes]:
    # Status lines and our markers: the text of a 400 quotes as much of the bad request as
    # h11 had buffered, which does depend on how it arrived.
    return re.findall(rb"(?:^|\r\n)(HTTP/1\.1 \d+|" + MARKER + rb": \d+)", client.received)


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def check_looks_like_http(data: bytes, more: bytes) -> None:
    verdict = looks_like_http(data)
    if b"\n" in data and not (len(data) >= 4 and PREFACE.startswith(data)):
        check(looks_like_http(data + more) == verdict, "more bytes changed a complete verdict")
    for size in range(4, len(PREFACE) + 1):
        check(looks_like_http(PREFACE[:size]), f"{size} bytes of the preface are not HTTP")


def test_one_input(data: bytes) -> None:
    """One fuzz input: the client's bytes, then how to cut them into reads."""
    fdp = provider(data)
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    check_looks_like_http(raw, fdp.ConsumeBytes(8))
    if not raw:
        return
    whole = serve([raw])
    alone = drive_core(raw)
    cut = serve(split(fdp, raw))
    for name, a, b, c in [
        ("decided", whole.seen.decided, cut.seen.decided, alone.seen.decided),
        ("routed", _routed(whole.seen), _routed(cut.seen), _routed(alone.seen)),
        ("answered", _answers(whole.client), _answers(cut.client), _answers(alone.client)),
    ]:
        check(a == b, f"cutting the client's bytes differently changed what was {name}")
        check(a == c, f"the core alone and the router differ in what was {name}")


def _routed(seen: Seen) -> list[tuple[Hashable | None, list[tuple[Any, ...]]]]:
    return [
        (u.key, [(r.method, r.target, r.http_version, r.headers.raw_items()) for r in u.requests])
        for u in seen.upstreams
    ]


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
