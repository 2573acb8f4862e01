"""Tests for tether.local.proxies.incoming.IncomingClient against a fake agent over a real
tunnel: what `incoming.subscribe` carries, refusals and warnings, and delivery of
agent-opened streams."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.unit.agent.incoming.http_peers import closed_port
from tests.unit.tunnel.test_tunnel import _pair
from tether.config.models import HttpFilterConfig, IncomingConfig
from tether.local.proxies.incoming import IncomingClient, IncomingError
from tether.local.session.progress import Progress
from tether.protocol import RemoteError
from tether.tunnel import RemoteOpError, Tunnel

TIMEOUT = 5.0


class FakeAgent:
    """Answers `incoming.subscribe` with canned warnings, or refuses ports in `busy`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.busy: set[int] = set()

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        assert op == "incoming.subscribe"
        self.requests.append(args)
        if args["port"] in self.busy:
            raise RemoteOpError(RemoteError("EBUSY", f"port {args['port']} is taken: x", 16))
        return {"warnings": self.warnings}


class Setup:
    def __init__(self, client: Tunnel, agent: Tunnel, fake: FakeAgent) -> None:
        self.agent = agent
        self.fake = fake
        self.out = io.StringIO()
        self.incoming = IncomingClient(client, IncomingConfig(), Progress(1, self.out), "me@host")

    @property
    def output(self) -> str:
        return self.out.getvalue()


@pytest.fixture
async def setup() -> AsyncIterator[Setup]:
    fake = FakeAgent()
    client, agent, server = await _pair(on_request=fake)
    try:
        yield Setup(client, agent, fake)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_subscribe_sends_the_config_and_prints_warnings(setup: Setup) -> None:
    setup.incoming.config = IncomingConfig(
        mode="steal",
        http_filter=HttpFilterConfig(header=["^x-dev: me$"]),
        steal_probes=True,
        override=True,
        reset_connections=False,
        port_map={80: 8080},
    )
    setup.fake.warnings = ["port 80: your filter overlaps theirs"]
    await setup.incoming.subscribe(80)
    assert setup.fake.requests == [
        {
            "port": 80,
            "mode": "steal",
            "filter": {
                "headers": ["^x-dev: me$"],
                "path": None,
                "methods": [],
                "mode": "all",
            },
            "steal_probes": True,
            "override": True,
            "reset": False,
            "who": "me@host",
        }
    ]
    assert setup.incoming.ports == {80: 8080}
    assert "warning: port 80: your filter overlaps theirs" in setup.output
    assert "incoming: steal requests matching the filter on port 80 -> localhost:8080" in (
        setup.output
    )
    # An explicit mirror carries no filter.
    await setup.incoming.subscribe(81, 9000, mode="mirror")
    assert setup.fake.requests[-1]["mode"] == "mirror"
    assert setup.fake.requests[-1]["filter"] is None


async def test_refusal_is_one_line_and_forgets_the_port(setup: Setup) -> None:
    setup.fake.busy.add(80)
    with pytest.raises(IncomingError, match=r"^cannot steal port 80: port 80 is taken: x$"):
        await setup.incoming.subscribe(80, 8080, mode="steal")
    assert setup.incoming.ports == {}

    # Subscribing as the app starts listening: a refusal is a warning, never an exception.
    setup.incoming.config = IncomingConfig(mode="steal")
    setup.incoming.subscribe_soon(80)
    setup.incoming.subscribe_soon(80)  # a second listen() on it: no second request
    warning = "warning: cannot steal port 80: port 80 is taken: x; the app gets no incoming"
    deadline = time.monotonic() + TIMEOUT
    while warning not in setup.output:
        assert time.monotonic() < deadline, setup.output
        await asyncio.sleep(0.01)
    assert len(setup.fake.requests) == 2


async def test_subscribe_soon_does_nothing_when_off(setup: Setup) -> None:
    setup.incoming.subscribe_soon(80)
    await setup.incoming.close()
    assert setup.fake.requests == []


async def test_streams_are_delivered_to_the_local_port(setup: Setup) -> None:
    async def upper(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data.upper())
            await w.drain()
        w.close()

    app = await asyncio.start_server(upper, "127.0.0.1", 0)
    local = int(app.sockets[0].getsockname()[1])
    down = await closed_port()
    try:
        await setup.incoming.subscribe(80, local, mode="mirror")
        await setup.incoming.subscribe(81, down, mode="mirror")

        stream = await setup.agent.open_stream("incoming", {"port": 80, "mode": "mirror"})
        await stream.write(b"hello")
        stream.write_eof()
        got = b""
        while chunk := await asyncio.wait_for(stream.read(), TIMEOUT):
            got += chunk
        assert got == b"HELLO"
        assert setup.incoming.delivered[80] == 1

        # Not subscribed here, or nothing listening locally: refused.
        with pytest.raises(RemoteOpError) as info:
            await setup.agent.open_stream("incoming", {"port": 82})
        assert info.value.error.code == "ECONNREFUSED"
        for _ in range(2):
            with pytest.raises(RemoteOpError) as info:
                await setup.agent.open_stream("incoming", {"port": 81})
            assert info.value.error.code == "ECONNREFUSED"
        assert setup.incoming.failed[down] == 2
        assert setup.output.count(f"nothing accepts on localhost:{down}") == 1  # warned once
        with pytest.raises(RemoteOpError) as info:
            await setup.agent.open_stream("tcp", {"port": 80})
        assert info.value.error.code == "EOPNOTSUPP"
    finally:
        app.close()
        await app.wait_closed()
