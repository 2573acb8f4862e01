"""http2_core.Http2Core driven in memory, as tables: an h2 client and h2 servers (the
upstreams) make the bytes the core is fed and decode the bytes its actions send; no sockets,
no clocks."""

from __future__ import annotations

import collections
import functools
import itertools
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import DataFrame, GoAwayFrame, HeadersFrame, SettingsFrame
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.agent.incoming.http_peers import alice_filter, filters_decide
from tether.agent.incoming.http2_core import (
    PREFACE,
    Action,
    CloseClient,
    CloseUpstream,
    Http2Core,
    OpenUpstream,
    SendClient,
    SendUpstream,
    _FrameSplitter,
    _GoAway,
    request_head,
)
from tether.agent.incoming.router import RequestHead

Header = tuple[bytes, bytes]
Key = Hashable | None

ALICE = ("x-dev", "alice")
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, ENHANCE_YOUR_CALM = 6, 7, 8, 11
DEFAULT_WINDOW = 65535
OUR_STREAM_WINDOW = 1 << 18  # what the core grants per stream
GRPC = ("content-type", "application/grpc")
LOCAL_DOWN = "tether: the local app on the developer's machine did not answer"


def request_headers(
    path: str, method: str = "GET", extra: Iterable[tuple[str, str]] = ()
) -> list[Header]:
    return [
        (b":method", method.encode()),
        (b":path", path.encode()),
        (b":scheme", b"http"),
        (b":authority", b"example.test"),
        *((k.encode(), v.encode()) for k, v in extra),
    ]


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


# -- the peers ----------------------------------------------------------------------------------


@dataclass
class Response:
    """One stream as the client saw it."""

    headers: list[Header] = field(default_factory=list)
    informational: list[list[Header]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)
    trailers: list[Header] | None = None
    head_ended: bool = False  # END_STREAM on the response HEADERS ("trailers-only")
    ended: bool = False
    reset: int | None = None

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k == name), None)

    @property
    def status(self) -> int:
        return int(self.header(b":status") or b"0")


class Peer:
    """An h2 connection in memory that sends DATA as its peer's window allows."""

    def __init__(self, *, client_side: bool, auto_ack: bool = True) -> None:
        config = h2.config.H2Configuration(client_side=client_side, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.auto_ack = auto_ack
        self.received: collections.Counter[int] = collections.Counter()  # DATA per stream
        self.goaway: h2.events.ConnectionTerminated | None = None
        self._outbox = bytearray()
        self._pending: dict[int, tuple[bytearray, list[Header] | None, bool]] = {}

    def raw(self, data: bytes) -> None:
        """Send bytes h2 would not (after what h2 queued so far)."""
        self._outbox += self.conn.data_to_send() + data

    def take(self) -> bytes:
        data = bytes(self._outbox) + self.conn.data_to_send()
        self._outbox.clear()
        return data

    def send_body(
        self, sid: int, body: bytes, *, end: bool = True, trailers: list[Header] | None = None
    ) -> None:
        self._pending[sid] = (bytearray(body), trailers, end)
        self.pump()

    def unsent(self, sid: int) -> int:
        entry = self._pending.get(sid)
        return 0 if entry is None else len(entry[0])

    def pump(self) -> None:
        for sid, (body, trailers, end) in list(self._pending.items()):
            while body:
                room = min(
                    self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size
                )
                if room <= 0:
                    break
                self.conn.send_data(sid, bytes(body[:room]))
                del body[:room]
            if not body:
                del self._pending[sid]
                if trailers is not None:
                    self.conn.send_headers(sid, trailers, end_stream=True)
                elif end:
                    self.conn.end_stream(sid)

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            self.on_event(event)
            if isinstance(event, h2.events.DataReceived):
                self.received[event.stream_id] += len(event.data)
                if self.acks(event.stream_id):
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, h2.events.ConnectionTerminated):
                self.goaway = event
        self.pump()

    def on_event(self, event: h2.events.Event) -> None:
        """What the peer makes of an event."""

    def acks(self, stream_id: int) -> bool:
        """Whether the peer hands DATA of the stream back at once (opening its window)."""
        return self.auto_ack


class Client(Peer):
    """The HTTP/2 client (prior knowledge)."""

    def __init__(self, *, auto_ack: bool = True) -> None:
        super().__init__(client_side=True, auto_ack=auto_ack)
        self.responses: dict[int, Response] = {}

    def request(
        self,
        path: str,
        *,
        method: str = "GET",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = Response()
        hdrs = request_headers(path, method, headers)
        self.conn.send_headers(sid, hdrs, end_stream=body is None and end)
        if body is not None:
            self.send_body(sid, body, end=end)
        return sid

    def on_event(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        response = self.responses.get(sid) if isinstance(sid, int) else None
        if response is not None:
            if isinstance(event, h2.events.InformationalResponseReceived):
                response.informational.append(list(event.headers))
            elif isinstance(event, h2.events.ResponseReceived):
                response.headers = list(event.headers)
                response.head_ended = event.stream_ended is not None
            elif isinstance(event, h2.events.DataReceived):
                response.body += event.data
            elif isinstance(event, h2.events.TrailersReceived):
                response.trailers = list(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                response.ended = True
            elif isinstance(event, h2.events.StreamReset):
                response.reset = int(event.error_code)


@dataclass
class Request:
    """One stream as an upstream saw it."""

    headers: list[Header]
    body: bytearray = field(default_factory=bytearray)
    trailers: list[Header] | None = None
    ended: bool = False
    reset: int | None = None

    @property
    def path(self) -> str:
        return dict(self.headers)[b":path"].decode()


# Paths the upstream does not answer when the request is complete: the test does (/hold),
# or they answer otherwise (see `Upstream._on_request`).
SELF_PACED = ("/hold", "/hang", "/noread", "/reset", "/answer-then-reset")


class Upstream(Peer):
    """An HTTP/2 server at the other end of one OpenUpstream: answers "<key> <method>
    <target> <body length>" with `x-server: <key>` once a request is complete; the path
    picks other behaviours (see `_on_request` and `answer`)."""

    def __init__(self, open_: OpenUpstream, settings: dict[int, int] | None = None) -> None:
        super().__init__(client_side=False)
        self.conn_id = open_.conn_id
        self.key = open_.key
        self.name = str(self.key).encode()
        if settings:
            self.conn.update_settings(settings)
        self.requests: dict[int, Request] = {}
        self.concurrent = self.max_concurrent = 0
        self.closed: CloseUpstream | None = None
        self.muted = False  # sends nothing (an upstream that never answers the handshake)

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            request = Request(list(event.headers))
            self.requests[event.stream_id] = request
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self._on_request(event.stream_id, request)
        found = self.requests.get(getattr(event, "stream_id", -1))
        if found is not None:
            self._on_stream_event(found, event)

    def acks(self, stream_id: int) -> bool:
        request = self.requests.get(stream_id)
        return request is None or not request.path.startswith("/noread")

    def _on_stream_event(self, request: Request, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            request.body += event.data
        elif isinstance(event, h2.events.TrailersReceived):
            request.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded):
            request.ended = True
            if not request.path.startswith(SELF_PACED):
                self.answer(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            request.reset = int(event.error_code)
            self.concurrent -= 1

    def _on_request(self, sid: int, request: Request) -> None:
        url = urlsplit(request.path)
        if url.path == "/hang":
            self.conn.send_headers(sid, [(b":status", b"200"), (b"x-server", self.name)])
        elif url.path == "/reset":
            self.conn.reset_stream(sid, int(parse_qs(url.query)["code"][0]))
        elif url.path == "/answer-then-reset":
            # A complete answer while the request still comes, then "keep it" (RFC 9113 8.1).
            self.conn.send_headers(sid, [(b":status", b"200")])
            self.conn.send_data(sid, b"early", end_stream=True)
            self.conn.reset_stream(sid, NO_ERROR)

    def answer(self, sid: int) -> None:
        request = self.requests[sid]
        url = urlsplit(request.path)
        method = dict(request.headers)[b":method"].decode()
        head = [(b":status", b"200"), (b"x-server", self.name)]
        trailers: list[Header] | None = None
        body = f"{self.key} {method} {request.path} {len(request.body)}".encode()
        if url.path == "/early-hints":
            self.conn.send_headers(sid, [(b":status", b"103"), (b"link", b"</s.css>")])
        elif url.path == "/trailers":
            trailers = [(b"x-trailer", self.name)]
        elif url.path == "/echo":
            body = bytes(request.body)
        elif url.path == "/big":
            body = pattern(int(parse_qs(url.query)["n"][0]))
        elif url.path == "/grpc-stream":
            head.append((b"content-type", b"application/grpc"))
            body = b"".join(b"\x00\x00\x00\x00\x03m%d\n" % i for i in range(3))
            trailers = [(b"grpc-status", b"0")]
        elif url.path == "/grpc-error":
            # gRPC "trailers-only": the status in the one HEADERS frame, with END_STREAM.
            grpc_head = [*head, (b"content-type", b"application/grpc"), (b"grpc-status", b"5")]
            self.conn.send_headers(sid, grpc_head, end_stream=True)
            self.concurrent -= 1
            return
        elif url.path == "/empty-trailers":
            self.conn.send_headers(sid, head)
            self.conn.send_data(sid, b"data")
            # A trailer block with no fields (h2 cannot send one).
            self.raw(HeadersFrame(sid, data=b"", flags=["END_HEADERS", "END_STREAM"]).serialize())
            self.concurrent -= 1
            return
        self.conn.send_headers(sid, head)
        self.send_body(sid, body, trailers=trailers)
        self.concurrent -= 1

    def send_goaway(self, last_stream_id: int, code: int = NO_ERROR) -> None:
        # By hand: h2 sends nothing more after its own GOAWAY, but a graceful GOAWAY lets
        # the streams already taken finish.
        self.raw(GoAwayFrame(0, last_stream_id=last_stream_id, error_code=code).serialize())


# -- the network --------------------------------------------------------------------------------


def alice_decide(seen: list[RequestHead] | None = None) -> Callable[[RequestHead], Key]:
    return filters_decide([("local", alice_filter())], seen)


class Net:
    """The core between a client and the upstreams it opens, moving every byte until
    nothing moves any more. Actions are performed the way a shell does: at once, in order,
    without feeding the core from inside (what they cause is fed afterwards)."""

    def __init__(
        self,
        *,
        decide: Callable[[RequestHead], Key] | None = None,
        hold: Iterable[Key] = (),
        settings: dict[Key, dict[int, int]] | None = None,
        client_acks: bool = True,
    ) -> None:
        self.core = Http2Core(decide or alice_decide())
        self.client = Client(auto_ack=client_acks)
        self.hold = set(hold)  # connects to these keys wait for the test to end them
        self.settings = settings or {}
        self.upstreams: dict[int, Upstream] = {}
        self.opened: set[int] = set()
        self.actions: list[Action] = []
        self.closed: CloseClient | None = None
        self._inbox: collections.deque[Callable[[], list[Action]]] = collections.deque()
        self.settle()  # the preface, and the core's SETTINGS back
        assert isinstance(self.actions[0], SendClient)

    # What the tests look at.

    def of(self, key: Key) -> list[Upstream]:
        return [u for u in self.upstreams.values() if u.key == key]

    def up(self, key: Key) -> Upstream:
        (upstream,) = [u for u in self.of(key) if u.closed is None]
        return upstream

    def opens(self) -> collections.Counter[Key]:
        return collections.Counter(u.key for u in self.upstreams.values())

    def sent_after(self, mark: int) -> list[Action]:
        return self.actions[mark:]

    # Moving bytes.

    def perform(self, actions: list[Action]) -> None:
        self.actions += actions
        for action in actions:
            if isinstance(action, SendClient):
                assert self.closed is None, "sent to a closed client"
                self.client.receive(action.data)
            elif isinstance(action, SendUpstream):
                upstream = self.upstreams[action.conn_id]
                assert upstream.closed is None, "sent to a closed upstream"
                assert action.conn_id in self.opened, "sent before it was connected"
                upstream.receive(action.data)
            elif isinstance(action, OpenUpstream):
                upstream = Upstream(action, self.settings.get(action.key))
                self.upstreams[action.conn_id] = upstream
                if action.key not in self.hold:
                    self._inbox.append(functools.partial(self.open_call, action.conn_id))
            elif isinstance(action, CloseUpstream):
                upstream = self.upstreams[action.conn_id]
                assert upstream.closed is None, "closed twice"
                upstream.closed = action
            else:
                assert self.closed is None, "client closed twice"
                assert all(u.closed for u in self.upstreams.values()), "upstream left open"
                self.closed = action

    def feed(self, actions: list[Action]) -> None:
        """Perform `actions`, then move bytes until nothing moves."""
        self.perform(actions)
        self.settle()

    def open_call(self, conn_id: int) -> list[Action]:
        self.opened.add(conn_id)
        return self.core.upstream_opened(conn_id)

    def open(self, conn_id: int) -> None:
        """End a held connect: it is made."""
        self.feed(self.open_call(conn_id))

    def settle(self) -> None:
        for _ in range(10_000):
            if self._inbox:
                self.perform(self._inbox.popleft()())
                continue
            data = self.client.take()
            if data and self.closed is None:
                self.perform(self.core.client_data(data))
                continue
            for upstream in self.upstreams.values():
                if upstream.closed is None and not upstream.muted:
                    data = upstream.take()
                    if data:
                        self.perform(self.core.upstream_data(upstream.conn_id, data))
                        break
            else:
                return
        raise AssertionError("the bytes never stop moving")


# -- routing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("streams", "keys", "opens"),
    [
        pytest.param([[ALICE]], ["local"], {"local": 1}, id="filter-matches"),
        pytest.param([[]], [None], {None: 1}, id="no-header"),
        pytest.param([[("x-dev", "bob")]], [None], {None: 1}, id="other-value"),
        pytest.param([[("x-dev", "alice2")]], [None], {None: 1}, id="anchored"),
        pytest.param(
            [[ALICE], [], [ALICE], [("x-dev", "bob")]],
            ["local", None, "local", None],
            {"local": 1, None: 1},
            id="two-upstreams-one-connection",
        ),
    ],
)
def test_each_stream_goes_where_its_headers_say(
    streams: list[list[tuple[str, str]]], keys: list[Key], opens: dict[Key, int]
) -> None:
    net = Net()
    sids = [
        net.client.request(f"/s{i}", method="POST", headers=h, body=b"x" * i)
        for i, h in enumerate(streams)
    ]
    net.settle()
    assert net.opens() == opens
    for i, (sid, key) in enumerate(zip(sids, keys, strict=True)):
        response = net.client.responses[sid]
        assert (response.status, response.ended) == (200, True)
        assert bytes(response.body) == f"{key} POST /s{i} {i}".encode()
        assert response.header(b"x-server") == str(key).encode()
    for upstream in net.upstreams.values():
        wanted = [request_headers(f"/s{i}", "POST", h) for i, h in enumerate(streams)]
        got = [r.headers for r in upstream.requests.values()]
        assert got == [w for w, k in zip(wanted, keys, strict=True) if k == upstream.key]
    assert net.closed is None  # the connection goes on


@pytest.mark.parametrize(
    ("headers", "head"),
    [
        pytest.param(
            request_headers("/p?q=1", "PUT", [("x-dev", "carol")]),
            RequestHead("PUT", "/p?q=1", (("host", "example.test"), ("x-dev", "carol")), True),
            id="authority-as-host",
        ),
        pytest.param(
            request_headers("/", extra=[("host", "h.test")]),
            RequestHead("GET", "/", (("host", "h.test"),), True),
            id="host-kept",
        ),
        pytest.param(
            [(b":method", b"CONNECT"), (b":authority", b"db:5432")],
            RequestHead("CONNECT", "db:5432", (("host", "db:5432"),), True),
            id="connect-target",
        ),
        pytest.param(
            [*request_headers("/"), (b"x-bin", b"\xff")],
            RequestHead("GET", "/", (("host", "example.test"), ("x-bin", "\udcff")), True),
            id="undecodable-kept",
        ),
    ],
)
def test_request_head(headers: list[Header], head: RequestHead) -> None:
    assert request_head(headers) == head


def test_decide_gets_each_request_head() -> None:
    seen: list[RequestHead] = []
    net = Net(decide=alice_decide(seen))
    net.client.request("/p?q=1", method="PUT", headers=[("x-dev", "carol")], body=b"")
    net.settle()
    assert seen == [
        RequestHead("PUT", "/p?q=1", (("host", "example.test"), ("x-dev", "carol")), True)
    ]


def test_a_failing_decide_sends_to_the_original_app() -> None:
    def decide(head: RequestHead) -> Key:
        raise RuntimeError("broken filter")

    net = Net(decide=decide)
    sid = net.client.request("/x", headers=[ALICE])
    net.settle()
    assert bytes(net.client.responses[sid].body) == b"None GET /x 0"


def test_upstream_stream_limit_is_honoured() -> None:
    net = Net(settings={"local": {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2}})
    sids = [net.client.request(f"/hold{i}", headers=[ALICE]) for i in range(6)]
    net.settle()
    upstream = net.up("local")
    assert len(upstream.requests) == 2  # the rest wait in the core
    answered: set[int] = set()
    for _ in range(6):
        for sid in set(upstream.requests) - answered:
            answered.add(sid)
            upstream.answer(sid)
        net.settle()
    assert [bytes(net.client.responses[s].body) for s in sids] == [
        b"local GET /hold%d 0" % i for i in range(6)
    ]
    assert upstream.max_concurrent == 2
    assert net.opens() == {"local": 1}


def test_informational_responses_relayed() -> None:
    net = Net()
    sid = net.client.request("/early-hints", headers=[ALICE])
    net.settle()
    response = net.client.responses[sid]
    assert response.informational == [[(b":status", b"103"), (b"link", b"</s.css>")]]
    assert (response.status, response.ended) == (200, True)


# -- unreachable upstreams ----------------------------------------------------------------------


def _refused(net: Net, upstream: Upstream) -> None:
    net.feed(net.core.upstream_failed(upstream.conn_id, "Connect call failed"))


def _closed_before_settings(net: Net, upstream: Upstream) -> None:
    upstream.muted = True
    net.open(upstream.conn_id)
    net.feed(net.core.upstream_eof(upstream.conn_id))


def _bad_bytes(net: Net, upstream: Upstream) -> None:
    upstream.muted = True
    net.open(upstream.conn_id)
    # (h2 checks a frame once all of it came: this one, DATA on stream 0, is whole.)
    data_on_stream_0 = b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd"
    net.feed(net.core.upstream_data(upstream.conn_id, data_on_stream_0))


def _no_settings_in_time(net: Net, upstream: Upstream) -> None:
    upstream.muted = True
    net.open(upstream.conn_id)
    net.feed(net.core.handshake_timeout(upstream.conn_id))


def _goaway_with_settings(net: Net, upstream: Upstream) -> None:
    upstream.send_goaway(0)  # right behind its SETTINGS: it takes nothing
    net.open(upstream.conn_id)


@pytest.mark.parametrize(
    ("failure", "detail", "graceful"),
    [
        pytest.param(_refused, " (Connect call failed)\n", False, id="connect-refused"),
        pytest.param(
            _closed_before_settings, " (the upstream closed the connection)\n", False, id="eof"
        ),
        pytest.param(_bad_bytes, " (bad HTTP/2 from the upstream: ", False, id="not-http2"),
        pytest.param(_no_settings_in_time, "\n", False, id="handshake-timeout"),
        pytest.param(
            _goaway_with_settings, " (the upstream closed the connection)\n", True, id="goaway"
        ),
    ],
)
@pytest.mark.parametrize(
    ("method", "content_type", "status", "grpc"),
    [
        pytest.param("GET", None, 502, False, id="http"),
        pytest.param("HEAD", None, 502, False, id="head"),
        pytest.param("POST", "application/grpc", 200, True, id="grpc"),
        pytest.param("POST", "application/grpc+proto", 200, True, id="grpc-proto"),
    ],
)
def test_unreachable_upstream_gets_our_answer(
    failure: Callable[[Net, Upstream], None],
    detail: str,
    graceful: bool,
    method: str,
    content_type: str | None,
    status: int,
    grpc: bool,
) -> None:
    net = Net(hold={"local"})
    headers = [ALICE] if content_type is None else [ALICE, ("content-type", content_type)]
    body = b"q" * 100_000 if method == "POST" else None  # more than the upstream's window
    sid = net.client.request("/x", method=method, headers=headers, body=body)
    net.settle()
    (upstream,) = net.of("local")
    failure(net, upstream)
    response = net.client.responses[sid]
    assert response.status == status
    assert response.ended and response.reset is None
    text = LOCAL_DOWN + detail
    if grpc:
        assert response.head_ended  # "trailers-only": one HEADERS frame, with END_STREAM
        assert response.header(b"grpc-status") == b"14"  # UNAVAILABLE
        message = (response.header(b"grpc-message") or b"").decode()
        assert message.startswith(text.rstrip("\n"))
    else:
        assert response.header(b"content-type") == b"text/plain; charset=utf-8"
        length = int(response.header(b"content-length") or b"-1")
        if method == "HEAD":
            assert response.body == b""
            assert length > len(LOCAL_DOWN)
        else:
            assert bytes(response.body).decode().startswith(text)
            assert length == len(response.body)
    assert upstream.closed == CloseUpstream(upstream.conn_id, graceful=graceful)
    # The connection goes on; the original app is still reachable on it.
    other = net.client.request("/y")
    net.settle()
    assert bytes(net.client.responses[other].body) == b"None GET /y 0"
    assert net.closed is None


def test_grpc_message_is_percent_encoded() -> None:
    net = Net(hold={"local"})
    sid = net.client.request("/svc/M", method="POST", headers=[ALICE, GRPC], body=b"")
    net.settle()
    (upstream,) = net.of("local")
    net.feed(net.core.upstream_failed(upstream.conn_id, "100% ünavailable"))
    message = net.client.responses[sid].header(b"grpc-message") or b""
    assert message.endswith(b" (100%25 %C3%BCnavailable)")


def test_lost_upstream_resets_answered_streams_and_answers_the_rest() -> None:
    net = Net()
    answered = net.client.request("/hang", headers=[ALICE])
    waiting = net.client.request("/hold", headers=[ALICE])
    net.settle()
    upstream = net.up("local")
    net.feed(net.core.upstream_failed(upstream.conn_id, "the upstream connection broke: reset"))
    assert net.client.responses[answered].status == 200
    assert net.client.responses[answered].reset == INTERNAL_ERROR
    assert net.client.responses[waiting].status == 502
    assert b"(the upstream connection broke: reset)" in net.client.responses[waiting].body
    assert upstream.closed == CloseUpstream(upstream.conn_id, graceful=False)
    again = net.client.request("/again", headers=[ALICE])
    net.settle()
    assert bytes(net.client.responses[again].body) == b"local GET /again 0"
    assert net.opens() == {"local": 2}


# -- resets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "relayed"),
    [
        pytest.param(ENHANCE_YOUR_CALM, ENHANCE_YOUR_CALM, id="calm-passed-on"),
        pytest.param(CANCEL, CANCEL, id="cancel-passed-on"),
        pytest.param(REFUSED_STREAM, REFUSED_STREAM, id="refused-passed-on"),
        pytest.param(NO_ERROR, NO_ERROR, id="no-error-passed-on"),
        pytest.param(PROTOCOL_ERROR, INTERNAL_ERROR, id="protocol-error-mapped"),
        pytest.param(FLOW_CONTROL_ERROR, INTERNAL_ERROR, id="flow-control-error-mapped"),
    ],
)
def test_upstream_reset_reaches_the_client(code: int, relayed: int) -> None:
    net = Net()
    sid = net.client.request(f"/reset?code={code}", headers=[ALICE])
    net.settle()
    assert net.client.responses[sid].reset == relayed
    after = net.client.request("/after", headers=[ALICE])
    net.settle()
    assert net.client.responses[after].status == 200
    assert net.opens() == {"local": 1}


def test_upstream_done_early_stops_the_request_with_no_error() -> None:
    # The upstream answered completely and reset NO_ERROR while the request still came:
    # the client gets the whole answer, then NO_ERROR ("stop sending", RFC 9113 8.1).
    net = Net()
    sid = net.client.request("/answer-then-reset", method="POST", headers=[ALICE], end=False)
    net.settle()
    response = net.client.responses[sid]
    assert (response.status, bytes(response.body), response.ended) == (200, b"early", True)
    assert response.reset == NO_ERROR


@pytest.mark.parametrize(
    ("code", "relayed"),
    [
        pytest.param(CANCEL, CANCEL, id="cancel"),
        pytest.param(ENHANCE_YOUR_CALM, ENHANCE_YOUR_CALM, id="calm"),
        pytest.param(INTERNAL_ERROR, INTERNAL_ERROR, id="internal"),
        pytest.param(PROTOCOL_ERROR, CANCEL, id="protocol-error-mapped"),
        pytest.param(FLOW_CONTROL_ERROR, CANCEL, id="flow-control-error-mapped"),
    ],
)
def test_client_reset_reaches_the_upstream(code: int, relayed: int) -> None:
    net = Net()
    sid = net.client.request("/hang", headers=[ALICE])
    net.settle()
    assert net.client.responses[sid].header(b"x-server") == b"local"
    net.client.conn.reset_stream(sid, code)
    net.settle()
    (request,) = net.up("local").requests.values()
    assert request.reset == relayed
    after = net.client.request("/after", headers=[ALICE])
    net.settle()
    assert bytes(net.client.responses[after].body) == b"local GET /after 0"


# -- upstream GOAWAY ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "code", "first", "second", "graceful"),
    [
        # Streams 1 (answer begun) and 3 (not yet) are running on the upstream.
        pytest.param(3, NO_ERROR, "finished", "finished", True, id="graceful-both-finish"),
        pytest.param(1, NO_ERROR, "finished", REFUSED_STREAM, True, id="graceful-3-refused"),
        pytest.param(0, NO_ERROR, REFUSED_STREAM, REFUSED_STREAM, True, id="graceful-none-taken"),
        pytest.param(3, INTERNAL_ERROR, INTERNAL_ERROR, 502, False, id="error-ends-all"),
        pytest.param(
            1, INTERNAL_ERROR, INTERNAL_ERROR, REFUSED_STREAM, False, id="error-3-refused"
        ),
    ],
)
def test_upstream_goaway(
    last: int, code: int, first: str | int, second: str | int, graceful: bool
) -> None:
    net = Net()
    one = net.client.request("/hang", headers=[ALICE])
    three = net.client.request("/hold", headers=[ALICE])
    net.settle()
    upstream = net.up("local")
    assert sorted(upstream.requests) == [1, 3]
    upstream.send_goaway(last, code)
    net.settle()
    # New streams go to a new connection at once.
    new = net.client.request("/new", headers=[ALICE])
    net.settle()
    assert bytes(net.client.responses[new].body) == b"local GET /new 0"
    assert net.opens() == {"local": 2}
    # The old one finishes what it took.
    if first == "finished":
        upstream.send_body(1, b"rest")
    if second == "finished":
        upstream.answer(3)
    net.settle()
    for sid, outcome in ((one, first), (three, second)):
        response = net.client.responses[sid]
        if outcome == "finished":
            assert response.ended and response.reset is None
        elif outcome == 502:
            assert response.status == 502 and response.ended
        else:
            assert response.reset == outcome
    # Once idle it is closed: gracefully (our GOAWAY last) unless it failed.
    assert upstream.closed == CloseUpstream(upstream.conn_id, graceful=graceful)
    if graceful:
        assert upstream.goaway is not None and upstream.goaway.error_code == NO_ERROR
    assert net.closed is None


def test_streams_queued_for_a_retired_upstream_go_to_a_new_one() -> None:
    net = Net(settings={"local": {h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1}})
    running = net.client.request("/hold", headers=[ALICE])
    queued = net.client.request("/queued", headers=[ALICE])
    net.settle()
    first = net.up("local")
    assert list(first.requests) == [1]
    first.send_goaway(1)
    net.settle()
    assert bytes(net.client.responses[queued].body) == b"local GET /queued 0"
    first.answer(1)
    net.settle()
    assert net.client.responses[running].ended
    assert first.closed == CloseUpstream(first.conn_id, graceful=True)


# -- flow control -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [DEFAULT_WINDOW + 1, 1 << 20, 3 * OUR_STREAM_WINDOW + 5])
def test_request_body_moves_only_as_the_upstream_opens_its_window(size: int) -> None:
    net = Net()
    body = pattern(size)
    sid = net.client.request("/noread", method="POST", headers=[ALICE], body=body)
    net.settle()
    upstream = net.up("local")
    request = upstream.requests[1]
    acked = rounds = 0
    while not request.ended:
        got = len(request.body)
        # The upstream gets no more than its window; we hold no more than ours.
        assert got - acked <= DEFAULT_WINDOW
        assert size - net.client.unsent(sid) - got <= OUR_STREAM_WINDOW
        upstream.conn.acknowledge_received_data(got - acked, 1)
        acked = got
        rounds += 1
        assert rounds < 1000
        net.settle()
    assert bytes(request.body) == body
    assert rounds >= size // DEFAULT_WINDOW


@pytest.mark.parametrize("size", [DEFAULT_WINDOW + 1, 1 << 20])
def test_response_body_moves_only_as_the_client_opens_its_window(size: int) -> None:
    net = Net(client_acks=False)
    sid = net.client.request(f"/big?n={size}", headers=[ALICE])
    net.settle()
    upstream = net.up("local")
    response = net.client.responses[sid]
    acked = rounds = 0
    while not response.ended:
        got = len(response.body)
        assert got - acked <= DEFAULT_WINDOW  # the client's window
        assert size - upstream.unsent(1) - got <= OUR_STREAM_WINDOW
        net.client.conn.acknowledge_received_data(got - acked, sid)
        acked = got
        rounds += 1
        assert rounds < 1000
        net.settle()
    assert bytes(response.body) == pattern(size)
    assert rounds >= size // DEFAULT_WINDOW


def test_a_stalled_upstream_stalls_the_client() -> None:
    # The upstream never opens its window: we hold at most our stream window besides what
    # its window let through, and the client can send no more.
    net = Net()
    sid = net.client.request("/noread", method="POST", headers=[ALICE], body=b"z" * (4 << 20))
    net.settle()
    assert net.up("local").received[1] == DEFAULT_WINDOW
    sent = (4 << 20) - net.client.unsent(sid)
    assert OUR_STREAM_WINDOW < sent <= OUR_STREAM_WINDOW + DEFAULT_WINDOW
    assert net.client.conn.local_flow_control_window(sid) == 0


def test_data_of_a_closed_stream_is_still_acknowledged() -> None:
    # What reset streams had sent (held back for a stalled upstream) is handed back to the
    # client: more of it than our connection window must not stall the connection.
    net = Net()
    for _ in range(72):
        sid = net.client.request("/noread", method="POST", headers=[ALICE], body=b"y" * 60000)
        net.settle()
        net.client.conn.reset_stream(sid, CANCEL)
        net.settle()
    assert 72 * 60000 > 1 << 22
    last = net.client.request("/echo", method="POST", body=b"ok")
    net.settle()
    assert bytes(net.client.responses[last].body) == b"ok"


# -- trailers (gRPC) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "trailers", "head_ended"),
    [
        pytest.param(
            "/trailers", b"local POST /trailers 5", [(b"x-trailer", b"local")], False, id="http"
        ),
        pytest.param(
            "/grpc-stream",
            b"\x00\x00\x00\x00\x03m0\n\x00\x00\x00\x00\x03m1\n\x00\x00\x00\x00\x03m2\n",
            [(b"grpc-status", b"0")],
            False,
            id="grpc-server-streaming",
        ),
        pytest.param("/grpc-error", b"", None, True, id="grpc-trailers-only"),
        pytest.param("/empty-trailers", b"data", None, False, id="empty-trailer-block"),
    ],
)
def test_trailers_relayed_both_ways(
    path: str, body: bytes, trailers: list[Header] | None, head_ended: bool
) -> None:
    net = Net()
    sid = net.client.request(
        path, method="POST", headers=[ALICE, GRPC], body=b"\x00abcd", end=False
    )
    net.client.conn.send_headers(sid, [(b"grpc-timeout", b"1S")], end_stream=True)
    net.settle()
    (request,) = net.up("local").requests.values()
    assert (bytes(request.body), request.trailers) == (b"\x00abcd", [(b"grpc-timeout", b"1S")])
    response = net.client.responses[sid]
    assert (bytes(response.body), response.trailers) == (body, trailers)
    assert response.head_ended == head_ended
    assert response.ended and response.reset is None
    if head_ended:
        assert response.header(b"grpc-status") == b"5"


# -- the client's end ---------------------------------------------------------------------------


def _client_goaway(code: int) -> Callable[[Net], None]:
    def send(net: Net) -> None:
        net.client.raw(GoAwayFrame(0, last_stream_id=0, error_code=code).serialize())
        net.settle()

    return send


def _client_eof(net: Net) -> None:
    net.feed(net.core.client_eof())


def _client_failed(net: Net) -> None:
    net.feed(net.core.client_failed())


@pytest.mark.parametrize(
    ("end", "drains", "graceful"),
    [
        pytest.param(_client_goaway(NO_ERROR), True, True, id="goaway-drains"),
        pytest.param(_client_goaway(PROTOCOL_ERROR), False, True, id="goaway-error"),
        pytest.param(_client_eof, False, True, id="eof"),
        pytest.param(_client_failed, False, False, id="write-failed"),
    ],
)
def test_client_end(end: Callable[[Net], None], drains: bool, graceful: bool) -> None:
    net = Net()
    running = net.client.request("/hold", headers=[ALICE])
    done = net.client.request("/done")
    net.settle()
    assert net.client.responses[done].ended
    mark = len(net.actions)
    end(net)
    (local,) = net.of("local")
    (original,) = net.of(None)
    if drains:
        assert net.closed is None  # the running stream may finish
        assert local.closed is None and original.closed is None
        local.answer(1)
        net.settle()
        assert bytes(net.client.responses[running].body) == b"local GET /hold 0"
    else:
        assert not net.client.responses[running].ended  # cut
    assert net.closed == CloseClient(graceful=graceful)
    closes = [a for a in net.sent_after(mark) if isinstance(a, CloseUpstream)]
    assert sorted(c.conn_id for c in closes) == sorted(net.upstreams)
    assert all(c.graceful == graceful for c in closes)
    if graceful:
        # Our GOAWAY went out to everyone, as the last thing sent before the close.
        assert net.client.goaway is not None and net.client.goaway.error_code == NO_ERROR
        assert all(u.goaway is not None for u in net.upstreams.values())
        assert isinstance(net.actions[-2], SendClient)
    else:
        assert not any(isinstance(a, SendClient | SendUpstream) for a in net.sent_after(mark))
    # Nothing happens any more.
    assert net.core.client_data(b"\x00" * 9) == []
    assert net.core.upstream_data(original.conn_id, b"\x00" * 9) == []


def test_client_goaway_with_nothing_running_ends_at_once() -> None:
    net = Net()
    _client_goaway(NO_ERROR)(net)
    assert net.closed == CloseClient(graceful=True)
    assert net.client.goaway is not None and net.client.goaway.error_code == NO_ERROR


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        pytest.param(
            b"\x00\x00\x04\x00\x00\x00\x00\x00\x00abcd", PROTOCOL_ERROR, id="data-on-stream-0"
        ),
        pytest.param(
            HeadersFrame(2, data=b"\x82", flags=["END_HEADERS"]).serialize(),
            PROTOCOL_ERROR,
            id="even-stream-id",
        ),
        pytest.param(
            HeadersFrame(1, data=b"\xff\xff\xff\xff", flags=["END_HEADERS"]).serialize(),
            PROTOCOL_ERROR,
            id="bad-hpack",
        ),
        pytest.param(
            DataFrame(5, data=b"abc").serialize(), PROTOCOL_ERROR, id="data-on-idle-stream"
        ),
        pytest.param(
            SettingsFrame(0, settings={SettingsFrame.ENABLE_PUSH: 2}).serialize(),
            PROTOCOL_ERROR,
            id="bad-setting",
        ),
        pytest.param(
            b"\x00\x40\x01\x00\x00\x00\x00\x00\x01" + b"x" * 0x4001,
            FRAME_SIZE_ERROR,
            id="frame-too-big",
        ),
    ],
)
def test_malformed_client_bytes_end_the_connection(raw: bytes, code: int) -> None:
    net = Net()
    sid = net.client.request("/hold", headers=[ALICE])
    net.settle()
    net.client.raw(raw)
    net.settle()
    assert net.client.goaway is not None and net.client.goaway.error_code == code
    assert net.closed == CloseClient(graceful=True)
    (local,) = net.of("local")
    assert local.closed == CloseUpstream(local.conn_id, graceful=True)
    assert local.goaway is not None and local.goaway.error_code == NO_ERROR
    assert not net.client.responses[sid].ended


# -- the GOAWAY splitter ------------------------------------------------------------------------


@given(st.data())
def test_frame_splitter_takes_out_goaway_frames(data: st.DataObject) -> None:
    frames: list[bytes | _GoAway] = []
    for i in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans()):
            frames.append(_GoAway(last_stream_id=2 * i + 1, error_code=i))
        else:
            payload = data.draw(st.binary(max_size=40))
            frames.append(DataFrame(2 * i + 1, payload).serialize())
    wire = PREFACE + b"".join(
        GoAwayFrame(0, last_stream_id=f.last_stream_id, error_code=f.error_code).serialize()
        if isinstance(f, _GoAway)
        else f
        for f in frames
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    splitter = _FrameSplitter(skip=len(PREFACE))
    out: list[bytes | _GoAway] = []
    for start, end in itertools.pairwise([0, *cuts, len(wire)]):
        out.extend(splitter.feed(wire[start:end]))
    passed = b"".join(x for x in out if isinstance(x, bytes))
    assert passed == PREFACE + b"".join(f for f in frames if isinstance(f, bytes))
    assert [x for x in out if isinstance(x, _GoAway)] == [
        f for f in frames if isinstance(f, _GoAway)
    ]
