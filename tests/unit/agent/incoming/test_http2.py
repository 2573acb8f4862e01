"""HTTP/2 (prior knowledge) routing through real loopback h2 servers and an h2 client."""

from __future__ import annotations

import asyncio
import itertools

from hyperframe.frame import DataFrame, GoAwayFrame
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.agent.incoming.conftest import MakeRouter
from tests.unit.agent.incoming.http_peers import (
    H2Client,
    H2Server,
    Router,
    closed_port,
    h2_body,
)
from tether.agent.incoming.http2 import PREFACE, _FrameSplitter, _GoAway
from tether.agent.incoming.router import RequestHead

ALICE = [("x-dev", "alice")]
INTERNAL_ERROR = 2
REFUSED_STREAM = 7
CANCEL = 8


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


async def test_trailers_relayed(h2_router: Router) -> None:
    client = await H2Client.open(h2_router.port)
    local, original = await asyncio.gather(
        client.request("/trailers", headers=ALICE), client.request("/trailers")
    )
    assert local.trailers == [(b"x-trailer", b"local")]
    assert original.trailers == [(b"x-trailer", b"original")]
    assert h2_body(local) == "local GET /trailers 0"
    await client.close()


async def test_client_reset_reaches_the_upstream(h2_router: Router, h2_local: H2Server) -> None:
    client = await H2Client.open(h2_router.port)
    sid = await client.start("/hang", headers=ALICE)
    exchange = client.exchanges[sid]
    async with asyncio.timeout(5):
        await exchange.got_headers.wait()
    assert exchange.header(b"x-server") == b"local"
    client.reset(sid, CANCEL)
    async with asyncio.timeout(5):
        await h2_local.reset_seen.wait()
    assert h2_local.resets == [CANCEL]
    # The connection goes on.
    assert h2_body(await client.request("/after", headers=ALICE)) == "local GET /after 0"
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


async def test_request_head_given_to_decide(h2_original: H2Server, make_router: MakeRouter) -> None:
    seen: list[RequestHead] = []
    router = await make_router({None: h2_original.port}, seen=seen)
    client = await H2Client.open(router.port)
    await client.request("/p?q=1", method="PUT", headers=[("x-dev", "carol")], body=b"")
    await client.close()
    (head,) = seen
    assert head.http2
    assert (head.method, head.target) == ("PUT", "/p?q=1")
    assert head.headers == (("host", "example.test"), ("x-dev", "carol"))


async def test_upstream_stream_limit_is_honoured(
    h2_original: H2Server, make_router: MakeRouter
) -> None:
    limited = H2Server("local", max_streams=2)
    await limited.start()
    try:
        router = await make_router({None: h2_original.port, "local": limited.port})
        client = await H2Client.open(router.port)
        exchanges = await asyncio.gather(
            *(client.request(f"/slow?{i}", headers=ALICE) for i in range(8))
        )
        assert [e.status for e in exchanges] == [200] * 8
        assert limited.max_concurrent_seen <= 2
        assert router.connects["local"] == 1
        await client.close()
    finally:
        await limited.close()


async def test_upstream_goaway_then_new_connection(
    h2_router: Router, h2_original: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    assert (await client.request("/goaway")).status == 200
    await h2_original.wait_all_closed()  # the app sent GOAWAY and closed
    exchange = await client.request("/next")
    assert h2_body(exchange) == "original GET /next 0"
    assert h2_router.connects[None] == 2
    await client.close()


async def test_upstream_goaway_lets_running_streams_finish(
    h2_router: Router, h2_original: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    slow = await client.start("/slow-goaway")  # the app sends GOAWAY, then answers it
    await asyncio.sleep(0.02)
    exchange = await client.wait(slow)
    assert h2_body(exchange) == "original GET /slow-goaway 0"
    assert (await client.request("/next")).status == 200
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


async def test_upstream_reset_reaches_the_client(h2_router: Router) -> None:
    client = await H2Client.open(h2_router.port)
    calm, protocol = await asyncio.gather(
        client.request("/reset?code=11", headers=ALICE),  # ENHANCE_YOUR_CALM: passed on
        client.request("/reset?code=1"),  # PROTOCOL_ERROR: the upstream leg's business
    )
    assert calm.reset == 11
    assert protocol.reset == INTERNAL_ERROR
    assert (await client.request("/after")).status == 200
    await client.close()


async def test_streams_an_upstream_did_not_take_are_refused(
    h2_router: Router, h2_local: H2Server
) -> None:
    client = await H2Client.open(h2_router.port)
    slow = await client.start("/slow", headers=ALICE)  # upstream stream 1
    await asyncio.sleep(0.01)
    refused = await client.start("/goaway-low", headers=ALICE)  # upstream stream 3
    assert (await client.wait(refused)).reset == REFUSED_STREAM
    assert h2_body(await client.wait(slow)) == "local GET /slow 0"  # stream 1 finishes
    assert h2_body(await client.request("/new", headers=ALICE)) == "local GET /new 0"
    assert h2_router.connects["local"] == 2
    await client.close()


async def test_informational_responses_relayed(h2_router: Router) -> None:
    client = await H2Client.open(h2_router.port)
    exchange = await client.request("/early-hints", headers=ALICE)
    assert exchange.informational == [[(b":status", b"103"), (b"link", b"</s.css>")]]
    assert exchange.status == 200
    await client.close()


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


@given(st.data())
def test_frame_splitter_takes_out_goaway_frames(data: st.DataObject) -> None:
    frames: list[bytes | _GoAway] = []
    for i in range(data.draw(st.integers(1, 6))):
        if data.draw(st.booleans()):
            frames.append(_GoAway(last_stream_id=2 * i + 1, error_code=i))
        else:
            payload = data.draw(st.binary(max_size=40))
            frames.append(DataFrame(2 * i + 1, payload).serialize())
    wire = PREFACE + b"".join(
        GoAwayFrame(0, last_stream_id=f.last_stream_id, error_code=f.error_code).serialize()
        if isinstance(f, _GoAway)
        else f
        for f in frames
    )
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    splitter = _FrameSplitter(skip=len(PREFACE))
    out: list[bytes | _GoAway] = []
    for start, end in itertools.pairwise([0, *cuts, len(wire)]):
        out.extend(splitter.feed(wire[start:end]))
    passed = b"".join(x for x in out if isinstance(x, bytes))
    assert passed == PREFACE + b"".join(f for f in frames if isinstance(f, bytes))
    assert [x for x in out if isinstance(x, _GoAway)] == [
        f for f in frames if isinstance(f, _GoAway)
    ]


async def test_slow_upstream_slows_the_client_down(h2_router: Router, h2_local: H2Server) -> None:
    # The app never opens its window: the router may hold at most its own stream window
    # (256 KiB) besides what the app's window (64 KiB) let through; the client must stall.
    client = await H2Client.open(h2_router.port)
    sid = await client.start("/noread", method="POST", headers=ALICE, end=False)
    sending = asyncio.create_task(client.ep.send_body(sid, b"z" * (4 * 1024 * 1024)))
    await asyncio.sleep(0.3)
    assert not sending.done()
    assert 65535 < client.ep.sent[sid] <= 65535 + (1 << 18)
    client.reset(sid, CANCEL)
    sending.cancel()
    await asyncio.wait([sending])
    assert (await client.request("/after", headers=ALICE)).status == 200
    await client.close()
