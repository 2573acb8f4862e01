"""Tests for tether.agent.netns: worker threads that connect from another network namespace.

They create a real network namespace (root only) holding an echo server on 127.0.0.1 and a
veth pair with 198.51.100.1/25 on one end, so no packet of theirs ever leaves it.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnslib import RCODE, RR, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from tether.agent import netns as netns_mod
from tether.agent.netns import NetnsExecutor
from tether.agent.resolver import PodResolver, ResolveTimeoutError

pytestmark = pytest.mark.root

ECHO_SERVER = """
import socket, sys, threading
port = int(sys.argv[1])
tcp = socket.create_server(("127.0.0.1", port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", port))
def echo_udp():
    while True:
        data, peer = udp.recvfrom(65535)
        udp.sendto(data, peer)
threading.Thread(target=echo_udp, daemon=True).start()
print("ready", flush=True)
while True:
    conn, _ = tcp.accept()
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
"""


@dataclass
class Netns:
    name: str
    path: Path
    port: int


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture(scope="module")
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")
    name = f"tether-test-{secrets.token_hex(4)}"
    # Holding the port bound (not listening) in our own namespace makes a plain connect to
    # it fail for sure, so reaching the server proves the connect happened in the other one.
    reserved = socket.socket()
    reserved.bind(("127.0.0.1", 0))
    port = reserved.getsockname()[1]
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("netns", "add", name)
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _ip("-n", name, "addr", "add", "198.51.100.1/25", "dev", "v0")
        _ip("-n", name, "link", "set", "v0", "up")
        _ip("-n", name, "link", "set", "v1", "up")
        # .2 has a made-up MAC, so what is sent to it vanishes silently; other addresses fail
        # ARP after one 100 ms try.
        mac = "02:00:00:00:00:02"
        _ip(
            "-n",
            name,
            "neigh",
            "add",
            "198.51.100.2",
            "lladdr",
            mac,
            "nud",
            "permanent",
            "dev",
            "v0",
        )
        _ip("netns", "exec", name, "sysctl", "-qw", "net.ipv4.neigh.v0.mcast_solicit=1")
        _ip("netns", "exec", name, "sysctl", "-qw", "net.ipv4.neigh.v0.retrans_time_ms=100")
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", ECHO_SERVER, str(port)],
            stdout=subprocess.PIPE,
        )
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], 10)
        assert ready and server.stdout.readline() == b"ready\n", "echo server did not start"
        yield Netns(name, Path("/run/netns") / name, port)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        reserved.close()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


@pytest.fixture
def executor(netns: Netns) -> Iterator[NetnsExecutor]:
    ex = NetnsExecutor(netns.path, max_workers=4)
    try:
        yield ex
    finally:
        ex.shutdown()


def _netns_inode() -> int:
    return Path("/proc/thread-self/ns/net").stat().st_ino


async def test_workers_run_in_the_namespace(netns: Netns, executor: NetnsExecutor) -> None:
    inodes = await asyncio.gather(*(executor.run(_netns_inode) for _ in range(8)))
    assert set(inodes) == {netns.path.stat().st_ino}
    assert _netns_inode() != netns.path.stat().st_ino  # the event loop thread stayed home


async def test_open_tcp_reaches_a_server_only_the_namespace_has(
    netns: Netns, executor: NetnsExecutor
) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", netns.port), timeout=2).close()
    sock = await executor.open_tcp("127.0.0.1", netns.port, timeout=5)
    assert not sock.getblocking()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"ping\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.readline(), 5) == b"ping\n"
    finally:
        writer.close()
        await writer.wait_closed()


async def test_open_udp(netns: Netns, executor: NetnsExecutor) -> None:
    sock = await executor.open_udp("127.0.0.1", netns.port)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, b"datagram")
        assert await asyncio.wait_for(loop.sock_recv(sock, 100), 5) == b"datagram"
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("host", "port", "code"),
    [
        ("127.0.0.1", 1, errno.ECONNREFUSED),
        ("198.51.100.2", 80, errno.ETIMEDOUT),  # sent to a MAC nobody has
        ("198.51.100.3", 80, errno.EHOSTUNREACH),  # nobody answers ARP (in 100 ms)
        ("198.51.100.200", 80, errno.ENETUNREACH),  # no route in the namespace
        ("backend", 80, errno.EINVAL),  # names are the resolver's job
    ],
)
async def test_open_tcp_errors(executor: NetnsExecutor, host: str, port: int, code: int) -> None:
    with pytest.raises(OSError) as err:
        await executor.open_tcp(host, port, timeout=0.5)
    assert err.value.errno == code


async def test_a_cancelled_connect_does_not_leak_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made: list[socket.socket] = []
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def slow_connect(host_ip: str, port: int, timeout: float, mark: int | None) -> socket.socket:
        started.set()
        release.wait(10)  # still connecting when the caller gives up
        made.append(socket.socket())
        returned.set()
        return made[-1]

    monkeypatch.setattr(netns_mod, "_connect_tcp", slow_connect)
    ex = NetnsExecutor(None)
    try:
        task = asyncio.ensure_future(ex.open_tcp("127.0.0.1", 80, timeout=5))
        assert await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        assert await asyncio.to_thread(returned.wait, 10)
        assert len(made) == 1

        async def closed() -> None:
            # The executor closes what the cancelled call made, on the worker, right after
            # the call returns: there is no event to wait on but the socket itself.
            while made[0].fileno() != -1:  # noqa: ASYNC110
                await asyncio.sleep(0.001)

        await asyncio.wait_for(closed(), 10)  # closed by the executor, not leaked
    finally:
        release.set()
        ex.shutdown()


async def test_targetless_stays_in_the_agents_namespace() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    ex = NetnsExecutor(None)
    try:
        assert await ex.run(_netns_inode) == _netns_inode()
        sock = await ex.open_tcp("127.0.0.1", server.getsockname()[1], timeout=5)
        sock.close()
    finally:
        ex.shutdown()
        server.close()


def test_a_missing_namespace_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        NetnsExecutor(tmp_path / "gone")


async def test_shutdown_refuses_new_work(netns: Netns) -> None:
    ex = NetnsExecutor(netns.path)
    ex.shutdown()
    ex.shutdown()  # idempotent
    with pytest.raises(RuntimeError):
        await ex.run(_netns_inode)


class _OneName:
    """A dnslib resolver that knows one name."""

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        if str(request.q.qname) == "backend.shop.svc.cluster.local." and request.q.qtype == 1:
            reply.add_answer(*RR.fromZone("backend.shop.svc.cluster.local. 5 A 198.51.100.10"))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


async def test_resolver_queries_leave_from_the_namespace(
    netns: Netns, executor: NetnsExecutor, tmp_path: Path
) -> None:
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    # Bound by a worker, the server's socket lives in the namespace: only queries sent from
    # there can reach it.
    server = await executor.run(
        lambda: DNSServer(_OneName(), address="127.0.0.1", port=0, logger=quiet)
    )
    server.start_thread()
    home = NetnsExecutor(None)
    try:
        port = server.server.server_address[1]
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "resolv.conf").write_text(
            "nameserver 127.0.0.1\nsearch shop.svc.cluster.local\n"
            "options ndots:5 timeout:1 attempts:1\n"
        )
        inside = PodResolver(tmp_path, executor, port=port)
        assert await inside.resolve("backend", socket.AF_INET) == ["198.51.100.10"]
        outside = PodResolver(tmp_path, home, port=port)
        with pytest.raises(ResolveTimeoutError):  # sent from our namespace: nobody listens
            await outside.resolve("backend.shop.svc.cluster.local.", socket.AF_INET)
    finally:
        home.shutdown()
        server.stop()
        server.server.server_close()


async def test_an_agent_already_in_the_namespace_does_not_enter_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An ephemeral agent shares its target's namespace and has no CAP_SYS_ADMIN for setns.
    from tether.agent import netns as netns_module

    def refused(fd: int, nstype: int) -> None:
        raise PermissionError(1, "setns: Operation not permitted")

    monkeypatch.setattr(netns_module, "setns", refused)
    ex = NetnsExecutor(Path(f"/proc/{os.getpid()}/ns/net"))
    try:
        assert await ex.run(_netns_inode) == _netns_inode()
    finally:
        ex.shutdown()
