"""Socket helpers for redirected connections: where a connection was headed before REDIRECT,
the mark that exempts the agent's own connections from it, and resetting the target's
existing connections to a port so that their clients reconnect (and get redirected)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct
from collections.abc import Collection

from tether.agent.iptables import BYPASS_MARK, RedirectError
from tether.agent.netns import NetnsExecutor
from tether.agent.programs import SS, find_tool, run_tool

#: getsockopt(SOL_IP, SO_ORIGINAL_DST): the destination before NAT (linux/netfilter_ipv4.h).
SO_ORIGINAL_DST = 80
SO_MARK: int = getattr(socket, "SO_MARK", 36)


def original_dst(sock: socket.socket) -> tuple[str, int]:
    """The (IPv4 address, port) an accepted, REDIRECTed connection was originally sent to.

    `sock` must be an AF_INET socket (the redirect is IPv4 only). For a connection that was
    not redirected this is its own local address if conntrack tracks it; if conntrack does
    not (no NAT rules in the namespace at all), OSError ENOENT.
    """
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    # struct sockaddr_in: sa_family in host order, then port and address in network order.
    (family,) = struct.unpack_from("=H", raw)
    if family != socket.AF_INET:
        raise OSError(errno.EAFNOSUPPORT, f"original destination of address family {family}")
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


def set_bypass_mark(sock: socket.socket) -> None:
    """Mark `sock` (before connecting it) so that tether's OUTPUT chain does not redirect it:
    for the agent's own connections to the original application. Needs CAP_NET_ADMIN."""
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, BYPASS_MARK)


def _ss_address(host: str) -> str:
    ip = ipaddress.ip_address(host)
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _ss_kill(port: int, keep_peers: list[tuple[str, int]]) -> int:
    expr = f"( sport = :{port} )"
    for host, peer_port in keep_peers:
        # ss matches an IPv4 address against IPv4-mapped peers of IPv6 sockets too.
        expr += f" and not ( dst {_ss_address(host)}:{peer_port} )"
    exe = find_tool(SS)
    if exe is None:
        raise RedirectError(
            f"cannot reset connections to port {port}: ss (iproute2) is not installed"
        )
    # -K lists only the sockets it actually destroyed (and silently skips the others).
    argv = [exe, "-K", "-t", "-n", "-H", "state", "established", expr]
    out = run_tool(argv, what=f"resetting connections to port {port}")
    return sum(
        1
        for line in out.splitlines()
        # Skip a header in case this ss ignores -H.
        if line.strip() and not line.startswith(("Recv-Q", "State", "Netid"))
    )


async def reset_connections(
    executor: NetnsExecutor, port: int, keep_peers: Collection[tuple[str, int]] = ()
) -> int:
    """Destroy the established TCP connections in `executor`'s namespace whose local port is
    `port` (the server side: the application's accepted connections), except those whose
    peer (address, port) is in `keep_peers`, e.g. the agent's own connections to the app.

    The peers see a reset. Uses `ss -K` (needs CONFIG_INET_DIAG_DESTROY and CAP_NET_ADMIN).
    Returns how many connections were destroyed. Raises RedirectError if ss is missing or
    fails, ValueError for a keep_peers address that is not an IP.
    """
    if not 0 < port < 65536:
        raise ValueError(f"not a TCP port: {port}")
    peers = [(host, int(peer_port)) for host, peer_port in keep_peers]
    for host, _ in peers:
        _ss_address(host)  # a ValueError here rather than an odd ss filter in the worker
    return await executor.run(_ss_kill, port, peers)
