"""Property and fuzz tests: any split of the byte stream gives the same events, and any bytes
give events or a clean ProtocolError, with bounded buffering."""

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.protocol.test_connection import SECRET, open_pair, pair
from tether.protocol import Connection, DataReceived, ProtocolError, Role, StreamEnded
from tether.protocol.frames import HEADER, MAX_PAYLOAD, FrameType, encode


@given(
    chunks=st.lists(st.lists(st.binary(max_size=300), max_size=8), min_size=1, max_size=5),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_interleaved_streams_reassemble_under_any_split(
    chunks: list[list[bytes]], seed: int
) -> None:
    client, agent = pair(window=64 * 1024)
    sids = [open_pair(client, agent) for _ in chunks]
    for sid, parts in zip(sids, chunks, strict=True):
        for part in parts:
            if part:
                client.send_data(sid, part)
        client.end_stream(sid)
    wire = client.data_to_send()
    rng = random.Random(seed)
    got: dict[int, bytes] = {sid: b"" for sid in sids}
    ended: set[int] = set()
    pos = 0
    while pos < len(wire):
        step = rng.randint(1, 64)
        for event in agent.receive_data(wire[pos : pos + step]):
            if isinstance(event, DataReceived):
                got[event.stream_id] += event.data
            elif isinstance(event, StreamEnded):
                ended.add(event.stream_id)
        pos += step
    assert got == {sid: b"".join(parts) for sid, parts in zip(sids, chunks, strict=True)}
    assert ended == set(sids)


def _feed_safely(conn: Connection, data: bytes) -> None:
    try:
        conn.receive_data(data)
    except ProtocolError:
        return
    assert conn.buffered <= MAX_PAYLOAD + HEADER.size


@given(st.binary(max_size=2048))
@settings(max_examples=400)
def test_fuzz_raw_bytes_before_handshake(data: bytes) -> None:
    _feed_safely(Connection(Role.AGENT, secret=SECRET, version="0.1.0"), data)


@given(st.binary(max_size=2048))
@settings(max_examples=400)
def test_fuzz_raw_bytes_after_handshake(data: bytes) -> None:
    client, agent = pair()
    open_pair(client, agent)
    _feed_safely(agent, data)
    _feed_safely(client, data)


frames = st.builds(
    lambda t, i, p: encode(t, i, p),
    st.sampled_from(list(FrameType)),
    st.integers(0, 8),
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"\x80", b"\x81\xa4kind\xa3tcp", b"\x82\xa2op\x01\xa4args\xc0", b"\xc1"]),
    ),
)


@given(st.lists(frames, max_size=20))
@settings(max_examples=400)
def test_fuzz_well_framed_garbage(seq: list[bytes]) -> None:
    # Valid headers with arbitrary types, ids and payloads reach every state-machine branch.
    client, agent = pair()
    open_pair(client, agent)
    for conn in (agent, client):
        try:
            for frame in seq:
                conn.receive_data(frame)
        except ProtocolError:
            continue


def test_oversized_length_is_refused_without_buffering() -> None:
    agent = Connection(Role.AGENT, secret=SECRET, version="0.1.0")
    bad = HEADER.pack(MAX_PAYLOAD + 100, FrameType.DATA, 1)
    try:
        agent.receive_data(bad)
    except ProtocolError:
        pass
    else:
        raise AssertionError("an oversized frame length must be refused")
