"""What the HTTP routers (http1, http2) share: the request head a route is decided on, the
callbacks that decide and connect, and the texts of the answers we make up ourselves."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from tether.agent.incoming.pipes import Pipe

log = logging.getLogger("tether.agent.incoming.router")


@dataclass(frozen=True)
class RequestHead:
    """What a route is decided on: a request's method, target (path and query) and headers.

    Header names are as the client sent them (HTTP/2: lower-case, with `:authority` given as
    `host` when the request has no `host` header); values are decoded as UTF-8 (undecodable
    bytes kept as surrogate escapes).
    """

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    http2: bool


Decide = Callable[[RequestHead], Hashable | None]
"""Where a request goes: None = the original app, anything else = a route key (a session)."""

Connect = Callable[[Hashable | None], Awaitable[Pipe]]
"""Opens a new connection to a route key's upstream; raises OSError when it cannot."""


def decode(value: bytes) -> str:
    """Header bytes as text for `Decide` (lossless: undecodable bytes become escapes)."""
    return value.decode("utf-8", "surrogateescape")


def safe_decide(decide: Decide, head: RequestHead) -> Hashable | None:
    """`decide(head)`, or None (the original app) if it fails: a broken decision must not
    break the client's connection, and not stealing is the safe default."""
    try:
        return decide(head)
    except Exception:
        log.exception(
            "choosing a route for %s %s failed; it goes to the original app",
            head.method,
            head.target,
        )
        return None


def unreachable_reason(key: Hashable | None, exc: BaseException | None = None) -> str:
    """The text of our 502 answer when `key`'s upstream cannot be reached (or dropped)."""
    who = "the app in the pod" if key is None else "the local app on the developer's machine"
    detail = f" ({_one_line(exc)})" if exc is not None and str(exc) else ""
    return f"tether: {who} did not answer{detail}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
