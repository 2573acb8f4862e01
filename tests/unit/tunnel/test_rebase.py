"""A tunnel that follows its peer: after a GOAWAY it was told to follow, it waits, and a
rebase carries it on with another peer (what lived on the old one is reset)."""

import asyncio
import errno
from typing import Any

import pytest

from tests.unit.tunnel.test_tunnel import SECRET, _pair
from tether.protocol import Connection, Role
from tether.protocol.events import TARGET_GONE
from tether.tunnel import StreamTransport, Tunnel, TunnelClosedError
from tether.tunnel.stream import StreamResetError
from tether.tunnel.tunnel import PeerMovedError

WAIT = 10.0


async def _answering(name: str) -> tuple[Tunnel, Tunnel, asyncio.Server]:
    async def on_request(op: str, args: dict[str, Any]) -> Any:
        return name

    async def on_stream(stream: Any) -> None:
        stream.accept()
        await asyncio.Event().wait()  # open until the tunnel goes

    return await _pair(on_request=on_request, on_stream=on_stream)


async def _agent_server(name: str) -> asyncio.Server:
    """An agent end answering every request with `name`, for any number of clients."""
    tunnels: list[Tunnel] = []

    async def on_request(op: str, args: dict[str, Any]) -> Any:
        return name

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = Connection(Role.AGENT, secret=SECRET, version="t")
        tunnel = Tunnel(conn, StreamTransport(r, w), on_request=on_request)
        tunnels.append(tunnel)
        await tunnel.start()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


async def test_a_followed_goaway_suspends_and_a_rebase_carries_on() -> None:
    client, first, server = await _answering("first")
    try:
        client.follow_codes = frozenset({TARGET_GONE})
        assert await client.request("who", {}) == "first"
        stream = await client.open_stream("tcp", {})
        await first.close("the target container exited", TARGET_GONE)
        await asyncio.wait_for(client.wait_interrupted(), WAIT)
        assert client.suspended and not client.closed
        assert isinstance(client.lost_because, PeerMovedError)
        # Another peer: the tunnel object (and whoever holds it) carries on with it.
        server2 = await _agent_server("second")
        port = server2.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = Connection(Role.CLIENT, secret=SECRET, version="t")
        await client.rebase(conn, StreamTransport(reader, writer), timeout=WAIT)
        assert not client.suspended
        assert await client.request("who", {}) == "second"
        # The old stream could not move: it was reset.
        with pytest.raises(StreamResetError) as info:
            await stream.read()
        assert info.value.error.errno == errno.ECONNRESET
        server2.close()
    finally:
        await client.close()
        server.close()


async def test_a_goaway_not_followed_ends_the_tunnel() -> None:
    client, agent, server = await _answering("only")
    try:
        await agent.close("the target container exited", TARGET_GONE)
        why = await asyncio.wait_for(client.wait_closed(), WAIT)
        assert isinstance(why, TunnelClosedError) and not isinstance(why, PeerMovedError)
        assert client.peer_closed
    finally:
        server.close()
