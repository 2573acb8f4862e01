"""Fuzz the tunnel protocol (tether.protocol): the frame decoder and the connection state
machine, fed raw bytes, valid sessions, and valid sessions with their bytes corrupted.

Invariants:
- only ProtocolError (or a subclass) escapes `receive_data`;
- the decoder never holds more than one partial frame (< MAX_PAYLOAD + HEADER.size bytes);
- how the bytes are cut into reads never changes the outcome: the same events, the same
  bytes to send, the same error or none;
- after a ProtocolError the connection is closed and every later `receive_data` is a no-op
  (returns no event; valid frames included);
- between two well-behaved peers nothing raises, each stream's DATA events join to exactly
  the bytes sent on it (a prefix if it was reset), and EOF arrives iff the stream was ended.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, field
from typing import Any

import atheris

from fuzz.common import InvariantViolation, check, provider, run, split, text

with atheris.instrument_imports(include=["tether"]):
    from tether.protocol import (
        Connection,
        DataReceived,
        Event,
        ProtocolError,
        RemoteError,
        RequestReceived,
        Role,
        StreamEnded,
        StreamOpened,
        StreamReset,
    )
    from tether.protocol.errors import LocalProtocolError
    from tether.protocol.frames import HEADER, MAX_PAYLOAD, FrameType, encode

SECRET = b"s" * 32
VERSION = "0.1.0"
# One partial frame at most: a header and a payload, one byte short of complete.
BUFFER_LIMIT = MAX_PAYLOAD + HEADER.size
PING = encode(FrameType.PING, 0, b"alive?")
# How the first byte picks a mode, and the starting state for raw bytes.
MODES = ("raw", "session", "corrupt")
STATES = ("agent-idle", "client-handshaking", "agent-open", "client-open")


# -- feeding ------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a connection made of a byte stream."""

    events: list[Event] = field(default_factory=list)
    sent: bytes = b""
    error: ProtocolError | None = None


def feed(conn: Connection, pieces: list[bytes]) -> Outcome:
    """Feed `pieces` one `receive_data` each, checking the per-call invariants."""
    out = Outcome()
    for index, piece in enumerate(pieces):
        try:
            events = conn.receive_data(piece)
        except ProtocolError as exc:
            out.error = exc
            out.sent += conn.data_to_send()
            check_dead(conn, [*pieces[index + 1 :], PING])
            return out
        check(
            conn.buffered < BUFFER_LIMIT,
            f"decoder holds {conn.buffered} bytes, more than one partial frame",
        )
        out.events.extend(events)
        out.sent += conn.data_to_send()
        if conn.closed:
            check_dead(conn, [*pieces[index + 1 :], PING])
            return out
    return out


def check_dead(conn: Connection, later: list[bytes]) -> None:
    """A rejected or closed connection takes nothing more: no event, no error, no output."""
    check(conn.closed, "a ProtocolError left the connection open")
    check(conn.buffered < BUFFER_LIMIT, f"a dead connection holds {conn.buffered} bytes")
    for piece in later:
        try:
            events = conn.receive_data(piece)
        except ProtocolError as exc:
            raise InvariantViolation(f"receive_data raised {exc!r} after it died") from exc
        check(events == [], f"events {events!r} after the connection died")
    check(conn.data_to_send() == b"", "a dead connection queued bytes")


def same_outcome(whole: Outcome, pieces: Outcome) -> None:
    check(
        (whole.error is None) == (pieces.error is None),
        f"fed whole: {whole.error!r}; fed in pieces: {pieces.error!r}",
    )
    if whole.error is None:
        check(whole.events == pieces.events, "fragmentation changed the events")
        check(whole.sent == pieces.sent, "fragmentation changed the bytes sent back")


# -- connections in a given state -----------------------------------------------------------


def pair(window: int) -> tuple[Connection, Connection]:
    client = Connection(Role.CLIENT, secret=SECRET, version=VERSION, window=window)
    agent = Connection(Role.AGENT, secret=SECRET, version=VERSION, window=window)
    client.initiate()
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    return client, agent


def connection_in(state: str) -> Connection:
    """A connection in `state`, with (once open) streams in several states and requests
    pending both ways, so that raw frames meet more than an empty table."""
    if state == "agent-idle":
        return Connection(Role.AGENT, secret=SECRET, version=VERSION)
    if state == "client-handshaking":
        conn = Connection(Role.CLIENT, secret=SECRET, version=VERSION)
        conn.initiate()
        conn.data_to_send()
        return conn
    client, agent = pair(window=4096)
    accepted = client.open_stream("tcp", {"port": 80})  # 1: open both ways
    client.open_stream("tcp", {"port": 81})  # 3: not accepted yet
    ended = client.open_stream("tcp", {"port": 82})  # 5: the client ended its side
    client.send_request("stat", {"path": "/"})  # request 1, pending at the agent
    agent.receive_data(client.data_to_send())
    agent.accept_stream(accepted)
    agent.accept_stream(ended)
    theirs = agent.open_stream("udp", {})  # 2: the agent's, accepted
    agent.send_request("ping", {})
    client.receive_data(agent.data_to_send())
    client.accept_stream(theirs)
    client.end_stream(ended)
    agent.receive_data(client.data_to_send())
    client.receive_data(agent.data_to_send())
    return agent if state == "agent-open" else client


def fuzz_raw(fdp: Any) -> None:
    state = STATES[fdp.ConsumeIntInRange(0, len(STATES) - 1)]
    data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    pieces = split(fdp, data)
    whole = feed(connection_in(state), [data])
    same_outcome(whole, feed(connection_in(state), pieces))
    # One byte at a time is the most extreme cut of all.
    if len(data) <= 256:
        same_outcome(whole, feed(connection_in(state), [data[i : i + 1] for i in range(len(data))]))


# -- valid sessions --------------------------------------------------------------------------

Op = tuple[Any, ...]


def read_ops(fdp: Any) -> list[Op]:
    ops: list[Op] = []
    for _ in range(fdp.ConsumeIntInRange(0, 40)):
        if fdp.remaining_bytes() == 0:
            break
        side = fdp.ConsumeIntInRange(0, 1)
        kind = fdp.ConsumeIntInRange(0, 7)
        index = fdp.ConsumeIntInRange(0, 7)
        if kind == 0:
            ops.append(("open", side))
        elif kind in (1, 2):
            ops.append(("data", side, index, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 2048))))
        elif kind == 3:
            ops.append(("end", side, index))
        elif kind == 4:
            ops.append(("reset", side, index))
        elif kind == 5:
            ops.append(("request", side, text(fdp, 16)))
        elif kind == 6:
            ops.append(("ping", side, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 80))))
        else:
            ops.append(("close", side))
    return ops


@dataclass(frozen=True)
class Damage:
    """How one delivery of a session is damaged: which one, where, and how."""

    delivery: int
    how: int
    at: int
    value: int
    inserted: bytes

    def apply(self, data: bytes) -> bytes:
        if not data:
            return data
        at = self.at % len(data)
        if self.how == 0:
            return data[:at] + bytes([data[at] ^ self.value]) + data[at + 1 :]
        if self.how == 1:
            return data[:at] + data[at + 1 + self.value % 16 :]
        if self.how == 2:
            return data[:at] + self.inserted + data[at:]
        return data[:at]


class Session:
    """Two well-behaved peers: each applies `ops`, every byte reaches the other side (cut
    into pieces when `rng` is given), and each reacts to its events as an application
    would (accepts streams, answers requests, acknowledges data). With `damage`, one
    delivery is damaged: the receiver may then fail, but only with ProtocolError, and it
    must stay dead after."""

    def __init__(
        self, window: int, rng: random.Random | None, damage: Damage | None = None
    ) -> None:
        self.conns = pair(window)
        self.rng = rng
        self.damage = damage
        self.deliveries = 0
        self.failed = False
        self.log: list[tuple[int, Event]] = []
        self.streams: list[list[int]] = [[], []]  # ids each side opened or accepted, in order
        # Keyed by (the sending side, stream id): each direction of a stream on its own.
        self.sent: dict[tuple[int, int], bytearray] = {}
        self.received: dict[tuple[int, int], bytearray] = {}
        self.ended: set[tuple[int, int]] = set()  # end_stream called
        self.eof: set[tuple[int, int]] = set()  # StreamEnded seen
        self.reset: set[int] = set()  # stream ids reset by either side

    def apply(self, op: Op) -> None:
        side = op[1]
        conn = self.conns[side]
        if conn.closed or self.failed:
            return
        kind = op[0]
        try:
            if kind == "open":
                self.streams[side].append(conn.open_stream("tcp", {"n": len(self.sent)}))
            elif kind == "data":
                sid = self._pick(side, op[2])
                if sid is not None and conn.send_credit(sid):
                    data = op[3][: conn.send_credit(sid)]
                    conn.send_data(sid, data)
                    self.sent.setdefault((side, sid), bytearray()).extend(data)
            elif kind == "end":
                sid = self._pick(side, op[2])
                if sid is not None:
                    conn.end_stream(sid)
                    self.ended.add((side, sid))
            elif kind == "reset":
                sid = self._pick(side, op[2])
                if sid is not None:
                    conn.reset_stream(sid, RemoteError("ECONNRESET", "reset by the fuzzer", 104))
                    self.reset.add(sid)
            elif kind == "request":
                conn.send_request(op[2], {"n": 1})
            elif kind == "ping":
                conn.ping(op[2])
            else:
                conn.close("the fuzzer is done")
        except LocalProtocolError:
            return  # the op does not fit the stream's state: a caller error, refused
        self.settle()

    def _pick(self, side: int, index: int) -> int | None:
        ids = self.streams[side]
        return ids[index % len(ids)] if ids else None

    def settle(self) -> None:
        """Shuttle bytes both ways until neither side has anything to send."""
        while not self.failed and any(conn.wants_write for conn in self.conns):
            for side in (0, 1):
                self.deliver(1 - side, self.conns[side].data_to_send())
                if self.failed:
                    return

    def deliver(self, side: int, data: bytes) -> None:
        conn = self.conns[side]
        damaged = self.damage is not None and self.damage.delivery == self.deliveries
        if data:
            self.deliveries += 1
        if damaged and self.damage is not None:
            data = self.damage.apply(data)
        pieces = [data]
        if self.rng is not None and len(data) > 1:
            cuts = sorted(self.rng.sample(range(1, len(data)), min(8, len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for index, piece in enumerate(pieces):
            try:
                events = conn.receive_data(piece)
            except ProtocolError as exc:
                if self.damage is None or self.damage.delivery >= self.deliveries:
                    raise InvariantViolation(f"a valid peer's bytes were refused: {exc!r}") from exc
                conn.data_to_send()
                check_dead(conn, [*pieces[index + 1 :], PING])
                self.failed = True
                return
            check(conn.buffered < BUFFER_LIMIT, f"decoder holds {conn.buffered} bytes")
            for event in events:
                self.log.append((side, event))
                self.react(side, event)

    def react(self, side: int, event: Event) -> None:
        conn = self.conns[side]
        if conn.closed:
            return
        try:
            self._react(conn, side, event)
        except (ProtocolError, LocalProtocolError):
            # Only a damaged session may confuse an application into a refused call.
            if self.damage is None:
                raise

    def _react(self, conn: Connection, side: int, event: Event) -> None:
        if isinstance(event, StreamOpened):
            if event.stream_id % 3 == 0:
                conn.reset_stream(event.stream_id, RemoteError("ECONNREFUSED", "refused"))
                self.reset.add(event.stream_id)
            else:
                conn.accept_stream(event.stream_id, {"peer": "fuzz"})
                self.streams[side].append(event.stream_id)
        elif isinstance(event, DataReceived):
            key = (1 - side, event.stream_id)
            self.received.setdefault(key, bytearray()).extend(event.data)
            conn.acknowledge(event.stream_id, len(event.data))
        elif isinstance(event, StreamEnded):
            key = (1 - side, event.stream_id)
            check(key not in self.eof, f"two EOFs on stream {event.stream_id}")
            self.eof.add(key)
        elif isinstance(event, StreamReset):
            self.reset.add(event.stream_id)
        elif isinstance(event, RequestReceived):
            conn.send_response(event.request_id, {"op": event.op})

    def check_streams(self) -> None:
        closed = any(conn.closed for conn in self.conns)
        for key in set(self.sent) | set(self.received):
            sid = key[1]
            sent = bytes(self.sent.get(key, b""))
            got = bytes(self.received.get(key, b""))
            if sid in self.reset or closed:
                check(sent.startswith(got), f"stream {sid}: received bytes that were not sent")
            else:
                check(got == sent, f"stream {sid}: sent {len(sent)} bytes, got {len(got)}")
        if not closed:
            for key in self.ended:
                if key[1] not in self.reset:
                    check(key in self.eof, f"stream {key[1]} was ended, its EOF never came")
        check(self.eof <= self.ended, "an EOF arrived on a stream that was not ended")


def run_session(
    ops: list[Op], window: int, rng: random.Random | None, damage: Damage | None = None
) -> Session:
    session = Session(window, rng, damage)
    for op in ops:
        session.apply(op)
    if damage is None:
        session.check_streams()
    return session


def fuzz_session(fdp: Any) -> None:
    window = fdp.ConsumeIntInRange(1, 8192)
    seed = fdp.ConsumeIntInRange(0, (1 << 32) - 1)
    ops = read_ops(fdp)
    whole = run_session(ops, window, None)
    cut = run_session(ops, window, random.Random(seed))
    check(whole.log == cut.log, "fragmentation changed the events of a valid session")


def fuzz_corrupt(fdp: Any) -> None:
    """A valid session with one delivery damaged (a byte flipped, bytes cut or inserted)."""
    window = fdp.ConsumeIntInRange(1, 8192)
    damage = Damage(
        delivery=fdp.ConsumeIntInRange(0, 63),
        how=fdp.ConsumeIntInRange(0, 3),
        at=fdp.ConsumeIntInRange(0, 1 << 20),
        value=fdp.ConsumeIntInRange(1, 255),
        inserted=fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 16)),
    )
    seed = fdp.ConsumeIntInRange(0, (1 << 32) - 1)
    run_session(read_ops(fdp), window, random.Random(seed), damage)


def test_one_input(data: bytes) -> None:
    """One fuzz input; the first byte picks the mode (raw bytes, a session, a damaged one)."""
    fdp = provider(data)
    mode = MODES[fdp.ConsumeIntInRange(0, len(MODES) - 1)]
    if mode == "raw":
        fuzz_raw(fdp)
    elif mode == "session":
        fuzz_session(fdp)
    else:
        fuzz_corrupt(fdp)


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
