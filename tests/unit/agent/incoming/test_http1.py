"""HTTP/1.x routing end to end, through the asyncio shell and real loopback servers: which
server answers, streaming with back-pressure, splicing, connection clean-up. The routing rules
themselves (framing, 502s, retries, closing...) are byte tables in test_http1_core."""

from __future__ import annotations

import asyncio
import hashlib

import h11
import pytest

from tests.unit.agent.incoming.conftest import MakeRouter
from tests.unit.agent.incoming.http_peers import (
    LOOPBACK,
    H1Client,
    H1Server,
    Router,
    closed_port,
    read_pipelined,
)

ALICE = [("x-dev", "alice")]


async def test_keep_alive_routes_each_request(
    h1_router: Router, h1_original: H1Server, h1_local: H1Server
) -> None:
    client = await H1Client.open(h1_router.port)
    plan = [
        ("GET", "/one", [], "original"),
        ("GET", "/two", ALICE, "local"),
        ("GET", "/three?q=1", [("X-Dev", "alice")], "local"),  # header name in any case
        ("POST", "/four", [("x-dev", "bob")], "original"),
        ("GET", "/five", ALICE, "local"),
        ("DELETE", "/six", [], "original"),
    ]
    for method, target, headers, server in plan:
        body = b"payload" if method == "POST" else b""
        reply = await client.request(method, target, headers, body)
        assert reply.status == 200
        assert reply.server == server
        assert reply.body == f"{server} {method} {target} {len(body)}".encode()
    await client.close()
    # One connection per upstream, kept alive across the client's requests.
    assert h1_router.connects == {None: 1, "local": 1}
    assert [s.target for s in h1_local.seen] == ["/two", "/three?q=1", "/five"]
    # Header names keep their case on the way through.
    assert (b"X-Dev", b"alice") in h1_local.seen[1].headers
    await h1_router.wait_idle()
    await h1_original.wait_all_closed()
    await h1_local.wait_all_closed()


async def test_pipelined_requests_answered_in_order(h1_router: Router) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, h1_router.port)
    lines = ["GET /p1", "GET /p2", "HEAD /p3", "GET /p4", "GET /p5"]
    stolen = {"/p2", "/p3", "/p5"}
    raw = b""
    for line in lines:
        method, target = line.split()
        dev = b"x-dev: alice\r\n" if target in stolen else b""
        raw += f"{method} {target} HTTP/1.1\r\nHost: x\r\n".encode() + dev + b"\r\n"
    writer.write(raw)  # all five in one write
    await writer.drain()
    async with asyncio.timeout(5):
        replies = await read_pipelined(reader, lines)
    for line, reply in zip(lines, replies, strict=True):
        method, target = line.split()
        server = "local" if target in stolen else "original"
        assert reply.server == server
        assert reply.body == (b"" if method == "HEAD" else f"{server} {line} 0".encode())
    writer.close()


async def test_large_bodies_are_streamed(h1_router: Router, h1_local: H1Server) -> None:
    client = await H1Client.open(h1_router.port)
    block = bytes(range(256)) * 4096  # 1 MiB
    body = [block] * 6
    reply = await client.request("PUT", "/sha", ALICE, iter(body))
    digest = hashlib.sha256(b"".join(body)).hexdigest()
    assert reply.body == f"local {6 * len(block)} {digest}".encode()

    size = 5_000_000
    reply = await client.request("GET", f"/big?n={size}", ALICE)
    assert len(reply.body) == size
    assert reply.body == (bytes(range(256)) * (size // 256 + 1))[:size]

    # The first part of a response reaches the client while the app still holds the rest.
    await client.send(
        h11.Request(method="GET", target="/stream", headers=[("Host", "x"), *ALICE]),
        h11.EndOfMessage(),
    )
    async with asyncio.timeout(5):
        assert isinstance(await client.next_event(), h11.Response)
        event = await client.next_event()
    assert isinstance(event, h11.Data)
    assert event.data == b"first part;"
    h1_local.gate.set()
    async with asyncio.timeout(5):
        event = await client.next_event()
    assert isinstance(event, h11.Data)
    assert event.data == b"second part"
    await client.close()


async def test_upgrade_splices_to_the_chosen_app(h1_router: Router) -> None:
    for dev, server in ((ALICE, "local"), ([], "original")):
        client = await H1Client.open(h1_router.port)
        headers = [("Host", "x"), ("Connection", "Upgrade"), ("Upgrade", "echo"), *dev]
        await client.send(h11.Request(method="GET", target="/upgrade", headers=headers))
        async with asyncio.timeout(5):
            switched = await client.next_event()
        assert isinstance(switched, h11.InformationalResponse)
        assert switched.status_code == 101
        rest, _ = client.conn.trailing_data
        assert rest == b""
        client.writer.write(b"hello")
        await client.writer.drain()
        async with asyncio.timeout(5):
            assert await client.reader.readexactly(len(server) + 6) == f"{server}:hello".encode()
        client.writer.write_eof()
        async with asyncio.timeout(5):
            assert await client.reader.read() == b""  # both directions ended
        await client.close()


async def test_unreachable_local_app_gets_502_and_connection_goes_on(
    h1_original: H1Server, make_router: MakeRouter
) -> None:
    router = await make_router({None: h1_original.port, "local": await closed_port()})
    client = await H1Client.open(router.port)
    reply = await client.request("GET", "/x", ALICE)
    assert reply.status == 502
    assert b"the local app on the developer's machine did not answer" in reply.body
    assert (reply.header("content-type") or "").startswith("text/plain")
    reply = await client.request("GET", "/y")
    assert (reply.status, reply.server) == (200, "original")
    # With a request body (not read by anyone): still answered, the connection still usable.
    reply = await client.request("POST", "/z", ALICE, b"data" * 1000)
    assert reply.status == 502
    reply = await client.request("POST", "/w", [], iter([b"chunk"] * 3))
    assert reply.body == b"original POST /w 15"
    await client.close()


async def test_malformed_request_gets_400_and_close(h1_router: Router) -> None:
    reader, writer = await asyncio.open_connection(LOOPBACK, h1_router.port)
    writer.write(b"GET / HTTP/1.1\r\nHost x\r\n\r\n")  # header without colon
    await writer.drain()
    async with asyncio.timeout(5):
        answer = await reader.read()  # all of it, up to the close
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"connection: close" in answer.lower()
    writer.close()


async def test_kept_alive_upstream_closed_between_requests_is_reopened(
    h1_router: Router, h1_original: H1Server
) -> None:
    client = await H1Client.open(h1_router.port)
    assert (await client.request("GET", "/then-close")).server == "original"
    await h1_original.wait_all_closed()  # the app closed its idle keep-alive connection
    # Whether the router noticed the close before this request (it drops the connection) or
    # only on sending it (it retries the bodyless request), the request gets a new one.
    reply = await client.request("GET", "/again")
    assert reply.body == b"original GET /again 0"
    assert h1_router.connects[None] == 2
    await client.close()


async def test_upstreams_closed_when_the_client_leaves(
    h1_router: Router, h1_original: H1Server, h1_local: H1Server
) -> None:
    client = await H1Client.open(h1_router.port)
    await client.request("GET", "/a")
    await client.request("GET", "/b", ALICE)
    assert (h1_original.open, h1_local.open) == (1, 1)
    await client.close()
    await h1_router.wait_idle()
    await h1_original.wait_all_closed()
    await h1_local.wait_all_closed()
    assert h1_router.finished == 1


async def test_connect_tunnel_goes_to_the_chosen_app(h1_router: Router) -> None:
    client = await H1Client.open(h1_router.port)
    headers = [("Host", "db.internal:5432"), *ALICE]
    await client.send(h11.Request(method="CONNECT", target="db.internal:5432", headers=headers))
    async with asyncio.timeout(5):
        response = await client.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == 200
    client.writer.write(b"ping")
    async with asyncio.timeout(5):
        assert await client.reader.readexactly(10) == b"local:ping"
    await client.close()


async def test_app_dying_mid_response_cuts_the_client(h1_router: Router) -> None:
    client = await H1Client.open(h1_router.port)
    await client.send(
        h11.Request(method="GET", target="/die", headers=[("Host", "x")]), h11.EndOfMessage()
    )
    async with asyncio.timeout(5):
        assert isinstance(await client.next_event(), h11.Response)
        assert (await client.next_event()).data == b"only part"
        with pytest.raises((h11.RemoteProtocolError, ConnectionError)):
            await client.next_event()  # the connection ends before the promised 100 bytes
    await client.close()
