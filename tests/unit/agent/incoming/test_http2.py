"""HTTP/2 (prior knowledge) routing end to end: the asyncio shell over real loopback sockets,
with h2 servers and an h2 client. What the core decides is tested in test_http2_core."""

from __future__ import annotations

import asyncio

from tests.unit.agent.incoming.conftest import MakeRouter
from tests.unit.agent.incoming.http_peers import (
    H2Client,
    H2Server,
    Router,
    closed_port,
    h2_body,
)

ALICE = [("x-dev", "alice")]
INTERNAL_ERROR = 2


async def test_concurrent_streams_routed_each_on_its_own(
    h2_router: Router, h2_original: H2Server, h2_local: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    plans = []
    for i in range(40):
        stolen = i % 3 == 0
        path = f"/s{i}?n={i}"
        method = "POST" if i % 2 else "GET"
        body = b"b" * i if method == "POST" else None
        headers = ALICE if stolen else [("x-dev", "bob")]
        plans.append((path, method, body, "local" if stolen else "original", headers))
    exchanges = await asyncio.gather(
        *(
            client.request(path, method=method, headers=headers, body=body)
            for path, method, body, _, headers in plans
        )
    )
    for (path, method, body, server, _), exchange in zip(plans, exchanges, strict=True):
        assert exchange.status == 200
        assert exchange.header(b"x-server") == server.encode()
        assert h2_body(exchange) == f"{server} {method} {path} {len(body or b'')}"
    # One upstream connection per route key, shared by all streams.
    assert h2_router.connects == {None: 1, "local": 1}
    assert len(h2_local.paths) == 14
    await client.close()
    await h2_router.wait_idle()
    await h2_original.wait_all_closed()
    await h2_local.wait_all_closed()


async def test_large_bodies_both_ways_obey_flow_control(h2_router: Router) -> None:
    client = await H2Client.open(h2_router.port)
    up = bytes(range(251)) * 12000  # ~3 MiB, a pattern that shows reordering
    size = 5 * 1024 * 1024 + 7
    echo_local, echo_original, big = await asyncio.gather(
        client.request("/echo", method="POST", headers=ALICE, body=up, timeout=20),
        client.request("/echo", method="POST", body=up[::-1], timeout=20),
        client.request(f"/big?n={size}", headers=ALICE, timeout=20),
    )
    assert echo_local.header(b"x-server") == b"local"
    assert bytes(echo_local.body) == up
    assert bytes(echo_original.body) == up[::-1]
    assert bytes(big.body) == (bytes(range(256)) * (size // 256 + 1))[:size]
    await client.close()


async def test_unreachable_local_app_gets_502(
    h2_original: H2Server, make_router: MakeRouter
) -> None:
    router = await make_router({None: h2_original.port, "local": await closed_port()})
    client = await H2Client.open(router.port)
    failed, fine, failed_post = await asyncio.gather(
        client.request("/x", headers=ALICE),
        client.request("/y"),
        client.request("/z", method="POST", headers=ALICE, body=b"q" * 100000),
    )
    assert failed.status == 502
    assert failed.header(b"content-type") == b"text/plain; charset=utf-8"
    assert "the local app on the developer's machine did not answer" in h2_body(failed)
    assert (fine.status, h2_body(fine)) == (200, "original GET /y 0")
    assert failed_post.status == 502
    await client.close()


async def test_upstream_goaway_then_new_connection(
    h2_router: Router, h2_original: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    assert (await client.request("/goaway")).status == 200
    await h2_original.wait_all_closed()  # GOAWAY: the router closed the idle connection
    exchange = await client.request("/next")
    assert h2_body(exchange) == "original GET /next 0"
    assert h2_router.connects[None] == 2
    await client.close()


async def test_upstreams_closed_when_the_client_leaves(
    h2_router: Router, h2_original: H2Server, h2_local: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    await asyncio.gather(client.request("/a"), client.request("/b", headers=ALICE))
    assert (h2_original.open, h2_local.open) == (1, 1)
    await client.close()
    await h2_router.wait_idle()
    await h2_original.wait_all_closed()
    await h2_local.wait_all_closed()
    assert h2_router.finished == 1


async def test_upstream_connection_lost(h2_router: Router) -> None:
    client = await H2Client.open(h2_router.port)
    hanging = await client.start("/hang", headers=ALICE)
    async with asyncio.timeout(5):
        await client.exchanges[hanging].got_headers.wait()
    dropped = await client.request("/drop", headers=ALICE)
    # No answer yet: we answer 502. Answer begun: the stream can only be reset.
    assert dropped.status == 502
    assert "did not answer" in h2_body(dropped)
    assert (await client.wait(hanging)).reset == INTERNAL_ERROR
    assert h2_body(await client.request("/again", headers=ALICE)) == "local GET /again 0"
    await client.close()


async def test_client_goaway_ends_the_connection(h2_router: Router, h2_original: H2Server) -> None:
    client = await H2Client.open(h2_router.port)
    assert (await client.request("/a")).status == 200
    client.ep.conn.close_connection()  # GOAWAY, connection left open
    client.ep.flush()
    async with asyncio.timeout(5):
        await client.ep.closed.wait()  # the router finished and closed it
    await h2_original.wait_all_closed()
    await client.close()
