"""Fuzz HTTP/2 request routing on the steal path: prior-knowledge detection (the preface,
possibly split over reads), `http2_core._FrameSplitter` (which takes GOAWAY frames out of the
byte stream), and `router.route_http` serving a client whose bytes after the preface are
the fuzz input, with in-memory h2 upstreams that answer every request.

Invariants:
- the splitter passes every byte on except GOAWAY frames, each of which it reports once with
  its fields; how the bytes are cut never changes what comes out; it holds at most one frame
  header and one GOAWAY payload;
- a client that starts with the preface, however the preface is cut, is served HTTP/2: what
  it gets back is whole HTTP/2 frames, starting with SETTINGS;
- route_http ends (no hang), leaves no task running, and closes every upstream it opened;
- nothing but the anticipated errors (bad HTTP/2 from the client, a broken connection)
  reaches the routers' logging of failures;
- the upstreams only ever get valid HTTP/2, and each gets only requests `decide` sent its
  way, with the headers the client sent, in the order they were decided;
- each client stream gets at most one final response, and only answers an upstream gave.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import atheris
import h2.config
import h2.connection
import h2.events
import h2.exceptions
import hpack

from fuzz.common import InvariantViolation, check, flag, provider, run, split
from fuzz.fakes import ClientPipe, LogRecorder, Loop, QueuePipe

with atheris.instrument_imports(include=["tether"]):
    from tether.agent.incoming.filters import HttpFilter
    from tether.agent.incoming.http2 import PREFACE, request_head
    from tether.agent.incoming.http2_core import _FrameSplitter, _GoAway
    from tether.agent.incoming.router import Decide, RequestHead, route_http

FILTERS: list[tuple[Hashable, HttpFilter]] = [
    ("alice", HttpFilter(headers=(re.compile(r"^x-dev: alice$"),))),
    (
        "api",
        HttpFilter(path=re.compile(r"^/api/"), methods=frozenset({"POST", "PUT"}), mode="any"),
    ),
]
MARKER = b"x-fuzz-answer"
GOAWAY = 7
HEADERS = 1
CONTINUATION = 9
SETTINGS = 4
END_HEADERS = 0x4
MAX_GOAWAY = 1 << 16

Header = tuple[bytes, bytes]


def choose(head: RequestHead) -> Hashable | None:
    """The route key of a request: the first filter that takes it."""
    return next((k for k, f in FILTERS if f.takes(head.method, head.target, head.headers)), None)


# -- the splitter ----------------------------------------------------------------------------


def reference_split(data: bytes, skip: int) -> tuple[bytes, list[_GoAway]]:
    """What the splitter must produce, parsed frame by frame from the whole input."""
    passed = bytearray(data[:skip])
    goaways: list[_GoAway] = []
    pos = skip
    while pos < len(data):
        header = data[pos : pos + 9]
        if len(header) < 9:
            break  # held until the header is complete
        length = int.from_bytes(header[:3], "big")
        if header[3] == GOAWAY and 8 <= length <= MAX_GOAWAY:
            payload = data[pos + 9 : pos + 9 + length]
            if len(payload) == length:
                goaways.append(
                    _GoAway(
                        int.from_bytes(payload[:4], "big") & 0x7FFFFFFF,
                        int.from_bytes(payload[4:8], "big"),
                    )
                )
            pos += 9 + length
            continue
        passed += data[pos : pos + 9 + length]
        pos += 9 + length
    return bytes(passed), goaways


def check_splitter(fdp: Any) -> None:
    skip = len(PREFACE) if flag(fdp) else 0
    data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    want_bytes, want_goaways = reference_split(data, skip)
    splitter = _FrameSplitter(skip=skip)
    passed = bytearray()
    goaways: list[_GoAway] = []
    for piece in split(fdp, data):
        for item in splitter.feed(piece):
            if isinstance(item, _GoAway):
                goaways.append(item)
            else:
                check(bool(item), "the splitter passed on an empty piece")
                passed += item
        held = len(splitter._header) + len(splitter._goaway or b"")
        check(held <= 9 + MAX_GOAWAY, f"the splitter holds {held} bytes")
    check(goaways == want_goaways, f"GOAWAYs {goaways} instead of {want_goaways}")
    check(bytes(passed) == want_bytes, "the splitter changed the bytes it passes on")


# -- routing -----------------------------------------------------------------------------------


@dataclass
class Seen:
    decided: list[tuple[Hashable | None, RequestHead]] = field(default_factory=list)
    upstreams: list[Upstream] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)


def decide_for(seen: Seen) -> Decide:
    def decide(head: RequestHead) -> Hashable | None:
        key = choose(head)
        seen.decided.append((key, head))
        return key

    return decide


class Upstream(QueuePipe):
    """An HTTP/2 server in memory that answers each request once it is complete."""

    def __init__(self, key: Hashable | None, seen: Seen) -> None:
        super().__init__()
        self.key = key
        self.seen = seen
        config = h2.config.H2Configuration(client_side=False, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.feed(self.conn.data_to_send())
        self.requests: list[list[Header]] = []

    def received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise InvariantViolation(f"the router sent bad HTTP/2 upstream: {exc!r}") from exc
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                self.requests.append(list(event.headers))
                if event.stream_ended is not None:
                    self._answer(event.stream_id)
            elif isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                self._answer(event.stream_id)
        out = self.conn.data_to_send()
        if out:
            self.feed(out)

    def _answer(self, stream_id: int) -> None:
        number = len(self.seen.answered) + 1
        try:
            self.conn.send_headers(stream_id, [(b":status", b"200"), (MARKER, b"%d" % number)])
            self.conn.send_data(stream_id, b"answer %d" % number, end_stream=True)
        except h2.exceptions.ProtocolError:
            return  # the router reset the stream meanwhile
        self.seen.answered.add(number)


LOOP: Loop | None = None
RECORDER: LogRecorder | None = None
UPSTREAM_TROUBLE = "from the upstream"


def serve(pieces: list[bytes]) -> None:
    """Route one client connection (`pieces` start with the preface) and check it."""
    global LOOP, RECORDER
    if LOOP is None or RECORDER is None:
        LOOP, RECORDER = Loop(), LogRecorder("tether.agent.incoming.router")
    RECORDER.records.clear()
    seen = Seen()
    first, rest = pieces[0], pieces[1:]
    client = ClientPipe(rest)

    async def connect(key: Hashable | None) -> Upstream:
        upstream = Upstream(key, seen)
        seen.upstreams.append(upstream)
        return upstream

    LOOP.run(route_http(client, first, decide_for(seen), connect))
    RECORDER.check_no_unexpected_errors((OSError, h2.exceptions.ProtocolError))
    for record in RECORDER.records:
        text = record.getMessage()
        check(UPSTREAM_TROUBLE not in text, f"a valid upstream was refused: {text}")
    for upstream in seen.upstreams:
        check(upstream.closed or upstream.aborted, "an upstream connection was left open")
    check(client.closed or client.aborted, "the client connection was not closed")
    check_routing(seen)
    check_client_frames(bytes(client.received), seen)


def check_routing(seen: Seen) -> None:
    for upstream in seen.upstreams:
        wanted = [head for key, head in seen.decided if key == upstream.key]
        for headers in upstream.requests:
            head = request_head(headers)
            check(choose(head) == upstream.key, "a request reached the wrong upstream")
            check(head in wanted, "an upstream got a request that was not decided for it")
            wanted = wanted[wanted.index(head) + 1 :]  # in the order decided


def check_client_frames(data: bytes, seen: Seen) -> None:
    """What the client got is whole frames, SETTINGS first, with at most one final response
    per stream, each either ours (502) or one an upstream gave."""
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 20
    decoder.max_allowed_table_size = 1 << 32  # whatever the client's SETTINGS allowed
    pos = 0
    block: dict[int, bytearray] = {}
    finals: set[int] = set()
    while pos < len(data):
        check(len(data) - pos >= 9, "the client got a partial frame header")
        length = int.from_bytes(data[pos : pos + 3], "big")
        ftype, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        payload = data[pos + 9 : pos + 9 + length]
        check(len(payload) == length, "the client got a partial frame")
        if pos == 0:
            check(ftype == SETTINGS, "the client's first frame is not SETTINGS")
        pos += 9 + length
        if ftype == HEADERS:
            padded, priority = flags & 0x8, flags & 0x20
            start = (1 if padded else 0) + (5 if priority else 0)
            end = len(payload) - (payload[0] if padded else 0)
            block[sid] = bytearray(payload[start:end])
        elif ftype == CONTINUATION:
            block[sid] += payload
        else:
            continue
        if flags & END_HEADERS:
            headers = dict(decoder.decode(bytes(block.pop(sid)), raw=True))
            status = int(headers.get(b":status", b"0"))
            if status >= 200 and b"grpc-status" not in headers:
                check(sid not in finals, f"stream {sid} got two final responses")
                finals.add(sid)
                marker = headers.get(MARKER)
                if marker is not None:
                    check(int(marker) in seen.answered, "the client got an answer nobody gave")
                else:
                    check(status == 502, f"a made-up response {status} on stream {sid}")


def test_one_input(data: bytes) -> None:
    """One fuzz input: the splitter, or a client connection after the preface."""
    fdp = provider(data)
    if fdp.ConsumeIntInRange(0, 3) == 0:
        check_splitter(fdp)
        return
    body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    pieces = split(fdp, PREFACE + body)
    # The manager routes a connection once its first read looks like HTTP ("PRI " at least).
    while len(pieces) > 1 and len(pieces[0]) < 4:
        pieces[:2] = [pieces[0] + pieces[1]]
    serve(pieces)


def main() -> None:
    """Run the harness under libFuzzer with the command line's flags."""
    run(test_one_input, sys.argv)


if __name__ == "__main__":
    main()
