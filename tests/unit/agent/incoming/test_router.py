"""router: telling HTTP from other first bytes, and dispatching to HTTP/1 or HTTP/2."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.agent.incoming.http_peers import LOOPBACK, H2Client, Router, h2_body
from tether.agent.incoming.http2 import PREFACE
from tether.agent.incoming.router import looks_like_http


@pytest.mark.parametrize(
    ("first", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
        (b"POST /upload HTTP/1.0\r\n", True),
        (b"M-SEARCH * HTTP/1.1\r\n", True),
        (b"PROPFIND /dav", True),  # first line not complete yet
        (b"GET ", True),
        (PREFACE, True),
        (PREFACE + b"\x00\x00\x00\x04", True),
        (PREFACE[:8], True),
        (b"SET key value\r\n", False),  # a text protocol, not HTTP
        (b"GET / HTTP/2.0\r\n", False),
        (b"get / HTTP/1.1\r\n", False),
        (b"\x16\x03\x01\x02\x00\x01", False),  # TLS ClientHello
        (b"SSH-2.0-OpenSSH_9.6\r\n", False),
        (b"GET", False),
        (b"PR", False),
        (b"", False),
    ],
)
def test_looks_like_http(first: bytes, expected: bool) -> None:
    assert looks_like_http(first) is expected


async def first_read(router: Router) -> bytes:
    """What the router's first read got on its next connection."""
    async with asyncio.timeout(5):
        return await router.first_reads.get()


async def test_preface_split_over_reads_is_http2(h2_router: Router) -> None:
    # The router's first read gets a part of the preface only: it still picks HTTP/2.
    firsts: list[bytes] = []

    async def router_read_first_part() -> None:
        firsts.append(await first_read(h2_router))

    for split in (1, 5, 23):
        client = await H2Client.open(
            h2_router.port, split_preface=split, between=router_read_first_part
        )
        assert firsts.pop() == PREFACE[:split]
        assert h2_body(await client.request("/after")) == "original GET /after 0"
        await client.close()


async def test_http1_method_starting_like_the_preface(h2_router: Router) -> None:
    # A first read of just "P" could start "PRI" (HTTP/2) or "PUT": the router reads on and,
    # once the bytes cannot be the preface, serves HTTP/1.
    reader, writer = await asyncio.open_connection(LOOPBACK, h2_router.port)
    writer.write(b"P")
    await writer.drain()
    assert await first_read(h2_router) == b"P"
    writer.write(b"UT / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5):
        line = await reader.readline()
    # The upstreams here speak HTTP/2 only, so the HTTP/1 request cannot be served; what
    # matters is that it was read as HTTP/1 (an HTTP/1 answer, a 502).
    assert line.startswith(b"HTTP/1.1 502 ")
    writer.close()
