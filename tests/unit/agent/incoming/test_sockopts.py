"""Tests for tether.agent.incoming.sockopts (the namespace ones need root)."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from tests.unit.agent.incoming.throwaway_netns import Netns, need_root, throwaway_netns
from tether.agent.incoming import sockopts
from tether.agent.incoming.sockopts import original_dst, reset_connections, set_bypass_mark
from tether.agent.iptables import BYPASS_MARK, RedirectError
from tether.agent.netns import NetnsExecutor

TIMEOUT = 5.0


class FakeSocket:
    """Answers getsockopt(SOL_IP, SO_ORIGINAL_DST) with a canned sockaddr."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def getsockopt(self, level: int, name: int, size: int) -> bytes:
        assert (level, name, size) == (socket.SOL_IP, sockopts.SO_ORIGINAL_DST, 16)
        return self.raw


def test_original_dst_parses_sockaddr_in() -> None:
    raw = struct.pack("=H", socket.AF_INET) + struct.pack("!H", 8080)
    raw += socket.inet_aton("10.1.2.3") + bytes(8)
    assert original_dst(FakeSocket(raw)) == ("10.1.2.3", 8080)  # type: ignore[arg-type]
    bad = struct.pack("=H", socket.AF_INET6) + bytes(14)
    with pytest.raises(OSError, match="address family"):
        original_dst(FakeSocket(bad))  # type: ignore[arg-type]


def test_original_dst_of_a_connection_that_was_not_redirected() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname(), timeout=TIMEOUT),
    ):
        conn, _ = server.accept()
        with conn:
            try:
                # Tracked by conntrack (the host may have NAT rules): the address itself.
                assert original_dst(conn) == conn.getsockname()
            except OSError as e:
                assert e.errno == errno.ENOENT  # not tracked at all


def test_set_bypass_mark() -> None:
    need_root()  # SO_MARK needs CAP_NET_ADMIN
    with socket.socket() as sock:
        set_bypass_mark(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, sockopts.SO_MARK) == BYPASS_MARK


@pytest.fixture
def ns() -> Iterator[Netns]:
    need_root()
    with throwaway_netns() as n:
        yield n


def _listen() -> socket.socket:
    sock = socket.create_server(("0.0.0.0", 0))
    sock.settimeout(TIMEOUT)
    return sock


def _connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


@pytest.mark.root
async def test_reset_connections_spares_kept_peers(ns: Netns) -> None:
    with NetnsExecutor(ns.path, max_workers=2) as ex:
        server = await ex.run(_listen)
        port = server.getsockname()[1]
        sockets = [server]
        try:
            clients = [await ex.run(_connect, "127.0.0.1", port) for _ in range(3)]
            sockets += clients
            accepted = [server.accept()[0] for _ in clients]
            sockets += accepted
            # The connections clients make to the port (local port ephemeral) are not hit.
            other = await ex.run(_listen)
            sockets.append(other)
            outgoing = await ex.run(_connect, "127.0.0.1", other.getsockname()[1])
            sockets += [outgoing, other.accept()[0]]

            kept = clients[2].getsockname()
            assert await reset_connections(ex, port, keep_peers=[kept]) == 2
            for client in clients[:2]:
                with pytest.raises(ConnectionResetError):
                    client.recv(1)
            clients[2].sendall(b"still here")
            assert accepted[2].recv(100) == b"still here"
            outgoing.sendall(b"x")
            assert await reset_connections(ex, port, keep_peers=[kept]) == 0
        finally:
            for s in sockets:
                s.close()


@pytest.mark.root
async def test_reset_connections_errors(ns: Netns, monkeypatch: pytest.MonkeyPatch) -> None:
    with NetnsExecutor(ns.path, max_workers=1) as ex:
        with pytest.raises(ValueError):
            await reset_connections(ex, 8080, keep_peers=[("not-an-ip", 1)])
        with pytest.raises(ValueError):
            await reset_connections(ex, 0)
        monkeypatch.setattr(sockopts, "find_tool", lambda name: None)
        with pytest.raises(RedirectError, match=r"ss \(iproute2\) is not installed"):
            await reset_connections(ex, 8080)
