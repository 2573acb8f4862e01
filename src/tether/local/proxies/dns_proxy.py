"""The DNS responder of an intercepted process tree.

The supervisor hands it every connection the process makes to one of its nameservers (port
53 of an address in the resolv.conf the process reads), and it answers each query on the
side `DnsRules` picks for the name:
- through the pod: the query goes to the pod's nameserver through the tunnel, over TCP;
- locally, while the process resolves through the pod: from this machine's resolver
  (getaddrinfo, so its hosts file counts too), A and AAAA only;
- locally, while the process resolves locally (`DnsRules.through_pod` false): the query goes
  as it is, over the protocol the process used, to the nameserver it asked, which is then
  this machine's.

Every answer, from either side, teaches the `NameCache` which names each address came from,
so that `network.outgoing` name patterns can apply to the connections that follow.
"""

import asyncio
import contextlib
import socket
import struct
from typing import Any, Literal

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tether.local.policy.names import NameCache
from tether.local.policy.rules import DnsRules, Side
from tether.local.session.progress import Progress
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError

_LEN = struct.Struct("!H")
_FAMILIES = {dns.rdatatype.A: socket.AF_INET, dns.rdatatype.AAAA: socket.AF_INET6}
_UDP_MAX = 65535

Proto = Literal["tcp", "udp"]


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await loop.sock_recv(sock, size - len(data))
        if not chunk:
            raise ConnectionError("the nameserver closed the connection")
        data += chunk
    return data


class DnsProxy(asyncio.DatagramProtocol):
    """TCP and UDP responder on loopback; callers are paired with their nameserver by source
    port (`expect`), as the outgoing proxy does."""

    def __init__(
        self,
        tunnel: Tunnel,
        rules: DnsRules,
        progress: Progress,
        *,
        names: NameCache | None = None,
        pod_nameserver: str | None = None,
        timeout: float = 5.0,
    ) -> None:
        """Answer with `rules`; learn into `names`. `pod_nameserver` is where queries for
        names resolved through the pod go when the process itself asks a local nameserver;
        `timeout` bounds a query forwarded to a local nameserver."""
        self.tunnel = tunnel
        self.rules = rules
        self.progress = progress
        self.names = names
        self.pod_nameserver = pod_nameserver
        self.timeout = timeout
        self._servers: dict[int, tuple[str, int]] = {}  # source port -> nameserver
        self._tcp: asyncio.Server | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tcp_port = 0
        self.udp_port = 0

    async def start(self) -> None:
        """Listen on 127.0.0.1 (TCP and UDP, ephemeral ports)."""
        self._tcp = await asyncio.start_server(self._on_tcp, "127.0.0.1", 0)
        self.tcp_port = int(self._tcp.sockets[0].getsockname()[1])
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._udp = transport
        self.udp_port = int(transport.get_extra_info("sockname")[1])

    def expect(self, source_port: int, nameserver: tuple[str, int]) -> None:
        """Queries from `source_port` were meant for `nameserver`."""
        self._servers[source_port] = nameserver

    async def close(self) -> None:
        """Stop both listeners."""
        for task in list(self._tasks):
            task.cancel()
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await self._tcp.wait_closed()

    # -- transports ----------------------------------------------------------------------------

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        server = self._servers.pop(int(peer[1]), None) if peer else None
        try:
            while server is not None:
                header = await reader.readexactly(2)
                query = await reader.readexactly(_LEN.unpack(header)[0])
                reply = await self.answer(query, server, "tcp")
                writer.write(_LEN.pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        server = self._servers.get(int(addr[1]))
        if server is None:
            return

        async def reply() -> None:
            answer = await self.answer(data, server, "udp")
            if self._udp is not None and answer:
                self._udp.sendto(answer, addr)

        task = asyncio.ensure_future(reply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- answering -----------------------------------------------------------------------------

    async def answer(self, query: bytes, server: tuple[str, int], proto: Proto = "tcp") -> bytes:
        """The reply to one DNS message the process sent to `server` over `proto`."""
        try:
            message = dns.message.from_wire(query)
            question = message.question[0]
        except (dns.exception.DNSException, IndexError):
            return query[:2] + b"\x81\x01" + query[4:12] if len(query) >= 12 else b""
        name = question.name.to_text()
        try:
            if self.rules.decide(name) is Side.REMOTE:
                reply = await self._remote_again(query, self._pod_server(server))
            elif self.rules.through_pod:
                reply = await self._local(message, question)
            else:
                reply = await self._forward(query, server, proto)
        except (
            RemoteOpError,
            TunnelClosedError,
            OSError,
            asyncio.IncompleteReadError,
            LookupError,
        ):
            failure = dns.message.make_response(message)
            failure.set_rcode(dns.rcode.SERVFAIL)
            return failure.to_wire()
        if self.names is not None:
            self.names.learn_reply(reply)
        return reply

    def _pod_server(self, server: tuple[str, int]) -> tuple[str, int]:
        if self.rules.through_pod:
            return server  # the process asked the pod's nameserver itself
        if self.pod_nameserver is None:
            raise LookupError("the pod has no nameserver")
        return (self.pod_nameserver, 53)

    async def _forward(self, query: bytes, server: tuple[str, int], proto: Proto) -> bytes:
        """Ask a nameserver of this machine directly (TimeoutError, an OSError, if it does
        not answer in time)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
        kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
        with socket.socket(family, kind) as sock:
            sock.setblocking(False)
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(sock, server)
                if proto == "udp":
                    await loop.sock_sendall(sock, query)
                    return await loop.sock_recv(sock, _UDP_MAX)
                await loop.sock_sendall(sock, _LEN.pack(len(query)) + query)
                size = _LEN.unpack(await _recv_exactly(loop, sock, _LEN.size))[0]
                return await _recv_exactly(loop, sock, size)

    async def _local(self, message: dns.message.Message, question: dns.rrset.RRset) -> bytes:
        response = dns.message.make_response(message)
        family = _FAMILIES.get(question.rdtype)
        name = question.name.to_text(omit_final_dot=True)
        self.progress.detail(f"dns {name} resolved locally")
        if family is None:
            return response.to_wire()
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, None, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror:
            # NXDOMAIN only if the name has no address at all: a name with only IPv4 answers
            # AAAA with "no data", or resolvers querying both would give up on it.
            try:
                await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            except socket.gaierror:
                response.set_rcode(dns.rcode.NXDOMAIN)
            return response.to_wire()
        addresses = sorted({str(info[4][0]) for info in infos})
        rrset = dns.rrset.from_text_list(question.name, 5, "IN", question.rdtype, addresses)
        response.answer.append(rrset)
        return response.to_wire()

    async def _remote_again(self, query: bytes, server: tuple[str, int]) -> bytes:
        """`_remote`, asked once more if the tunnel lost its agent under the query (a session
        following its workload moved to another pod, or the transport is being resumed): a
        DNS query is safe to ask twice, and a resolver given SERVFAIL would not ask again
        but give up on the name."""
        try:
            return await self._remote(query, server)
        except (RemoteOpError, TunnelClosedError, ConnectionError):
            if self.tunnel.closed or not await self.tunnel.wait_connected(self.timeout):
                raise
        return await self._remote(query, server)

    async def _remote(self, query: bytes, server: tuple[str, int]) -> bytes:
        stream = await self.tunnel.open_stream("tcp", {"host": server[0], "port": server[1]})
        try:
            await stream.write(_LEN.pack(len(query)) + query)
            buf = b""
            while True:
                chunk = await stream.read()
                if not chunk:
                    raise ConnectionError("the nameserver closed the connection")
                buf += chunk
                if len(buf) >= 2 and len(buf) >= 2 + _LEN.unpack_from(buf)[0]:
                    return buf[2 : 2 + _LEN.unpack_from(buf)[0]]
        finally:
            stream.reset("ECONNABORTED", "query answered", 103)
