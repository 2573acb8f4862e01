"""The vocabulary of requests between the two ends, and their answers: one frozen dataclass
per message, with its encoding. Sans-IO like the rest of the protocol.

A request travels as a REQUEST frame `(op, args)`: `op` is the request's `OP`, `args` a map of
its fields. Its answer travels as the RESPONSE's result: the answer's fields as a map (or, for
the raw `FsRead`, the bytes themselves). `decode_request` checks every field's type, so a
handler gets a well-formed request or the peer gets EINVAL (ENOSYS for an unknown op).

Changing this vocabulary (an op, a field, a type) changes the protocol: bump
PROTOCOL_VERSION (frames.py) with it, so that an agent and a CLI of different vocabularies
fail their handshake with the version message instead of misreading each other.
tests/unit/protocol/test_messages.py pins the vocabulary to the version.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_type_hints

from tether.protocol.events import RemoteError

A = TypeVar("A")


class MessageError(ValueError):
    """A request or answer that does not fit the vocabulary; `error` is what the peer gets."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(error.message)
        self.error = error


# -- answers -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Done:
    """An answer that carries nothing: the request was carried out."""


@dataclass(frozen=True)
class EnvAnswer:
    """The target container's environment, filtered."""

    env: dict[str, str]


@dataclass(frozen=True)
class HostnameAnswer:
    """The pod's hostname."""

    hostname: str


@dataclass(frozen=True)
class StatAnswer:
    """stat(2) fields of a file in the target's root (`st_mode`, `st_size`, ... as ints)."""

    stat: dict[str, int]


@dataclass(frozen=True)
class Listing:
    """A directory's entries: (name, d_type, inode) each."""

    entries: list[tuple[str, int, int]]


@dataclass(frozen=True)
class LinkTarget:
    """What a symbolic link points to."""

    target: str


@dataclass(frozen=True)
class Opened:
    """An open file on the agent: its handle (for FsRead/FsWrite/FsClose) and fstat."""

    handle: int
    stat: dict[str, int]


@dataclass(frozen=True)
class Data:
    """Bytes read from an open file (empty at its end)."""

    data: bytes


@dataclass(frozen=True)
class Written:
    """How many bytes a write took."""

    count: int


@dataclass(frozen=True)
class TargetAnswer:
    """The process the session is now served from."""

    pid: int | None


@dataclass(frozen=True)
class LeaveAnswer:
    """Whether the leaving session was the agent's last (then its Job should go)."""

    last: bool


@dataclass(frozen=True)
class Subscribed:
    """A granted subscription, and what its user should know about it."""

    warnings: list[str]


# -- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Request(Generic[A]):
    """Base of every request: `OP` names it on the wire, `ANSWER` is its answer's type."""

    OP: ClassVar[str]
    ANSWER: ClassVar[type[Any]]


@dataclass(frozen=True)
class GetEnv(Request[EnvAnswer]):
    """The target container's environment, keeping names matching `include` globs and none
    matching `exclude`."""

    OP = "env"
    ANSWER = EnvAnswer
    include: list[str] = field(default_factory=lambda: ["*"])
    exclude: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class GetHostname(Request[HostnameAnswer]):
    """The pod's hostname (its /etc/hostname, else the node's)."""

    OP = "hostname"
    ANSWER = HostnameAnswer


@dataclass(frozen=True)
class FsStat(Request[StatAnswer]):
    """stat(2) (`follow`) or lstat(2) of `path` inside the target's root."""

    OP = "fs.stat"
    ANSWER = StatAnswer
    path: str
    follow: bool = True


@dataclass(frozen=True)
class FsListdir(Request[Listing]):
    """The entries of directory `path`."""

    OP = "fs.listdir"
    ANSWER = Listing
    path: str


@dataclass(frozen=True)
class FsReadlink(Request[LinkTarget]):
    """readlink(2) of `path`."""

    OP = "fs.readlink"
    ANSWER = LinkTarget
    path: str


@dataclass(frozen=True)
class FsAccess(Request[Done]):
    """access(2) of `path` with `mode` (os.F_OK, R_OK, W_OK, X_OK)."""

    OP = "fs.access"
    ANSWER = Done
    path: str
    mode: int = os.F_OK


@dataclass(frozen=True)
class FsOpen(Request[Opened]):
    """open(2) of `path` with `flags` and, when creating, `mode`."""

    OP = "fs.open"
    ANSWER = Opened
    path: str
    flags: int = os.O_RDONLY
    mode: int = 0o666


@dataclass(frozen=True)
class FsRead(Request[Data]):
    """Up to `size` bytes of open file `handle` at `offset`."""

    OP = "fs.read"
    ANSWER = Data
    handle: int
    offset: int
    size: int


@dataclass(frozen=True)
class FsWrite(Request[Written]):
    """Write `data` to open file `handle` at `offset` (-1: at its current position)."""

    OP = "fs.write"
    ANSWER = Written
    handle: int
    data: bytes
    offset: int = -1


@dataclass(frozen=True)
class FsClose(Request[Done]):
    """Close open file `handle`."""

    OP = "fs.close"
    ANSWER = Done
    handle: int


@dataclass(frozen=True)
class FsUnlink(Request[Done]):
    """unlink(2) of `path`."""

    OP = "fs.unlink"
    ANSWER = Done
    path: str


@dataclass(frozen=True)
class FsMkdir(Request[Done]):
    """mkdir(2) of `path` with `mode`."""

    OP = "fs.mkdir"
    ANSWER = Done
    path: str
    mode: int = 0o777


@dataclass(frozen=True)
class FsRmdir(Request[Done]):
    """rmdir(2) of `path`."""

    OP = "fs.rmdir"
    ANSWER = Done
    path: str


@dataclass(frozen=True)
class SessionTarget(Request[TargetAnswer]):
    """Serve this session from container `container_id` of the agent's pod (a shared agent
    started on its first session's container)."""

    OP = "session.target"
    ANSWER = TargetAnswer
    container_id: str


@dataclass(frozen=True)
class SessionLeave(Request[LeaveAnswer]):
    """The session is about to close (then a last one's agent stops taking sessions)."""

    OP = "session.leave"
    ANSWER = LeaveAnswer


@dataclass(frozen=True)
class IncomingSubscribe(Request[Subscribed]):
    """Mirror or steal port `port` of the target for this session.

    `filter` is an HTTP filter's wire form (agent/incoming/filters.py) for a filtered steal;
    `steal_probes` also takes kube-probe requests; `override` takes a port another session
    steals; `reset` resets the app's open connections when a steal starts; `who` names the
    session in other sessions' messages.
    """

    OP = "incoming.subscribe"
    ANSWER = Subscribed
    port: int
    mode: str
    filter: dict[str, Any] | None = None
    steal_probes: bool = False
    override: bool = False
    reset: bool = True
    who: str = ""


@dataclass(frozen=True)
class IncomingLost(Request[Done]):
    """From the agent: session `by` took port `port` over (--override) from this session."""

    OP = "incoming.lost"
    ANSWER = Done
    port: int
    by: str


REQUESTS: tuple[type[Request[Any]], ...] = (
    GetEnv,
    GetHostname,
    FsStat,
    FsListdir,
    FsReadlink,
    FsAccess,
    FsOpen,
    FsRead,
    FsWrite,
    FsClose,
    FsUnlink,
    FsMkdir,
    FsRmdir,
    SessionTarget,
    SessionLeave,
    IncomingSubscribe,
    IncomingLost,
)
_BY_OP = {cls.OP: cls for cls in REQUESTS}


# -- encoding ----------------------------------------------------------------------------------


def _invalid(message: str) -> MessageError:
    return MessageError(RemoteError("EINVAL", message, errno.EINVAL))


def _check(value: Any, hint: Any, where: str) -> Any:
    """`value` if it has type `hint` (as msgpack delivers it), else MessageError."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check(value, option, where)
                except MessageError:
                    continue
        raise _invalid(f"{where} has the wrong type")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            raise _invalid(f"{where} must be a list")
        return [_check(v, item, f"{where}[]") for v in value]
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or len(value) != len(items):
            raise _invalid(f"{where} must be a list of {len(items)}")
        return tuple(_check(v, t, where) for v, t in zip(value, items, strict=True))
    if origin is dict:
        key, val = typing.get_args(hint)
        if not isinstance(value, dict):
            raise _invalid(f"{where} must be a map")
        return {_check(k, key, where): _check(v, val, where) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise _invalid(f"{where} must be true or false")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid(f"{where} must be an integer")
        return value
    if hint is str or hint is bytes:
        if not isinstance(value, hint):
            raise _invalid(f"{where} must be {'a string' if hint is str else 'bytes'}")
        return value
    raise TypeError(f"no wire rule for {hint!r}")  # a vocabulary bug, caught by its tests


def _fields(cls: type[Any], args: dict[str, Any], what: str) -> dict[str, Any]:
    hints = get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in args:
            values[f.name] = _check(args[f.name], hints[f.name], f"{what} {f.name!r}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _invalid(f"{what} needs {f.name!r}")
    return values


def encode_request(request: Request[Any]) -> tuple[str, dict[str, Any]]:
    """The REQUEST frame's (op, args) for `request`."""
    return request.OP, {f.name: getattr(request, f.name) for f in dataclasses.fields(request)}


def decode_request(op: str, args: dict[str, Any]) -> Request[Any]:
    """The request a REQUEST frame carries; MessageError (ENOSYS, EINVAL) if it is not one."""
    cls = _BY_OP.get(op)
    if cls is None:
        raise MessageError(RemoteError("ENOSYS", f"unknown operation {op!r}", errno.ENOSYS))
    if not isinstance(args, dict):
        raise _invalid(f"{op} takes a map of arguments")
    return cls(**_fields(cls, args, f"{op} argument"))


def encode_answer(answer: Any) -> Any:
    """The RESPONSE result for `answer` (Data travels as its raw bytes)."""
    if isinstance(answer, Data):
        return answer.data
    return {f.name: getattr(answer, f.name) for f in dataclasses.fields(answer)}


def decode_answer(request: Request[A], result: Any) -> A:
    """The answer to `request` in a RESPONSE's result; MessageError if it is not one."""
    cls: type[A] = request.ANSWER
    if cls is Data:
        return typing.cast(A, Data(_check(result, bytes, f"{request.OP} answer")))
    if result is None and cls is Done:
        return typing.cast(A, Done())
    if not isinstance(result, dict):
        raise _invalid(f"{request.OP} answer must be a map")
    return cls(**_fields(cls, result, f"{request.OP} answer"))
