"""Incoming traffic end to end without a cluster (root only).

A throwaway "pod" network namespace runs an HTTP/1.1 keep-alive app (it answers as "pod"); a
client namespace joined to it by a veth pair sends it requests, so they arrive through
PREROUTING like a pod's real traffic. A real Agent serves the pod (its IncomingManager with the
real Redirector, its ops, its session handling), and each developer session is a real tunnel to
it on loopback with an IncomingClient that delivers to an HTTP server on this host's loopback
(answering with the session's name).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.unit.agent.incoming.http_peers import H1Client, H1Server, Reply, closed_port
from tests.unit.agent.incoming.throwaway_netns import TARGET_ADDR, Netns, need_root, netns_pair
from tests.unit.tunnel.test_tunnel import _pair
from tether.agent.incoming import sockopts
from tether.agent.incoming.manager import (
    MIRROR_QUEUE_LIMIT,
    IncomingManager,
    MirrorCopy,
    SessionRef,
    Subscription,
)
from tether.agent.iptables import RedirectError
from tether.agent.netns import NetnsExecutor
from tether.agent.server import Agent
from tether.agent.target import Target
from tether.config.models import HttpFilterConfig, IncomingConfig
from tether.local.proxies.incoming import IncomingClient, IncomingError
from tether.local.session.progress import Progress
from tether.protocol import Connection, Role
from tether.protocol.messages import SessionLeave
from tether.tunnel import (
    RemoteOpError,
    StreamTransport,
    Tunnel,
    TunnelClosedError,
    TunnelStream,
)

SECRET = b"m" * 16
TIMEOUT = 5.0
PROBE = ("User-Agent", "kube-probe/1.20")


def _dev(name: str) -> HttpFilterConfig:
    return HttpFilterConfig(header=[f"^x-dev: {name}$"])


async def eventually(check: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """Wait until `check()` holds (it is about something another task does)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        await asyncio.sleep(0.01)


class Session:
    """One developer session: a tunnel to the agent and its IncomingClient."""

    def __init__(self, who: str, tunnel: Tunnel) -> None:
        self.who = who
        self.tunnel = tunnel
        self.out = io.StringIO()
        self.incoming = IncomingClient(tunnel, IncomingConfig(), Progress(1, self.out), who)

    @property
    def output(self) -> str:
        """What the session told its user (progress lines and warnings)."""
        return self.out.getvalue()

    async def subscribe(self, port: int, local: int, **config: Any) -> None:
        """Subscribe `port` as `tether` would with an `incoming` config of `config`."""
        self.incoming.config = IncomingConfig(**config)
        await self.incoming.subscribe(port, local)

    async def leave(self) -> None:
        await self.incoming.close()
        await self.tunnel.close()


class World:
    """The pod, its client, the agent, and the sessions and local apps of one test."""

    def __init__(self, pod: Netns, client: Netns) -> None:
        self.pod = pod
        self.client = client
        self.app = H1Server("pod")
        self.port = 0
        self.agent: Agent | None = None
        self.serve_task: asyncio.Task[None] | None = None
        self.agent_port = 0
        self.client_ex = NetnsExecutor(client.path, max_workers=4)
        self.sessions: list[Session] = []
        self.local_apps: list[H1Server] = []
        self.clients: list[H1Client] = []

    async def start(self) -> None:
        with NetnsExecutor(self.pod.path, max_workers=1) as pod_ex:
            self.port = await self.app.start(await pod_ex.listen_tcp())
        self.agent = Agent(Target(self.pod.pid), SECRET, idle_timeout=60)
        ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.serve_task = asyncio.create_task(
            self.agent.serve("127.0.0.1", 0, on_ready=ready.set_result)
        )
        self.agent_port = await asyncio.wait_for(ready, TIMEOUT)

    @property
    def manager(self) -> IncomingManager:
        assert self.agent is not None and self.agent.incoming is not None
        return self.agent.incoming

    async def tunnel(self, grace: float = 0) -> Tunnel:
        """A session's tunnel to the agent, handshake done."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.agent_port)
        conn = Connection(Role.CLIENT, secret=SECRET, version="test", info={"resume_grace": grace})
        tunnel = Tunnel(conn, StreamTransport(reader, writer))
        try:
            await tunnel.start(timeout=TIMEOUT)
        except BaseException:
            await tunnel.transport.close()
            raise
        return tunnel

    async def join(self, who: str, grace: float = 0) -> Session:
        """A session; with `grace`, one the agent holds that long after a cut."""
        session = Session(who, await self.tunnel(grace))
        self.sessions.append(session)
        return session

    async def reconnect(self, tunnel: Tunnel) -> None:
        """Resume a suspended tunnel over a new connection to the agent."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.agent_port)
        await tunnel.resume(StreamTransport(reader, writer), timeout=TIMEOUT)

    async def local_app(self, name: str) -> H1Server:
        """An HTTP server on this host's loopback, answering as `name`."""
        server = H1Server(name)
        await server.start()
        self.local_apps.append(server)
        return server

    async def connect(self, in_pod: bool = False) -> H1Client:
        """A connection from the client namespace to the pod app's port (or, `in_pod`, from
        the pod's own namespace over loopback: redirected by OUTPUT, not PREROUTING)."""
        if in_pod:
            with NetnsExecutor(self.pod.path, max_workers=1) as pod_ex:
                sock = await pod_ex.open_tcp("127.0.0.1", self.port, TIMEOUT)
        else:
            sock = await self.client_ex.open_tcp(TARGET_ADDR, self.port, TIMEOUT)
        reader, writer = await asyncio.open_connection(sock=sock)
        client = H1Client(reader, writer)
        self.clients.append(client)
        return client

    async def ask(self, *headers: tuple[str, str], target: str = "/") -> Reply:
        """One request on a connection of its own."""
        client = await self.connect()
        try:
            return await asyncio.wait_for(client.request("GET", target, headers), TIMEOUT)
        finally:
            await client.close()

    def iptables(self) -> str:
        return self.pod.iptables_save()

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for session in self.sessions:
            await session.leave()
        if self.agent is not None and self.serve_task is not None:
            self.agent.stop()
            await asyncio.wait_for(self.serve_task, 10)
        for server in [*self.local_apps, self.app]:
            await server.close()
        self.client_ex.shutdown()


@pytest.fixture
async def world() -> AsyncIterator[World]:
    need_root()
    with netns_pair() as (pod, client):
        w = World(pod, client)
        try:
            await w.start()
            yield w
            await w.close()
            # The agent removed every rule of its own when it exited.
            assert "TETHER" not in w.iptables()
        finally:
            with contextlib.suppress(Exception):
                await w.close()


async def _request(client: H1Client, target: str, *headers: tuple[str, str]) -> Reply:
    return await asyncio.wait_for(client.request("GET", target, headers), TIMEOUT)


# -- mirror ----------------------------------------------------------------------------------


@pytest.mark.root
async def test_mirror_copies_every_request_to_the_local_app(world: World) -> None:
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    await alice.subscribe(world.port, alice_app.port, mode="mirror")
    assert f"incoming: mirror port {world.port} -> localhost:{alice_app.port}" in alice.output
    assert "TETHER-PREROUTING" in world.iptables()

    client = await world.connect()
    for i in range(3):
        reply = await _request(client, f"/r{i}")
        assert (reply.server, reply.body) == ("pod", f"pod GET /r{i} 0".encode())
    reply = await asyncio.wait_for(client.request("POST", "/post", body=b"hello"), TIMEOUT)
    assert reply.body == b"pod POST /post 5"
    await client.close()

    expected = ["/r0", "/r1", "/r2", "/post"]
    await eventually(lambda: len(alice_app.seen) == len(expected))
    assert [s.target for s in alice_app.seen] == expected
    assert alice_app.seen[-1].body == b"hello"
    assert alice_app.accepted == 1  # one copy per client connection
    assert [s.target for s in world.app.seen] == expected

    # The pod's own clients (over loopback) are mirrored too.
    inside = await world.connect(in_pod=True)
    assert (await _request(inside, "/inside")).server == "pod"
    await inside.close()
    await eventually(lambda: [s.target for s in alice_app.seen][-1:] == ["/inside"])
    assert "warning" not in alice.output


@pytest.mark.root
async def test_mirror_to_a_local_app_that_is_down(world: World) -> None:
    down = await closed_port()
    bob_app = await world.local_app("bob")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, down, mode="mirror")
    await bob.subscribe(world.port, bob_app.port, mode="mirror")

    for _ in range(2):
        client = await world.connect()
        for i in range(3):
            assert (await _request(client, f"/r{i}")).server == "pod"
        await client.close()
    await eventually(lambda: alice.incoming.failed[down] == 2)
    assert f"nothing accepts on localhost:{down}" in alice.output
    # The other mirror got everything.
    await eventually(lambda: len(bob_app.seen) == 6)
    assert len(world.app.seen) == 6


@pytest.mark.root
async def test_mirror_that_never_reads_does_not_slow_the_real_path(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    release = asyncio.Event()
    stuck: list[asyncio.StreamWriter] = []

    async def never_reads(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        stuck.append(w)
        await release.wait()
        w.transport.abort()

    # A small receive buffer: the app's connection fills up (and the copy's tunnel stream
    # runs out of credit) after a few MiB, long before the client is done.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    server = await asyncio.start_server(never_reads, sock=listener)
    try:
        alice = await world.join("alice")
        await alice.subscribe(world.port, server.sockets[0].getsockname()[1], mode="mirror")
        blob = os.urandom(1 << 20) * 32
        client = await world.connect()
        started = time.monotonic()
        with caplog.at_level(logging.INFO, logger="tether.agent.incoming"):
            reply = await asyncio.wait_for(client.request("POST", "/sha", body=blob), 20)
        elapsed = time.monotonic() - started
        assert reply.body == f"pod {len(blob)} {hashlib.sha256(blob).hexdigest()}".encode()
        # The copy (tunnel window + socket buffers + queue: some MiB) was given up on...
        assert "mirror copy to alice fell behind: dropped" in caplog.text
        assert stuck
        # ... and the real path never waited for it: 32 MiB take well under a second here.
        assert elapsed < 5, f"32 MiB took {elapsed:.1f} s"
        # The connection goes on.
        assert (await _request(client, "/after")).server == "pod"
        # The dropped copy's stream ended at once (though its write waited for credit that
        # never comes), so the stuck app holds no tunnel stream, and the agent no buffer.
        await eventually(lambda: alice.tunnel.conn.stream_ids() == [], timeout=2)
    finally:
        release.set()
        server.close()


async def test_dropped_mirror_copy_lets_go_of_a_stream_that_has_no_credit() -> None:
    """No namespace needed: a MirrorCopy over a real tunnel whose peer accepts the copy's
    stream and never reads it."""
    accepted: list[TunnelStream] = []

    async def stuck(stream: TunnelStream) -> None:
        accepted.append(stream)
        stream.accept({})
        await asyncio.Event().wait()  # until the tunnel closes

    client, agent, server = await _pair(window=65536)
    client.set_stream_handler(stuck)
    try:
        sub = Subscription(SessionRef(agent, 1, "alice"), 80, "mirror", None, False)
        copy = MirrorCopy(sub, {"port": 80, "mode": "mirror"})
        copy.feed(b"x" * 65536)
        copy.feed(b"x" * 1000)
        # Everything taken from the queue, one window's worth sent: the copy now waits for
        # credit that never comes.
        await eventually(lambda: bool(accepted) and copy._queued == 0)
        for _ in range(20):  # every chance to end, were it going to
            await asyncio.sleep(0)
        assert not copy._task.done()
        copy.feed(b"y" * (MIRROR_QUEUE_LIMIT + 1))  # too much: dropped
        await eventually(lambda: copy._task.done() and accepted[0].is_reset, timeout=2)
        assert agent.conn.stream_ids() == []
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_mirror_copy_that_cannot_reach_its_session_keeps_nothing() -> None:
    client, agent, server = await _pair()  # the client refuses the copy's stream
    try:
        sub = Subscription(SessionRef(agent, 1, "alice"), 80, "mirror", None, False)
        copy = MirrorCopy(sub, {"port": 80, "mode": "mirror"})
        await eventually(copy._task.done)
        for _ in range(10):
            copy.feed(b"x" * 65536)  # the client goes on sending; its copy goes nowhere
        assert not copy._chunks
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


# -- unfiltered steal ------------------------------------------------------------------------


@pytest.mark.root
async def test_unfiltered_steal_takes_connections_and_excludes_others(world: World) -> None:
    alice_app = await world.local_app("alice")
    bob_app = await world.local_app("bob")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    assert f"incoming: steal port {world.port}" in alice.output

    kept = await world.connect()
    for i in range(2):
        reply = await _request(kept, f"/k{i}")
        assert (reply.server, reply.body) == ("alice", f"alice GET /k{i} 0".encode())
    inside = await world.connect(in_pod=True)
    assert (await _request(inside, "/inside")).server == "alice"
    await inside.close()
    # Probes keep reaching the pod's app.
    assert (await world.ask(PROBE)).server == "pod"
    assert [s.target for s in world.app.seen] == ["/"]

    # Another unfiltered steal is refused, naming the holder and the way out.
    with pytest.raises(RemoteOpError) as info:
        await bob.tunnel.request(
            "incoming.subscribe", {"port": world.port, "mode": "steal", "who": "bob"}
        )
    assert (info.value.error.code, info.value.error.errno) == ("EBUSY", 16)
    assert f"port {world.port} is taken: alice steals (since " in info.value.error.message
    assert "pass --override to take it" in info.value.error.message
    with pytest.raises(IncomingError, match=r"is taken: alice steals .*--override"):
        await bob.subscribe(world.port, bob_app.port, mode="steal")
    assert bob.incoming.ports == {}
    assert (await world.ask()).server == "alice"

    # With override, bob takes the port: new connections are his, and alice is told (her
    # open connection keeps going to her: a connection's fate is decided on arrival).
    await bob.subscribe(world.port, bob_app.port, mode="steal", override=True)
    assert f"warning: took port {world.port} from alice steals (since " in bob.output
    assert (await world.ask()).server == "bob"
    assert (await _request(kept, "/k2")).server == "alice"
    await eventually(lambda: "taken over by bob" in alice.output)
    assert f"warning: port {world.port} was taken over by bob (--override)" in alice.output
    assert world.port not in alice.incoming.ports
    listed = world.manager.subscriptions()
    assert [(s.session.who, s.mode, s.filter) for s in listed] == [("bob", "steal", None)]

    # Probes too, once asked for (a subscription of the same session replaces the old one).
    assert (await world.ask(PROBE)).server == "pod"
    await bob.subscribe(world.port, bob_app.port, mode="steal", steal_probes=True)
    assert (await world.ask(PROBE)).server == "bob"
    assert [s.target for s in world.app.seen] == ["/", "/"]


def _cut(session: Session) -> None:
    """Kill the session's transport under it, as a restarting API server does."""
    transport = session.tunnel.transport
    assert isinstance(transport, StreamTransport)
    transport._writer.transport.abort()


@pytest.mark.root
async def test_a_session_away_gives_the_traffic_back_and_keeps_its_lock(world: World) -> None:
    alice_app = await world.local_app("alice")
    bob_app = await world.local_app("bob")
    alice = await world.join("alice", grace=60)
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    stolen = await world.connect()
    assert (await _request(stolen, "/before")).server == "alice"

    # The transport dies under alice: the agent holds her session and the pod serves.
    _cut(alice)
    await asyncio.wait_for(alice.tunnel.wait_interrupted(), TIMEOUT)
    await eventually(lambda: all(s.session.suspended for s in world.manager.subscriptions()))
    assert (await world.ask()).server == "pod"
    # Her unfiltered steal still holds the port for her.
    with pytest.raises(IncomingError, match=r"is taken: alice steals"):
        await bob.subscribe(world.port, bob_app.port, mode="steal")

    # Back: new connections are hers again, and the one she had kept going through the cut.
    await world.reconnect(alice.tunnel)
    await eventually(lambda: not any(s.session.suspended for s in world.manager.subscriptions()))
    assert (await world.ask()).server == "alice"
    assert (await _request(stolen, "/after")).server == "alice"


@pytest.mark.root
async def test_a_filtered_steal_away_and_back_on_one_keep_alive_connection(world: World) -> None:
    alice_app = await world.local_app("alice")
    alice = await world.join("alice", grace=60)
    await alice.subscribe(world.port, alice_app.port, mode="steal", http_filter=_dev("alice"))
    client = await world.connect()
    assert (await _request(client, "/1", ("X-Dev", "alice"))).server == "alice"
    _cut(alice)
    await eventually(lambda: all(s.session.suspended for s in world.manager.subscriptions()))
    # While she is away her requests are the pod's, on the same connection and on new ones.
    assert (await _request(client, "/2", ("X-Dev", "alice"))).server == "pod"
    during = await world.connect()
    assert (await _request(during, "/3", ("X-Dev", "alice"))).server == "pod"
    await world.reconnect(alice.tunnel)
    await eventually(lambda: not any(s.session.suspended for s in world.manager.subscriptions()))
    assert (await _request(client, "/4", ("X-Dev", "alice"))).server == "alice"
    assert (await _request(during, "/5", ("X-Dev", "alice"))).server == "alice"
    assert [s.target for s in world.app.seen] == ["/2", "/3"]


# -- filtered steals -------------------------------------------------------------------------


@pytest.mark.root
async def test_filtered_steals_of_two_sessions_route_each_request(world: World) -> None:
    apps = {name: await world.local_app(name) for name in ("alice", "bob", "carol", "dave")}
    alice, bob, carol, dave = [await world.join(name) for name in apps]
    await alice.subscribe(world.port, apps["alice"].port, mode="steal", http_filter=_dev("alice"))
    await bob.subscribe(world.port, apps["bob"].port, mode="steal", http_filter=_dev("bob"))
    assert "warning" not in alice.output + bob.output  # one header, two values: no overlap
    assert "steal requests matching the filter on port" in bob.output

    client = await world.connect()
    for dev in ("alice", "bob", None, "bob", "alice", None):
        headers = [("X-Dev", dev)] if dev else []
        reply = await _request(client, f"/{dev}", *headers)
        assert (reply.server, reply.body) == (dev or "pod", f"{dev or 'pod'} GET /{dev} 0".encode())
    # Probes are not stolen by a filter either.
    assert (await _request(client, "/probe", ("X-Dev", "alice"), PROBE)).server == "pod"
    assert [s.target for s in world.app.seen] == ["/None", "/None", "/probe"]
    # One upstream connection per session, reused for its requests.
    assert (apps["alice"].accepted, apps["bob"].accepted) == (1, 1)

    # A filter that can match the same requests as others: granted, with a warning.
    await carol.subscribe(
        world.port, apps["carol"].port, mode="steal", http_filter=HttpFilterConfig(path="^/api")
    )
    assert f"warning: port {world.port}: your filter path '^/api' overlaps alice" in carol.output
    assert "overlaps bob" in carol.output
    # First come, first served, on the connection that is already open.
    assert (await _request(client, "/api/x")).server == "carol"
    assert (await _request(client, "/api/x", ("X-Dev", "bob"))).server == "bob"

    # An unfiltered steal over filtered ones is refused; theirs would come to it.
    with pytest.raises(IncomingError, match=r"alice steals requests matching .*--override"):
        await dave.subscribe(world.port, apps["dave"].port, mode="steal")
    assert "their requests would come to you" in await _refusal(dave, world.port)
    await client.close()


async def _refusal(session: Session, port: int) -> str:
    with pytest.raises(RemoteOpError) as info:
        await session.tunnel.request("incoming.subscribe", {"port": port, "mode": "steal"})
    assert info.value.error.code == "EBUSY"
    return info.value.error.message


@pytest.mark.root
async def test_filtered_steal_beside_an_unfiltered_one_warns(world: World) -> None:
    alice_app = await world.local_app("alice")
    bob_app = await world.local_app("bob")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    await bob.subscribe(world.port, bob_app.port, mode="steal", http_filter=_dev("bob"))
    assert (
        f"warning: port {world.port}: alice steals (since " in bob.output
        and "without a filter; your filter gets nothing until they leave" in bob.output
    )
    assert (await world.ask(("X-Dev", "bob"))).server == "alice"

    # alice leaves: her whole steal goes, and bob's filter gets its requests.
    await alice.tunnel.close()
    await eventually(lambda: [s.session.who for s in world.manager.subscriptions()] == ["bob"])
    assert (await world.ask(("X-Dev", "bob"))).server == "bob"
    assert (await world.ask()).server == "pod"


# -- resetting the app's connections when a steal starts ---------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("reset", [True, False])
async def test_steal_start_resets_open_connections(world: World, reset: bool) -> None:
    alice_app = await world.local_app("alice")
    bob_app = await world.local_app("bob")
    alice = await world.join("alice")
    bob = await world.join("bob")
    direct = await world.connect()  # straight to the app: nothing is redirected yet
    assert (await _request(direct, "/d0")).server == "pod"
    await bob.subscribe(world.port, bob_app.port, mode="mirror")
    # Redirecting the port leaves open connections alone (only SYNs are redirected).
    assert (await _request(direct, "/d1")).server == "pod"
    relayed = await world.connect()  # through the agent, which relays it to the app
    assert (await _request(relayed, "/r0")).server == "pod"

    await alice.subscribe(world.port, alice_app.port, mode="steal", reset_connections=reset)
    if reset:
        # The app's own connection is reset, so its client reconnects and gets redirected.
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(direct.reader.read(1), TIMEOUT)
    else:
        assert (await _request(direct, "/d2")).server == "pod"
    # The agent's own connection to the app is spared either way.
    assert (await _request(relayed, "/r1")).server == "pod"
    assert (await world.ask()).server == "alice"


@pytest.mark.root
async def test_steal_without_ss_warns_and_keeps_the_port_serving(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An agent image without iproute2: resetting the open connections fails, the steal stands.
    monkeypatch.setattr(sockopts, "find_tool", lambda name: None)
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    direct = await world.connect()
    assert (await _request(direct, "/d0")).server == "pod"
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    assert f"warning: port {world.port}: new connections are stolen, but the ones" in alice.output
    assert "ss (iproute2) is not installed" in alice.output
    assert world.port in alice.incoming.ports
    # New connections reach the session; the one already open stays with the pod.
    for _ in range(3):
        assert (await world.ask()).server == "alice"
    assert (await _request(direct, "/d1")).server == "pod"


@pytest.mark.root
async def test_a_port_that_cannot_be_redirected_leaves_no_rule(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(port: int, listen_port: int) -> None:
        raise RedirectError("iptables-nft-restore exited with status 4: no nat table")

    monkeypatch.setattr(world.manager.redirector, "add", refuse)
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    with pytest.raises(IncomingError, match=r"cannot redirect port \d+: .*no nat table"):
        await alice.subscribe(world.port, alice_app.port, mode="steal")
    assert "TETHER" not in world.iptables()
    assert world.manager.ports == {}
    assert (await world.ask()).server == "pod"


@pytest.mark.root
async def test_a_host_network_target_is_refused_before_any_rule(world: World) -> None:
    world.manager.refusal = "the target shares the node's network namespace (a hostNetwork pod)"
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    with pytest.raises(IncomingError, match=r"cannot steal port \d+: .*hostNetwork"):
        await alice.subscribe(world.port, alice_app.port, mode="steal")
    assert "TETHER" not in world.iptables()
    assert (await world.ask()).server == "pod"


# -- sessions leaving, the agent closing -------------------------------------------------------


@pytest.mark.root
@pytest.mark.parametrize("backend", ["nft", "legacy"])
async def test_sessions_that_drop_take_their_rules(world: World, backend: str) -> None:
    # A user-defined chain makes the pod's netns use `backend`, as the pod's own rules would.
    world.pod.run(f"iptables-{backend}", "-t", "filter", "-N", "APP-CHAIN")
    alice_app = await world.local_app("alice")
    bob_app = await world.local_app("bob")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    await bob.subscribe(world.port, bob_app.port, mode="mirror")
    assert world.manager.redirector.backend == backend
    assert (await world.ask()).server == "alice"
    await eventually(lambda: len(bob_app.seen) == 1)

    # alice's tunnel closes (her machine went away): the agent drops her steal.
    await alice.tunnel.close()
    await eventually(lambda: [s.session.who for s in world.manager.subscriptions()] == ["bob"])
    assert (await world.ask()).server == "pod"
    await eventually(lambda: len(bob_app.seen) == 2)
    assert "TETHER-PREROUTING" in world.iptables()

    await bob.tunnel.close()
    await eventually(lambda: world.manager.redirector.backend is None)
    assert world.manager.ports == {}
    saved = world.iptables()
    assert "TETHER" not in saved and "APP-CHAIN" in saved
    assert (await world.ask()).server == "pod"
    assert len(bob_app.seen) == 2
    assert world.agent is not None
    await eventually(lambda: world.agent is not None and not world.agent.sessions)


@pytest.mark.root
async def test_close_removes_everything(world: World) -> None:
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    await bob.subscribe(await closed_port(), alice_app.port, mode="mirror")
    assert len(world.manager.ports) == 2
    assert (await world.ask()).server == "alice"

    await world.manager.close()
    assert world.manager.ports == {} and world.manager.subscriptions() == []
    assert world.manager.redirector.backend is None
    assert "TETHER" not in world.iptables()
    assert (await world.ask()).server == "pod"


@pytest.mark.root
async def test_session_leave_tells_the_last_one(world: World) -> None:
    alice_app = await world.local_app("alice")
    alice = await world.join("alice")
    bob = await world.join("bob")
    await alice.subscribe(world.port, alice_app.port, mode="steal")
    agent = world.agent
    assert agent is not None

    assert (await alice.tunnel.call(SessionLeave())).last is False
    assert not agent._exiting
    await alice.leave()
    assert (await bob.tunnel.call(SessionLeave())).last is True
    assert agent._exiting
    # The agent is about to exit: a newcomer is turned away (and starts an agent of its own).
    with pytest.raises(TunnelClosedError):
        await world.tunnel()

    await bob.leave()
    assert world.serve_task is not None
    await asyncio.wait_for(world.serve_task, 5)  # exits on its own, rules and all
    assert "TETHER" not in world.iptables()


# -- connections that say nothing at first ---------------------------------------------------


async def test_a_filtered_steal_routes_a_connection_opened_ahead_of_its_requests(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP clients may open a connection before they have a request for it: once the wait
    for its first bytes is over, the requests that do come are still routed one by one."""
    world.manager.dispatcher.first_bytes_timeout = 0.1
    app = await world.local_app("alice")
    alice = await world.join("alice")
    await alice.subscribe(world.port, app.port, mode="steal", http_filter=_dev("alice"))
    client = await world.connect()
    # Silent past the wait: the dispatcher gave up on first bytes and opened the app's side.
    await eventually(lambda: world.app.accepted == 1)
    assert (await _request(client, "/a", ("X-Dev", "alice"))).server == "alice"
    assert (await _request(client, "/p")).server == "pod"
    assert (await _request(client, "/a2", ("X-Dev", "alice"))).server == "alice"
    # The connection to the app opened while waiting is the one that served the pod's part.
    assert world.app.accepted == 1


async def test_a_filtered_steal_passes_a_server_first_protocol_through(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a port whose server speaks first (SMTP-like), the client's silence is not a hang."""
    world.manager.dispatcher.first_bytes_timeout = 0.1

    async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 pod ready\r\n")
        line = await reader.readline()
        writer.write(b"250 got " + line)
        await writer.drain()
        writer.close()

    with NetnsExecutor(world.pod.path, max_workers=1) as pod_ex:
        sock = await pod_ex.listen_tcp()
    port = int(sock.getsockname()[1])
    server = await asyncio.start_server(greet, sock=sock)
    try:
        app = await world.local_app("alice")
        alice = await world.join("alice")
        await alice.subscribe(port, app.port, mode="steal", http_filter=_dev("alice"))
        sock = await world.client_ex.open_tcp(TARGET_ADDR, port, TIMEOUT)
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"220 pod ready\r\n"
            writer.write(b"HELO me\r\n")
            assert await asyncio.wait_for(reader.readline(), TIMEOUT) == b"250 got HELO me\r\n"
        finally:
            writer.close()
        assert app.accepted == 0
    finally:
        server.close()
