"""Resuming a session over a new transport: whatever the cut, every request, answer and
stream byte arrives exactly once and in order."""

import contextlib
import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.protocol.test_connection import SECRET
from tether.protocol import (
    BufferRoom,
    Connection,
    DataReceived,
    HandshakeError,
    Handshaken,
    HandshakeRejected,
    LocalProtocolError,
    RequestReceived,
    ResponseReceived,
    Resumed,
    ResumeRequested,
    Role,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
)
from tether.protocol.connection import ACK_EVERY
from tether.protocol.events import Event

TOKEN = b"t" * 16


def resumable_pair(window: int = 1 << 16, limit: int = 1 << 26) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, secret=SECRET, version="1", window=window, info={"grace": 120})
    agent = Connection(
        Role.AGENT,
        secret=SECRET,
        version="1",
        window=window,
        resume_token=TOKEN,
        retransmit_limit=limit,
    )
    client.initiate()
    (hello,) = agent.receive_data(client.data_to_send())
    assert isinstance(hello, Handshaken) and hello.info == {"grace": 120}
    (welcome,) = client.receive_data(agent.data_to_send())
    assert isinstance(welcome, Handshaken)
    assert client.resumable and client.resume_token == TOKEN
    return client, agent


def resume(client: Connection, agent: Connection) -> list[Event]:
    """Both ends lost the transport; the client resumes through a fresh agent connection
    as the agent's shell does. Returns the client's events from the RESUMED on."""
    client.transport_lost()
    agent.transport_lost()
    client.resume()
    fresh = Connection(Role.AGENT, secret=SECRET, version="1")
    (asked,) = fresh.receive_data(client.data_to_send())
    assert isinstance(asked, ResumeRequested) and asked.token == TOKEN
    agent.accept_resume(asked.received)
    events = client.receive_data(agent.data_to_send())
    assert isinstance(events[0], Resumed)
    return events[1:]


def test_a_cut_loses_nothing_sent_before_or_while_down() -> None:
    client, agent = resumable_pair()
    sid = client.open_stream("tcp", {})
    agent.receive_data(client.data_to_send())
    agent.accept_stream(sid)
    client.receive_data(agent.data_to_send())
    client.send_data(sid, b"lost in the cut")
    client.data_to_send()  # written to a transport that died
    agent.send_data(sid, b"also lost")
    agent.data_to_send()
    client.transport_lost()
    client.send_data(sid, b", and sent while down")
    rid = client.send_request("env", {})
    assert client.data_to_send() == b""  # nothing leaves without a transport
    events = resume(client, agent)
    assert events == [DataReceived(sid, b"also lost")]
    got = agent.receive_data(client.data_to_send())
    assert got == [
        DataReceived(sid, b"lost in the cut"),
        DataReceived(sid, b", and sent while down"),
        RequestReceived(rid, "env", {}),
    ]


def test_a_partial_frame_at_the_cut_comes_again_whole() -> None:
    client, agent = resumable_pair()
    rid = client.send_request("env", {"include": ["*"]})
    wire = client.data_to_send()
    assert agent.receive_data(wire[:5]) == []
    assert resume(client, agent) == []
    assert agent.receive_data(client.data_to_send()) == [
        RequestReceived(rid, "env", {"include": ["*"]})
    ]


def test_acknowledged_bytes_are_let_go() -> None:
    client, agent = resumable_pair(window=1 << 20)
    sid = client.open_stream("tcp", {})
    agent.receive_data(client.data_to_send())
    agent.accept_stream(sid)
    client.receive_data(agent.data_to_send())
    client.send_data(sid, b"x" * 300 * 1024)
    received = agent.receive_data(client.data_to_send())
    assert agent.data_to_send() == b""  # nothing to send: no ACK on its own yet
    assert all(isinstance(event, DataReceived) for event in received)
    agent.acknowledge(sid, 300 * 1024)  # a WINDOW goes out, and the ACK rides along
    client.receive_data(agent.data_to_send())
    assert client.unacknowledged == 0


def test_an_ack_goes_alone_after_much_unanswered_data() -> None:
    client, agent = resumable_pair(window=4 * ACK_EVERY)
    sid = client.open_stream("tcp", {})
    agent.receive_data(client.data_to_send())
    agent.accept_stream(sid)
    client.receive_data(agent.data_to_send())
    client.send_data(sid, b"x" * ACK_EVERY)
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    assert client.unacknowledged == 0


def test_a_ping_acknowledges_a_quiet_session() -> None:
    client, agent = resumable_pair()
    client.send_request("env", {})
    agent.receive_data(client.data_to_send())
    assert client.unacknowledged > 0
    client.ping(b"1")
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    assert client.unacknowledged == 0


def test_the_retransmit_limit_is_back_pressure_not_loss() -> None:
    # The agent's limit: 1000 bytes may wait for acknowledgement.
    agent = Connection(
        Role.AGENT, secret=SECRET, version="1", resume_token=TOKEN, retransmit_limit=1000
    )
    client = Connection(Role.CLIENT, secret=SECRET, version="1")
    client.initiate()
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    sid = client.open_stream("tcp", {})
    agent.receive_data(client.data_to_send())
    agent.accept_stream(sid)
    client.receive_data(agent.data_to_send())
    assert agent.send_credit(sid) == 1000 - agent.unacknowledged
    agent.send_data(sid, b"y" * agent.send_credit(sid))
    assert agent.send_credit(sid) == 0
    wire = agent.data_to_send()
    client.receive_data(wire)
    agent.ping(b"p")  # the pinged end acknowledges what it received
    client.receive_data(agent.data_to_send())
    events = agent.receive_data(client.data_to_send())
    assert BufferRoom() in events
    assert agent.send_credit(sid) > 0


def test_an_impossible_count_is_refused() -> None:
    _, agent = resumable_pair()
    agent.transport_lost()
    with pytest.raises(LocalProtocolError):
        agent.accept_resume(10**9)


def test_a_resume_with_the_wrong_secret_is_rejected() -> None:
    client, _ = resumable_pair()
    client.transport_lost()
    client.resume()
    fresh = Connection(Role.AGENT, secret=b"other" * 7, version="1")
    with pytest.raises(HandshakeError):
        fresh.receive_data(client.data_to_send())
    (rejected,) = client.receive_data(fresh.data_to_send())
    assert isinstance(rejected, HandshakeRejected) and rejected.code == "secret"
    assert client.closed


def test_an_unknown_session_is_rejected_by_the_shell() -> None:
    client, _ = resumable_pair()
    client.transport_lost()
    client.resume()
    fresh = Connection(Role.AGENT, secret=SECRET, version="1")
    (asked,) = fresh.receive_data(client.data_to_send())
    assert isinstance(asked, ResumeRequested)
    fresh.reject("resume", "no such session (it expired)")
    (rejected,) = client.receive_data(fresh.data_to_send())
    assert rejected == HandshakeRejected("resume", "no such session (it expired)")


def test_a_connection_without_a_token_cannot_resume() -> None:
    client = Connection(Role.CLIENT, secret=SECRET, version="1")
    agent = Connection(Role.AGENT, secret=SECRET, version="1")
    client.initiate()
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    assert not client.resumable
    client.transport_lost()
    with pytest.raises(LocalProtocolError):
        client.resume()


# -- the property: any cuts, any resumes ----------------------------------------------------


@dataclass
class Side:
    conn: Connection
    sent: dict[int, bytearray] = field(default_factory=dict)
    got: dict[int, bytearray] = field(default_factory=dict)
    ended: set[int] = field(default_factory=set)
    requests: list[int] = field(default_factory=list)
    answered: list[int] = field(default_factory=list)
    wire: bytes = b""  # handed out, not yet delivered


def _react(side: Side, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, StreamOpened):
            side.conn.accept_stream(event.stream_id)
        elif isinstance(event, DataReceived):
            side.got.setdefault(event.stream_id, bytearray()).extend(event.data)
            side.conn.acknowledge(event.stream_id, len(event.data))
        elif isinstance(event, StreamEnded):
            assert event.stream_id not in side.ended, "EOF twice"
            side.ended.add(event.stream_id)
        elif isinstance(event, RequestReceived):
            side.conn.send_response(event.request_id, event.args["n"])
        elif isinstance(event, ResponseReceived):
            side.answered.append(event.result)
        elif isinstance(event, StreamAccepted):
            pass


@given(
    script=st.lists(
        st.tuples(
            st.sampled_from(["open", "data", "request", "deliver", "cut", "end"]),
            st.integers(0, 1),
            st.binary(min_size=1, max_size=3000),
            st.floats(0, 1),
        ),
        max_size=60,
    ),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
def test_any_cuts_deliver_every_byte_exactly_once(
    script: list[tuple[str, int, bytes, float]], seed: int
) -> None:
    rng = random.Random(seed)
    client, agent = resumable_pair(window=8192)
    sides = (Side(client), Side(agent))
    streams: list[int] = []
    counter = 0

    def deliver(src: int, fraction: float) -> None:
        """Move a prefix of what `src` handed out to the other side (the rest is in flight
        when a cut comes)."""
        a, b = sides[src], sides[1 - src]
        a.wire += a.conn.data_to_send()
        take = int(len(a.wire) * fraction) if fraction < 1 else len(a.wire)
        chunk, a.wire = a.wire[:take], a.wire[take:]
        while chunk:
            step = rng.randint(1, max(1, len(chunk)))
            _react(b, b.conn.receive_data(chunk[:step]))
            chunk = chunk[step:]

    for op, who, data, fraction in script:
        side = sides[who]
        conn = side.conn
        if op == "open" and who == 0:
            streams.append(conn.open_stream("tcp", {}))
        elif op == "data" and streams:
            sid = streams[int(fraction * len(streams)) % len(streams)]
            if sid in side.conn.stream_ids() and conn.send_credit(sid) > 0:
                piece = data[: conn.send_credit(sid)]
                conn.send_data(sid, piece)
                side.sent.setdefault(sid, bytearray()).extend(piece)
        elif op == "end" and streams:
            sid = streams[int(fraction * len(streams)) % len(streams)]
            if sid in side.conn.stream_ids() and conn.send_credit(sid) >= 0:
                with contextlib.suppress(LocalProtocolError):
                    conn.end_stream(sid)
        elif op == "request":
            counter += 1
            conn.send_request("echo", {"n": counter})
            side.requests.append(counter)
        elif op == "deliver":
            deliver(who, fraction)
        elif op == "cut":
            for s in sides:
                s.wire = b""  # whatever was in flight is gone with the transport
            _react(client_side := sides[0], resume(client_side.conn, sides[1].conn))

    # Settle: deliver everything both ways until quiet.
    for _ in range(200):
        if not any(s.conn.wants_write or s.wire for s in sides):
            break
        deliver(0, 1.0)
        deliver(1, 1.0)
    for src in (0, 1):
        dst = sides[1 - src]
        for sid, sent in sides[src].sent.items():
            assert bytes(dst.got.get(sid, b"")) == bytes(sent)
        assert sorted(sides[src].answered) == sorted(sides[src].requests)
