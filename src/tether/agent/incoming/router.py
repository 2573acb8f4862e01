"""Routing the requests of one HTTP client connection (filtered steal): each request goes to
the upstream `decide` picks for it, over connections `connect` opens.

HTTP/2 with prior knowledge (its connection preface; gRPC uses this) is served by `http2`,
anything else by `http1`. HTTP/2 reached through `Upgrade: h2c` on HTTP/1 is an ordinary
protocol switch there: the rest of that connection is relayed as raw bytes to wherever its
first request went.
"""

from __future__ import annotations

import asyncio
import re

from tether.agent.incoming.http1 import serve_http1
from tether.agent.incoming.http2 import PREFACE, serve_http2
from tether.agent.incoming.pipes import Pipe
from tether.agent.incoming.routing import Connect, Decide, RequestHead, log

__all__ = ["Connect", "Decide", "RequestHead", "looks_like_http", "route_http"]

# The start of an HTTP/1 request line: a method (upper-case by convention, and in practice
# always), a space. A complete first line must also end in the HTTP/1 version.
_METHOD_START = re.compile(rb"[A-Z][A-Z0-9_-]{0,31} ")
_REQUEST_LINE = re.compile(rb"[A-Z][A-Z0-9_-]{0,31} [^ ]+ HTTP/1\.[0-9]")


def looks_like_http(first: bytes) -> bool:
    """Whether a connection's first bytes look like an HTTP/1 request or the HTTP/2 preface.

    HTTP/1: a method token and a space; when the first line is complete, it must also end
    with "HTTP/1.x" (so "SET key value" of a text protocol does not pass). HTTP/2: the bytes
    are the preface, or its start of at least 4 bytes ("PRI ").
    """
    if len(first) >= 4 and (first.startswith(PREFACE) or PREFACE.startswith(first)):
        return True
    if not _METHOD_START.match(first):
        return False
    line_end = first.find(b"\n")
    if line_end < 0:
        return True
    return _REQUEST_LINE.fullmatch(first[:line_end].rstrip(b"\r")) is not None


async def route_http(client: Pipe, first: bytes, decide: Decide, connect: Connect) -> None:
    """Serve one client connection whose first bytes (`first`, already read) are HTTP.

    Each request goes to `await connect(decide(head))`: route key None is the original app,
    other keys are sessions' local apps. Connections to upstreams are reused for later
    requests of the same key. A request whose upstream cannot be reached gets a 502 answer
    (HTTP/1 and HTTP/2) or gRPC status UNAVAILABLE (gRPC). Returns when the client connection
    is over, with every upstream connection it opened closed and the client closed too; only
    cancellation escapes (other errors end the connection and are logged at debug level).
    """
    try:
        first = await _complete_preface(client, first)
        if first.startswith(PREFACE):
            await serve_http2(client, first, decide, connect)
        else:
            await serve_http1(client, first, decide, connect)
    except asyncio.CancelledError:
        client.abort()
        raise
    except Exception:
        log.debug("routing an HTTP connection failed", exc_info=True)
        client.abort()


async def _complete_preface(client: Pipe, first: bytes) -> bytes:
    # The HTTP/2 preface may arrive split; read until the bytes either hold all of it or
    # cannot be it. (An HTTP/1 method such as "POST" differs from "PRI *" by its 2nd byte.)
    while len(first) < len(PREFACE) and PREFACE.startswith(first):
        more = await client.read()
        if not more:
            break
        first += more
    return first
