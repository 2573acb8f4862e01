"""The typed vocabulary: every request and answer survives its encoding (through msgpack),
malformed ones are refused with the error the peer gets, and the vocabulary is pinned to the
protocol version."""

import dataclasses
import errno
import hashlib
import typing
from typing import Any

import msgpack
import pytest

from tether.protocol.frames import PROTOCOL_VERSION
from tether.protocol.messages import (
    REQUESTS,
    Data,
    Done,
    EnvAnswer,
    FsAccess,
    FsClose,
    FsListdir,
    FsMkdir,
    FsOpen,
    FsRead,
    FsReadlink,
    FsRmdir,
    FsStat,
    FsUnlink,
    FsWrite,
    GetEnv,
    GetHostname,
    HostnameAnswer,
    IncomingLost,
    IncomingSubscribe,
    LeaveAnswer,
    LinkTarget,
    Listing,
    MessageError,
    Opened,
    Request,
    SessionLeave,
    SessionTarget,
    StatAnswer,
    Subscribed,
    TargetAnswer,
    Written,
    decode_answer,
    decode_request,
    encode_answer,
    encode_request,
)

SAMPLES: list[tuple[Request[Any], Any]] = [
    (GetEnv(["SHOP_*"], ["SHOP_SECRET"]), EnvAnswer({"SHOP_MODE": "staging"})),
    (GetHostname(), HostnameAnswer("frontend-1")),
    (FsStat("/etc/x", follow=False), StatAnswer({"st_mode": 0o100644, "st_size": 3})),
    (FsListdir("/etc"), Listing([("hosts", 8, 12), ("shop", 4, 13)])),
    (FsReadlink("/etc/link"), LinkTarget("/etc/real")),
    (FsAccess("/etc/x", 4), Done()),
    (FsOpen("/etc/x", 0, 0o600), Opened(3, {"st_size": 3})),
    (FsRead(3, 0, 65536), Data(b"abc")),
    (FsRead(3, 3, 65536), Data(b"")),
    (FsWrite(3, b"\x00\xff", 7), Written(2)),
    (FsClose(3), Done()),
    (FsUnlink("/tmp/x"), Done()),
    (FsMkdir("/tmp/d", 0o700), Done()),
    (FsRmdir("/tmp/d"), Done()),
    (SessionTarget("containerd://abc"), TargetAnswer(42)),
    (SessionTarget("containerd://abc"), TargetAnswer(None)),
    (SessionLeave(), LeaveAnswer(True)),
    (
        IncomingSubscribe(8080, "steal", {"header": ["^x-dev: a$"]}, True, False, True, "a@b"),
        Subscribed(["port 8080: overlaps"]),
    ),
    (IncomingLost(8080, "bob"), Done()),
]


def _wire(value: Any) -> Any:
    """What the other end gets: the value through msgpack, as the frames carry it."""
    return msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False)


def test_every_request_has_a_sample() -> None:
    assert {type(r) for r, _ in SAMPLES} == set(REQUESTS)


@pytest.mark.parametrize(("request_", "answer"), SAMPLES)
def test_round_trip_through_msgpack(request_: Request[Any], answer: Any) -> None:
    op, args = encode_request(request_)
    assert decode_request(op, _wire(args)) == request_
    assert decode_answer(request_, _wire(encode_answer(answer))) == answer


def test_defaults_fill_what_an_older_sender_left_out() -> None:
    assert decode_request("fs.stat", {"path": "/x"}) == FsStat("/x", follow=True)
    assert decode_request("env", {}) == GetEnv(["*"], [])


@pytest.mark.parametrize(
    ("op", "args", "code", "needle"),
    [
        ("fs.nope", {}, "ENOSYS", "unknown operation 'fs.nope'"),
        ("resolve", {"name": "x"}, "ENOSYS", "unknown operation"),  # gone in version 2
        ("fs.stat", {}, "EINVAL", "needs 'path'"),
        ("fs.stat", {"path": 3}, "EINVAL", "'path' must be a string"),
        ("fs.read", {"handle": True, "offset": 0, "size": 1}, "EINVAL", "must be an integer"),
        ("fs.write", {"handle": 1, "data": "text"}, "EINVAL", "'data' must be bytes"),
        ("env", {"include": "*"}, "EINVAL", "'include' must be a list"),
        ("incoming.subscribe", {"port": 1, "mode": "steal", "filter": [1]}, "EINVAL", "filter"),
        ("fs.stat", ["/x"], "EINVAL", "map of arguments"),
    ],
)
def test_malformed_requests_are_refused(op: str, args: Any, code: str, needle: str) -> None:
    with pytest.raises(MessageError) as info:
        decode_request(op, args)
    assert info.value.error.code == code
    assert info.value.error.errno == (errno.ENOSYS if code == "ENOSYS" else errno.EINVAL)
    assert needle in info.value.error.message


@pytest.mark.parametrize(
    ("request_", "result"),
    [
        (FsStat("/x"), [1, 2]),
        (FsRead(1, 0, 1), "text"),
        (FsOpen("/x"), {"handle": "3", "stat": {}}),
        (SessionLeave(), {}),
    ],
)
def test_malformed_answers_are_refused(request_: Request[Any], result: Any) -> None:
    with pytest.raises(MessageError):
        decode_answer(request_, result)


def _fingerprint() -> str:
    parts = []
    for cls in sorted(REQUESTS, key=lambda c: c.OP):
        answer = cls.ANSWER
        hints = typing.get_type_hints(cls)
        answer_hints = typing.get_type_hints(answer)
        parts.append(
            f"{cls.OP}({','.join(f'{f.name}:{hints[f.name]}' for f in dataclasses.fields(cls))})"
            f"->{answer.__name__}"
            f"({','.join(f'{f.name}:{answer_hints[f.name]}' for f in dataclasses.fields(answer))})"
        )
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


# Change this only together with PROTOCOL_VERSION (frames.py): both ends must agree.
PINNED = {3: "3bae9cc61527697a"}


def test_the_vocabulary_is_pinned_to_the_protocol_version() -> None:
    assert PINNED.get(PROTOCOL_VERSION) == _fingerprint(), (
        "the message vocabulary changed: bump PROTOCOL_VERSION and pin the new fingerprint"
        f" {_fingerprint()} for it here"
    )
