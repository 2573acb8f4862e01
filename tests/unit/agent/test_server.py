"""The agent's server end to end in-process (targetless): handshake, ops, streams, idle exit."""

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tether.agent.server import Agent
from tether.agent.target import Target
from tether.protocol import Connection, Role
from tether.protocol.messages import FsClose, FsOpen, FsRead, FsStat, GetEnv, GetHostname
from tether.tunnel import RemoteOpError, StreamTransport, Tunnel, TunnelClosedError

SECRET = os.urandom(16)


async def _start_agent(idle: float = 30.0) -> tuple[Agent, int, asyncio.Task[None]]:
    agent = Agent(Target(None), SECRET, idle)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(agent.serve("127.0.0.1", 0, on_ready=ready.set_result))
    return agent, await ready, task


async def _client(port: int, secret: bytes = SECRET) -> Tunnel:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    tunnel = Tunnel(Connection(Role.CLIENT, secret=secret, version="test"), StreamTransport(r, w))
    await tunnel.start()
    return tunnel


@pytest.fixture
async def served() -> AsyncIterator[tuple[Agent, int]]:
    agent, port, task = await _start_agent()
    yield agent, port
    agent.stop()
    await asyncio.wait_for(task, 10)


async def test_env_hostname_and_files(served: tuple[Agent, int], tmp_path: Path) -> None:
    _, port = served
    os.environ["TETHER_TEST_VAR"] = "yes"
    client = await _client(port)
    try:
        env = (await client.call(GetEnv(include=["TETHER_TEST_*"]))).env
        assert env == {"TETHER_TEST_VAR": "yes"}
        assert (await client.call(GetHostname())).hostname == os.uname().nodename
        f = tmp_path / "hello.txt"
        f.write_text("hello agent\n")
        opened = await client.call(FsOpen(str(f), os.O_RDONLY))
        assert opened.stat["st_size"] == 12
        assert (await client.call(FsRead(opened.handle, 6, 100))).data == b"agent\n"
        await client.call(FsClose(opened.handle))
        with pytest.raises(RemoteOpError) as info:
            await client.call(FsStat(str(tmp_path / "missing")))
        assert info.value.error.code == "ENOENT"
        with pytest.raises(RemoteOpError) as info:
            await client.request("no.such.op", {})
        assert info.value.error.code == "ENOSYS"
        # A request outside the vocabulary's types is refused, not half-run.
        with pytest.raises(RemoteOpError) as info:
            await client.request("fs.read", {"handle": "1", "offset": 0, "size": 1})
        assert info.value.error.code == "EINVAL"
    finally:
        await client.close()


async def test_tcp_stream_to_a_local_server(served: tuple[Agent, int]) -> None:
    _, port = served

    async def hello(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(b"hi " + await r.readline())
        await w.drain()
        w.close()

    server = await asyncio.start_server(hello, "127.0.0.1", 0)
    target_port = server.sockets[0].getsockname()[1]
    client = await _client(port)
    try:
        stream = await client.open_stream("tcp", {"host": "127.0.0.1", "port": target_port})
        assert stream.info == {"ip": "127.0.0.1", "port": target_port}
        await stream.write(b"there\n")
        got = b""
        while chunk := await stream.read():
            got += chunk
        assert got == b"hi there\n"
        server.close()
        await server.wait_closed()
        with pytest.raises(RemoteOpError) as info:
            await client.open_stream("tcp", {"host": "127.0.0.1", "port": target_port})
        assert info.value.error.code == "ECONNREFUSED"
    finally:
        await client.close()


async def test_wrong_secret_is_dropped(served: tuple[Agent, int]) -> None:
    agent, port = served
    with pytest.raises(TunnelClosedError):
        await _client(port, secret=b"x" * 16)
    assert not agent.sessions


async def test_agent_exits_when_idle_after_last_client() -> None:
    now = [0.0]
    agent = Agent(Target(None), SECRET, idle_timeout=30, clock=lambda: now[0], tick=0.01)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(agent.serve("127.0.0.1", 0, on_ready=ready.set_result))
    client = await _client(await ready)
    now[0] = 3600.0  # an hour later, a connected client still keeps it alive
    assert agent.exit_reason() is None
    assert not task.done()
    await client.close()

    # Idle from when the client left: exits once the clock passes the timeout.
    async def no_sessions() -> None:
        while agent.sessions:  # noqa: ASYNC110 (the agent's own state: no event to wait on)
            await asyncio.sleep(0)

    await asyncio.wait_for(no_sessions(), 5)
    assert agent.exit_reason() is None
    now[0] += 31
    assert agent.exit_reason() == "no client for 30 s"
    await asyncio.wait_for(task, 5)
