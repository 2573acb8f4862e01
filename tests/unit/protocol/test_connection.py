"""The tunnel protocol: handshake, requests, streams and flow control, over plain bytes."""

import hashlib

import pytest

from tether.protocol import (
    Connection,
    CreditError,
    DataReceived,
    FlowControlError,
    HandshakeError,
    Handshaken,
    HandshakeRejected,
    LocalProtocolError,
    PingReceived,
    PongReceived,
    ProtocolError,
    RemoteError,
    RequestReceived,
    ResponseReceived,
    Role,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from tether.protocol.errors import StreamStateError
from tether.protocol.events import Event
from tether.protocol.frames import HEADER, MAX_PAYLOAD, PROTOCOL_VERSION, FrameType, encode, pack

SECRET = b"s" * 32


def shuttle(src: Connection, dst: Connection) -> list[Event]:
    return dst.receive_data(src.data_to_send())


def pair(window: int = 1024) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, secret=SECRET, version="0.1.0", window=window)
    agent = Connection(Role.AGENT, secret=SECRET, version="0.1.0", window=window)
    client.initiate()
    assert shuttle(client, agent) == [Handshaken("0.1.0", PROTOCOL_VERSION, {})]
    (welcome,) = shuttle(agent, client)
    assert isinstance(welcome, Handshaken)
    assert client.handshaken and agent.handshaken
    return client, agent


def open_pair(client: Connection, agent: Connection) -> int:
    sid = client.open_stream("tcp", {"host": "backend", "port": 80})
    (opened,) = shuttle(client, agent)
    assert opened == StreamOpened(sid, "tcp", {"host": "backend", "port": 80})
    agent.accept_stream(sid, {"peer": "198.19.0.5:80"})
    (accepted,) = shuttle(agent, client)
    assert accepted == StreamAccepted(sid, {"peer": "198.19.0.5:80"})
    return sid


def test_wrong_secret_is_rejected_and_reported() -> None:
    client = Connection(Role.CLIENT, secret=b"wrong", version="0.1.0")
    agent = Connection(Role.AGENT, secret=SECRET, version="0.1.0")
    client.initiate()
    with pytest.raises(HandshakeError):
        shuttle(client, agent)
    (event,) = shuttle(agent, client)
    assert event == HandshakeRejected("secret", "wrong session secret")
    assert client.closed and agent.closed


@pytest.mark.parametrize(("given", "accepted"), [(SECRET, True), (b"wrong", False), (b"", False)])
def test_an_agent_holding_only_the_digest_checks_the_secret(given: bytes, accepted: bool) -> None:
    # An ephemeral agent: its environment (so the digest) is in the pod's spec.
    digest = hashlib.sha256(SECRET).digest()
    agent = Connection(Role.AGENT, secret=b"", secret_digest=digest, version="0.1.0")
    client = Connection(Role.CLIENT, secret=given, version="0.1.0")
    client.initiate()
    if accepted:
        assert shuttle(client, agent) == [Handshaken("0.1.0", PROTOCOL_VERSION, {})]
    else:
        with pytest.raises(HandshakeError):
            shuttle(client, agent)
        assert shuttle(agent, client) == [HandshakeRejected("secret", "wrong session secret")]


def test_version_mismatch_names_both_versions() -> None:
    agent = Connection(Role.AGENT, secret=SECRET, version="0.2.0")
    hello = pack({"v": 99, "secret": SECRET, "version": "9.9.9"})
    with pytest.raises(HandshakeError, match=r"tether 0\.2\.0.*tether 9\.9\.9.*agent\.image"):
        agent.receive_data(encode(FrameType.HELLO, 0, hello))


@pytest.mark.parametrize("ftype", [FrameType.REQUEST, FrameType.DATA, FrameType.WELCOME])
def test_nothing_but_hello_before_the_handshake(ftype: FrameType) -> None:
    agent = Connection(Role.AGENT, secret=SECRET, version="0.1.0")
    with pytest.raises(ProtocolError):
        agent.receive_data(encode(ftype, 1, pack({"op": "env"})))


def test_request_response_and_error() -> None:
    client, agent = pair()
    rid = client.send_request("env", {"include": ["*"]})
    (req,) = shuttle(client, agent)
    assert req == RequestReceived(rid, "env", {"include": ["*"]})
    agent.send_response(rid, {"env": {"A": "1"}})
    assert shuttle(agent, client) == [ResponseReceived(rid, {"env": {"A": "1"}}, None)]

    rid2 = client.send_request("fs.stat", {"path": "/nope"})
    shuttle(client, agent)
    agent.send_error(rid2, RemoteError("ENOENT", "no such file", 2))
    (resp,) = shuttle(agent, client)
    assert resp == ResponseReceived(rid2, None, RemoteError("ENOENT", "no such file", 2))
    with pytest.raises(LocalProtocolError):
        agent.send_response(rid2, None)  # answered already: our bug, not the peer's


def test_response_to_unknown_request_is_a_protocol_error() -> None:
    client, _ = pair()
    with pytest.raises(ProtocolError):
        client.receive_data(encode(FrameType.RESPONSE, 77, pack({"result": 1})))


def test_stream_both_directions_half_close_and_forget() -> None:
    client, agent = pair()
    sid = open_pair(client, agent)
    client.send_data(sid, b"GET / HTTP/1.1\r\n\r\n")
    client.end_stream(sid)
    assert shuttle(client, agent) == [
        DataReceived(sid, b"GET / HTTP/1.1\r\n\r\n"),
        StreamEnded(sid),
    ]
    with pytest.raises(StreamStateError):
        client.send_data(sid, b"more")
    agent.send_data(sid, b"HTTP/1.1 200 OK\r\n\r\n")
    agent.end_stream(sid)
    assert shuttle(agent, client) == [
        DataReceived(sid, b"HTTP/1.1 200 OK\r\n\r\n"),
        StreamEnded(sid),
    ]
    assert client.stream_ids() == [] and agent.stream_ids() == []


def test_refused_stream_is_reset_with_errno() -> None:
    client, agent = pair()
    sid = client.open_stream("tcp", {"host": "10.0.0.1", "port": 1})
    shuttle(client, agent)
    agent.reset_stream(sid, RemoteError("ECONNREFUSED", "connection refused", 111))
    assert shuttle(agent, client) == [
        StreamReset(sid, RemoteError("ECONNREFUSED", "connection refused", 111))
    ]
    assert client.stream_ids() == []


def test_late_frames_after_reset_are_dropped_but_unknown_streams_are_errors() -> None:
    client, agent = pair()
    sid = open_pair(client, agent)
    agent.send_data(sid, b"in flight")
    client.reset_stream(sid, RemoteError("ECONNRESET", "bye"))
    assert shuttle(agent, client) == []  # the in-flight data is for a stream we reset
    with pytest.raises(ProtocolError):
        client.receive_data(encode(FrameType.DATA, 1001, b"x"))


def test_send_beyond_credit_raises_and_window_comes_back_in_batches() -> None:
    client, agent = pair(window=1000)
    sid = open_pair(client, agent)
    assert client.send_credit(sid) == 1000
    client.send_data(sid, b"a" * 1000)
    with pytest.raises(CreditError):
        client.send_data(sid, b"b")
    (data,) = shuttle(client, agent)
    assert isinstance(data, DataReceived)
    agent.acknowledge(sid, 100)
    assert agent.data_to_send() == b""  # below a quarter window: batched
    agent.acknowledge(sid, 200)
    assert shuttle(agent, client) == [WindowUpdated(sid, 300)]
    assert client.send_credit(sid) == 300


def test_peer_exceeding_our_window_is_a_flow_control_error() -> None:
    client, agent = pair(window=10)
    sid = open_pair(client, agent)
    with pytest.raises(FlowControlError):
        agent.receive_data(encode(FrameType.DATA, sid, b"x" * 11))


def test_a_stalled_stream_does_not_stall_others() -> None:
    client, agent = pair(window=100)
    slow = open_pair(client, agent)
    fast = open_pair(client, agent)
    client.send_data(slow, b"s" * 100)  # the slow reader never acknowledges
    shuttle(client, agent)
    for _ in range(50):
        client.send_data(fast, b"f" * 100)
        (event,) = shuttle(client, agent)
        assert event == DataReceived(fast, b"f" * 100)
        agent.acknowledge(fast, 100)
        shuttle(agent, client)
    assert client.send_credit(slow) == 0


def test_ping_is_answered_automatically() -> None:
    client, agent = pair()
    client.ping(b"12345678")
    assert shuttle(client, agent) == [PingReceived(b"12345678")]
    assert shuttle(agent, client) == [PongReceived(b"12345678")]


def test_agent_opens_even_streams_and_client_odd() -> None:
    client, agent = pair()
    a = client.open_stream("tcp", {})
    b = agent.open_stream("incoming", {"port": 8080})
    assert a % 2 == 1 and b % 2 == 0
    with pytest.raises(ProtocolError):
        agent.receive_data(encode(FrameType.OPEN, 2, pack({"kind": "x", "window": 5})))


def test_large_data_is_split_into_bounded_frames() -> None:
    client, agent = pair(window=4 * 1024 * 1024)
    sid = open_pair(client, agent)
    blob = bytes(range(256)) * 4096  # 1 MiB
    client.send_data(sid, blob)
    events = shuttle(client, agent)
    assert len(events) == 4
    assert b"".join(e.data for e in events if isinstance(e, DataReceived)) == blob


def test_a_protocol_error_closes_the_connection_for_good() -> None:
    # Found by fuzz/protocol.py: after a refused frame the connection still took frames.
    _client, agent = pair()
    with pytest.raises(ProtocolError):
        agent.receive_data(encode(FrameType.DATA, 1001, b"x"))
    assert agent.closed
    assert agent.receive_data(encode(FrameType.PING, 0, b"still there?")) == []
    assert agent.data_to_send() == b""


def test_a_bad_header_releases_what_the_decoder_held() -> None:
    # Found checking fuzz/protocol.py's bound after errors (too big for its inputs): a bad
    # header after a buffered partial frame kept every byte of that read.
    _client, agent = pair()
    ping = encode(FrameType.PING, 0, b"p")
    agent.receive_data(ping[:3])
    bad = b"\xff" * HEADER.size
    with pytest.raises(ProtocolError):
        agent.receive_data(ping[3:] + ping * 30000 + bad)
    assert agent.buffered < MAX_PAYLOAD + HEADER.size


def test_a_rejection_is_reported_even_with_garbage_after_it() -> None:
    # Found by fuzz/protocol.py: REJECT followed by bad bytes in the same read raised "frame
    # length out of range" (the agent's reason lost), though the REJECT alone, or the same
    # bytes in two reads, report the rejection.
    client = Connection(Role.CLIENT, secret=SECRET, version="0.1.0")
    client.initiate()
    reject = encode(FrameType.REJECT, 0, pack({"code": "secret", "reason": "wrong secret"}))
    assert client.receive_data(reject + b"\xff" * 9) == [
        HandshakeRejected("secret", "wrong secret")
    ]
    assert client.closed


def test_frames_before_a_bad_header_take_effect_before_the_error() -> None:
    # The same read, cut anywhere, must end the same way: the PING before the bad header is
    # answered, then the error is raised.
    _client, agent = pair()
    with pytest.raises(ProtocolError, match="out of range"):
        agent.receive_data(encode(FrameType.PING, 0, b"p") + b"\xff" * 9)
    assert agent.data_to_send() == encode(FrameType.PONG, 0, b"p")
    assert agent.closed
