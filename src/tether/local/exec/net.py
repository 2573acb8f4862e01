"""The intercepted process's network calls: where each connect goes, what the socket-name
calls say about a redirected socket, which ports it listens on, and the host name it sees.

A connect the rules send through the pod opens a tunnel stream first (so a refused
destination fails the connect with its errno), then connects the app's own socket (through
our dup, which shares its open file description) to a loopback relay that pairs it with the
stream by source port. A connect to one of the process's nameservers goes to the DNS proxy
the same way. getpeername then tells the original destination and getsockname the pod's IP.

Threads: the public methods run on the supervisor thread and decide from state that never
changes (the rules, the relays' ports); the event loop owns `peers` and `listening`, and
everything that reads or writes them runs there.
"""

import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import Final, Literal

from tether.intercept.memory import dup_from, pack_sockaddr, read_bytes, write_bytes
from tether.intercept.seccomp import Notification
from tether.local.exec.dispatcher import Dispatcher
from tether.local.exec.syscalls import Connect, Listen, SocketName, Uname
from tether.local.policy.names import NameCache, normalize_address
from tether.local.policy.rules import NetRules, Side
from tether.local.proxies.dns_proxy import DnsProxy
from tether.local.proxies.outgoing import OutgoingProxy, UdpProxy
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel

_UTSNAME_FIELD: Final = 65


class NetCalls:
    """Serves the network calls (and uname) of one process tree through `dispatcher`."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        tunnel: Tunnel,
        rules: NetRules,
        proxy: OutgoingProxy,
        udp: UdpProxy,
        progress: Progress,
        *,
        hostname: str,
        dns_proxy: DnsProxy | None = None,
        nameservers: frozenset[str] = frozenset(),
        names: NameCache | None = None,
        pod_ip: str | None = None,
    ) -> None:
        # Set here and never changed: read by both threads (the rules' caches are lru_caches,
        # which stay coherent under concurrent use).
        self.dispatcher = dispatcher
        self.listener = dispatcher.listener
        self.tunnel = tunnel
        self.rules = rules
        self.proxy = proxy
        self.udp = udp
        self.progress = progress
        self.hostname = hostname
        self.dns_proxy = dns_proxy
        self.nameservers = frozenset(normalize_address(n) for n in nameservers)
        self.names = names
        self.pod_ip = pod_ip
        # The loopback ports of our relays: a socket connected to one was redirected (set by
        # start, before the supervisor thread starts).
        self._relay_ports: frozenset[int] = frozenset()
        # Called on the event loop with each TCP port the process starts listening on.
        self.on_listen: Callable[[int], None] | None = None

        # Owned by the event loop.
        self.listening: set[int] = set()
        self.peers: dict[int, tuple[int, str, int]] = {}  # socket inode -> original peer

    def start(self) -> None:
        """Learn the relays' ports (they are listening by now)."""
        ports = {self.proxy.port, self.udp.port}
        if self.dns_proxy is not None:
            ports |= {self.dns_proxy.tcp_port, self.dns_proxy.udp_port}
        self._relay_ports = frozenset(ports - {0})

    # -- connect -----------------------------------------------------------------------------

    def connect(self, notif: Notification, call: Connect) -> None:
        """connect: local, through the pod, or to the DNS proxy."""
        address = call.ip
        if address is None:
            self.listener.respond_continue(notif.id)  # AF_UNIX and friends stay local
            return
        family, host, port = address
        sock = socket.socket(fileno=dup_from(notif.pid, call.fd))
        try:
            self._route_connect(notif, sock, family, host, port)
        except BaseException:
            sock.close()
            raise

    def _route_connect(
        self, notif: Notification, sock: socket.socket, family: int, host: str, port: int
    ) -> None:
        """Decide where a connect goes; `sock` (our dup of the app's socket) is closed, or
        handed to the task that now owns it."""
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto: Literal["tcp", "udp"] = "tcp" if kind == socket.SOCK_STREAM else "udp"
        spawn = self.dispatcher.spawn
        if (
            self.dns_proxy is not None
            and port == 53
            and normalize_address(host) in self.nameservers
            and kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ):
            spawn(notif, self._connect_dns(notif, sock, proto, family, host))
        elif kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock.close()
            self.listener.respond_continue(notif.id)
        elif self.rules.needs_names(host, proto=proto):
            # The names behind the address are the loop's (the DNS proxy learns them there).
            spawn(notif, self._connect_by_name(notif, sock, family, host, port, proto))
        elif self.rules.decide(host, port, proto=proto) is Side.LOCAL:
            sock.close()
            self.listener.respond_continue(notif.id)
        else:
            spawn(notif, self._connect_remote(notif, sock, family, host, port))

    async def _connect_by_name(
        self,
        notif: Notification,
        sock: socket.socket,
        family: int,
        host: str,
        port: int,
        proto: Literal["tcp", "udp"],
    ) -> None:
        names = () if self.names is None else self.names.names(host)
        if self.rules.decide(host, port, hostnames=names, proto=proto) is Side.REMOTE:
            await self._connect_remote(notif, sock, family, host, port)
            return
        sock.close()
        self.listener.respond_continue(notif.id)
        shown = f"{names[0]} ({host})" if names else host
        self.progress.detail(f"{proto} {shown}:{port} -> from this machine")

    def _redirect(
        self,
        notif: Notification,
        sock: socket.socket,
        loopback_port: int,
        peer: tuple[int, str, int],
        register: Callable[[int], None],
    ) -> bool:
        """Connect the app's socket (through our dup, which shares its open file description)
        to one of our loopback endpoints, hand its source port to `register`, remember the
        peer for getpeername, and answer the connect as the kernel would. False if the
        loopback connect itself failed (the errno has been answered). On the loop only."""
        blocking = os.get_blocking(sock.fileno())
        # An IPv6 socket reaches our IPv4 loopback endpoints through the v4-mapped address.
        target = "::ffff:127.0.0.1" if sock.family == socket.AF_INET6 else "127.0.0.1"
        # Register the source port before connecting: the endpoint must know it when it
        # accepts, which a non-blocking connect lets happen before we are past connect_ex.
        source = int(sock.getsockname()[1])
        if source == 0:
            sock.bind((target, 0))
            source = int(sock.getsockname()[1])
        register(source)
        self.peers[os.fstat(sock.fileno()).st_ino] = peer
        err = sock.connect_ex((target, loopback_port))
        if err not in (0, errno.EINPROGRESS, errno.EISCONN):
            self.listener.respond_error(notif.id, err)
            return False
        if blocking or err != errno.EINPROGRESS:
            self.listener.respond_value(notif.id, 0)
        else:
            self.listener.respond_error(notif.id, errno.EINPROGRESS)
        return True

    async def _connect_dns(
        self, notif: Notification, sock: socket.socket, proto: str, family: int, host: str
    ) -> None:
        """Point a connection to one of the process's nameservers at the DNS proxy."""
        dns_proxy = self.dns_proxy
        assert dns_proxy is not None
        port = dns_proxy.tcp_port if proto == "tcp" else dns_proxy.udp_port
        with sock:
            self._redirect(
                notif, sock, port, (family, host, 53), lambda src: dns_proxy.expect(src, (host, 53))
            )

    async def _connect_remote(
        self, notif: Notification, sock: socket.socket, family: int, host: str, port: int
    ) -> None:
        """TCP or connected UDP through the pod: the stream first (so a refused destination
        fails the connect with its errno), then the socket to our loopback relay."""
        with sock:
            udp = sock.type == socket.SOCK_DGRAM
            kind = "udp" if udp else "tcp"
            stream = await self.tunnel.open_stream(kind, {"host": host, "port": port})
            if not self.listener.id_valid(notif.id):
                stream.reset("ECONNABORTED", "the application gave up", errno.ECONNABORTED)
                return
            relay: OutgoingProxy | UdpProxy = self.udp if udp else self.proxy
            if self._redirect(
                notif, sock, relay.port, (family, host, port), lambda src: relay.expect(src, stream)
            ):
                self.progress.detail(f"{kind} {host}:{port} -> via the pod")
            else:
                stream.reset("ECONNABORTED", "loopback relay unreachable", errno.ECONNABORTED)

    # -- getpeername, getsockname ------------------------------------------------------------

    def _redirected(self, notif: Notification, fd: int) -> tuple[int, int] | None:
        """(inode, local port) of socket `fd` if it is connected to one of our relays (only
        those have a peer in `peers`); None for any other fd."""
        with socket.socket(fileno=dup_from(notif.pid, fd)) as sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            try:
                peer = sock.getpeername()
                local = sock.getsockname()
            except OSError:
                return None  # not connected: the kernel's answer is the truth
            if peer[1] not in self._relay_ports or normalize_address(peer[0]) != "127.0.0.1":
                return None
            return os.fstat(sock.fileno()).st_ino, int(local[1])

    def socket_name(self, notif: Notification, call: SocketName) -> None:
        """getpeername: a redirected socket's original destination. getsockname: a
        redirected socket's local address is the pod's IP (with the real local port), as the
        connection would have had from the pod."""
        found = None
        if call.peer or self.pod_ip:
            found = self._redirected(notif, call.fd)
        if found is None:
            self.listener.respond_continue(notif.id)
        elif call.peer:
            self.dispatcher.spawn(notif, self._answer_peer(notif, call, found[0]))
        else:
            self.dispatcher.spawn(notif, self._answer_sockname(notif, call, *found))

    async def _answer_peer(self, notif: Notification, call: SocketName, inode: int) -> None:
        peer = self.peers.get(inode)
        if peer is None:
            self.listener.respond_continue(notif.id)
            return
        self._answer_sockaddr(notif, call, pack_sockaddr(*peer))

    async def _answer_sockname(
        self, notif: Notification, call: SocketName, inode: int, local_port: int
    ) -> None:
        peer = self.peers.get(inode)
        if peer is None or peer[0] != socket.AF_INET or not self.pod_ip:
            self.listener.respond_continue(notif.id)
            return
        self._answer_sockaddr(notif, call, pack_sockaddr(socket.AF_INET, self.pod_ip, local_port))

    def _answer_sockaddr(self, notif: Notification, call: SocketName, data: bytes) -> None:
        """Complete getpeername/getsockname(fd, addr, addrlen) with `data`, truncated to the
        room the caller gave, as the kernel does."""
        (room,) = struct.unpack("<i", read_bytes(notif.pid, call.addrlen, 4))
        write_bytes(notif.pid, call.addr, data[: max(0, room)])
        write_bytes(notif.pid, call.addrlen, struct.pack("<i", len(data)))
        self.listener.respond_value(notif.id, 0)

    # -- listen, uname -----------------------------------------------------------------------

    def listen(self, notif: Notification, call: Listen) -> None:
        """listen: runs natively; the port is handed to `on_listen` on the loop."""
        try:
            with socket.socket(fileno=dup_from(notif.pid, call.fd)) as sock:
                name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                self.dispatcher.to_loop(self._listened, int(name[1]))
        finally:
            self.listener.respond_continue(notif.id)

    def _listened(self, port: int) -> None:
        self.listening.add(port)
        self.progress.detail(f"the process listens on port {port}")
        if port and self.on_listen is not None:
            self.on_listen(port)

    def uname(self, notif: Notification, call: Uname) -> None:
        """uname: this machine's, with the pod's host name."""
        fields = list(os.uname())
        fields[1] = self.hostname
        data = b"".join(
            f.encode()[: _UTSNAME_FIELD - 1].ljust(_UTSNAME_FIELD, b"\0") for f in fields
        )
        data += b"\0" * _UTSNAME_FIELD  # domainname
        write_bytes(notif.pid, call.buf, data)
        self.listener.respond_value(notif.id, 0)
