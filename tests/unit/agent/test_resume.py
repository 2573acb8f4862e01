"""A session survives its transport: the agent holds it, the client resumes it over a new
connection, and an open stream carries on with every byte exactly once."""

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.unit.tunnel.test_tunnel import echo_server
from tether.agent.server import Agent
from tether.agent.target import Target
from tether.local.session.progress import Progress
from tether.local.session.reconnect import keep_connected
from tether.protocol import Connection, Role
from tether.protocol.messages import GetHostname
from tether.tunnel import StreamTransport, Tunnel, TunnelClosedError
from tether.tunnel.transport import Transport
from tether.tunnel.tunnel import ResumeRefusedError

SECRET = os.urandom(16)
WAIT = 10.0
__all__ = ["echo_server"]  # a fixture this module uses


class CuttableProxy:
    """A TCP proxy in front of the agent whose connections can all be cut at once, as an
    API-server restart cuts port-forwards."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.refuse = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if self.refuse:
            w.close()
            return
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [w, uw]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    def cut(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def connect(self) -> Transport:
        r, w = await asyncio.open_connection("127.0.0.1", self.port)
        return StreamTransport(r, w)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def agent() -> AsyncIterator[tuple[Agent, CuttableProxy]]:
    served = Agent(Target(None), SECRET, 30.0)
    ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(served.serve("127.0.0.1", 0, on_ready=ready.set_result))
    proxy = CuttableProxy(await ready)
    await proxy.start()
    yield served, proxy
    await proxy.close()
    served.stop()
    await asyncio.wait_for(task, WAIT)


async def _client(proxy: CuttableProxy, grace: float = 60.0) -> Tunnel:
    conn = Connection(Role.CLIENT, secret=SECRET, version="test", info={"resume_grace": grace})
    tunnel = Tunnel(conn, await proxy.connect())
    await tunnel.start()
    assert tunnel.resumable
    return tunnel


async def _suspended(tunnel: Tunnel) -> None:
    await asyncio.wait_for(tunnel.wait_interrupted(), WAIT)
    assert tunnel.suspended


async def test_an_open_stream_carries_on_across_a_cut(
    agent: tuple[Agent, CuttableProxy], echo_server: int
) -> None:
    served, proxy = agent
    client = await _client(proxy)
    try:
        stream = await client.open_stream("tcp", {"host": "127.0.0.1", "port": echo_server})
        await stream.write(b"before ")
        assert await asyncio.wait_for(stream.read(), WAIT) == b"before "
        proxy.cut()
        await _suspended(client)
        # Written while there is no transport: held, sent after the resume.
        await stream.write(b"during ")
        request = asyncio.ensure_future(client.call(GetHostname(), timeout=WAIT))
        await client.resume(await proxy.connect())
        await stream.write(b"after")
        got = b""
        while len(got) < len(b"during after"):
            got += await asyncio.wait_for(stream.read(), WAIT)
        assert got == b"during after"
        assert (await request).hostname == os.uname().nodename
        assert len(served.sessions) == 1
    finally:
        await client.close()


async def test_a_cut_the_agent_notices_first_is_resumed_too(
    agent: tuple[Agent, CuttableProxy],
) -> None:
    served, proxy = agent
    client = await _client(proxy)
    try:
        (session,) = served.sessions
        proxy.cut()
        await _suspended(client)
        await asyncio.wait_for(session.wait_interrupted(), WAIT)
        await client.resume(await proxy.connect())
        assert (await client.call(GetHostname(), timeout=WAIT)).hostname
        assert not session.suspended
    finally:
        await client.close()


async def test_a_session_the_agent_does_not_hold_is_refused(
    agent: tuple[Agent, CuttableProxy],
) -> None:
    served, proxy = agent
    client = await _client(proxy, grace=0)  # asked not to be held
    proxy.cut()
    await _suspended(client)
    await _until(lambda: not served.sessions)
    with pytest.raises(ResumeRefusedError, match="no longer holds this session"):
        await client.resume(await proxy.connect())
    assert client.closed


async def test_keep_connected_resumes_by_itself_and_says_so(
    agent: tuple[Agent, CuttableProxy],
) -> None:
    _, proxy = agent
    client = await _client(proxy)
    out = io.StringIO()

    async def alive() -> bool:
        return True

    keeper = asyncio.ensure_future(
        keep_connected(client, proxy.connect, 30, alive, Progress(1, out))
    )
    try:
        proxy.cut()
        await _suspended(client)
        assert await client.wait_connected(WAIT)
        assert (await client.call(GetHostname(), timeout=WAIT)).hostname
        text = out.getvalue()
        assert "connection to the agent lost" in text and "reconnecting..." in text
        assert "reconnected after" in text
    finally:
        keeper.cancel()
        await client.close()


async def _unreachable_ending(proxy: CuttableProxy, timeout: float, alive: bool) -> str:
    """Why a kept session ends when its agent can no longer be reached after a cut (the
    agent's pod reported alive or not)."""
    client = await _client(proxy)
    proxy.refuse = True

    async def agent_alive() -> bool:
        return alive

    keeper = asyncio.ensure_future(
        keep_connected(client, proxy.connect, timeout, agent_alive, Progress(0, io.StringIO()))
    )
    proxy.cut()
    why = await asyncio.wait_for(client.wait_closed(), WAIT)
    await keeper
    assert isinstance(why, TunnelClosedError)
    return str(why)


async def test_past_the_timeout_the_session_ends_with_one_reason(
    agent: tuple[Agent, CuttableProxy],
) -> None:
    why = await _unreachable_ending(agent[1], 0.5, alive=True)
    assert "connection to the agent lost" in why and "within 0.5 s" in why


async def test_a_gone_agent_pod_ends_the_session_at_once(
    agent: tuple[Agent, CuttableProxy],
) -> None:
    assert "cannot be resumed" in await _unreachable_ending(agent[1], 60, alive=False)


async def _until(condition: Callable[[], bool]) -> None:
    """Wait until `condition()` holds (it is about something another task does)."""
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)
