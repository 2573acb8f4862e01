"""The asyncio shell: requests, streams relayed to sockets, back-pressure, closing."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tether.protocol import Connection, RemoteError, Role
from tether.tunnel import RemoteOpError, StreamTransport, Tunnel, TunnelClosedError, TunnelStream

SECRET = b"k" * 16


async def _pair(
    on_request: Any = None, on_stream: Any = None, window: int = 65536, secret: bytes = SECRET
) -> tuple[Tunnel, Tunnel, asyncio.Server]:
    accepted: asyncio.Future[Tunnel] = asyncio.get_running_loop().create_future()

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        conn = Connection(Role.AGENT, secret=SECRET, version="t", window=window)
        tunnel = Tunnel(conn, StreamTransport(r, w), on_request=on_request, on_stream=on_stream)
        accepted.set_result(tunnel)
        with contextlib.suppress(TunnelClosedError):
            await tunnel.start()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    client = Tunnel(
        Connection(Role.CLIENT, secret=secret, version="t", window=window), StreamTransport(r, w)
    )
    await client.start()
    return client, await accepted, server


@pytest.fixture
async def echo_server() -> AsyncIterator[int]:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_requests_and_errors() -> None:
    async def on_request(op: str, args: dict[str, Any]) -> Any:
        if op == "add":
            return args["a"] + args["b"]
        if op == "missing":
            raise FileNotFoundError(2, "No such file or directory")
        raise RemoteOpError(RemoteError("ENOSYS", "nope", 38))

    client, _agent, server = await _pair(on_request=on_request)
    try:
        assert await client.request("add", {"a": 2, "b": 3}) == 5
        with pytest.raises(RemoteOpError) as info:
            await client.request("missing", {})
        assert info.value.error.code == "ENOENT" and info.value.error.errno == 2
        results = await asyncio.gather(
            *(client.request("add", {"a": i, "b": 1}) for i in range(50))
        )
        assert results == [i + 1 for i in range(50)]
        assert await client.ping() < 5
    finally:
        await client.close()
        server.close()


async def test_wrong_secret_fails_start() -> None:
    with pytest.raises(TunnelClosedError, match="secret"):
        await _pair(secret=b"bad")


async def test_stream_relays_to_a_socket_with_back_pressure(echo_server: int) -> None:
    async def on_stream(stream: TunnelStream) -> None:
        r, w = await asyncio.open_connection("127.0.0.1", stream.params["port"])
        stream.accept({"peer": "echo"})
        await stream.relay(r, w)

    client, _agent, server = await _pair(on_stream=on_stream, window=4096)
    try:
        blob = bytes(range(256)) * 2000  # 512 KB through a 4 KB window
        stream = await client.open_stream("tcp", {"port": echo_server})
        assert stream.info == {"peer": "echo"}

        async def send() -> None:
            await stream.write(blob)
            stream.write_eof()

        sender = asyncio.create_task(send())
        got = bytearray()
        while chunk := await stream.read():
            got += chunk
        await sender
        assert bytes(got) == blob
    finally:
        await client.close()
        server.close()


async def test_refused_stream_raises_and_close_fails_pending() -> None:
    async def on_stream(stream: TunnelStream) -> None:
        stream.reset("ECONNREFUSED", "connection refused", 111)

    client, agent, server = await _pair(on_stream=on_stream)
    try:
        with pytest.raises(RemoteOpError) as info:
            await client.open_stream("tcp", {"port": 1})
        assert info.value.error.errno == 111
    finally:
        await agent.close("agent exiting")
        assert isinstance(await client.wait_closed(), TunnelClosedError)
        with pytest.raises(TunnelClosedError):
            await client.request("x", {})
        server.close()


async def test_peer_hanging_up_closes_our_transport() -> None:
    # asyncio keeps a socket open after the peer's EOF: the tunnel must close it itself, or an
    # agent would keep one half-closed connection per session that ever left.
    client, agent, server = await _pair()
    try:
        await client.close()
        assert isinstance(await asyncio.wait_for(agent.wait_closed(), 5), TunnelClosedError)
        assert isinstance(agent.transport, StreamTransport)
        assert agent.transport._writer.is_closing()
    finally:
        server.close()
        await server.wait_closed()
