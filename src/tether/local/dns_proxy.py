"""A DNS responder for `network.dns.local`: names matching a local pattern are resolved on this
machine, every other query goes to the pod's nameserver through the tunnel.

Only used when local DNS patterns are configured; otherwise the process's DNS connections to
the pod's nameserver are redirected through the tunnel like any other connection.
"""

import asyncio
import contextlib
import socket
import struct
from typing import Any

import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from tether.local.progress import Progress
from tether.local.rules import DnsRules, Side
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError

_LEN = struct.Struct("!H")
_FAMILIES = {dns.rdatatype.A: socket.AF_INET, dns.rdatatype.AAAA: socket.AF_INET6}


class DnsProxy(asyncio.DatagramProtocol):
    """TCP and UDP responder on loopback; callers are paired with their nameserver by source
    port (`expect`), as the outgoing proxy does."""

    def __init__(self, tunnel: Tunnel, rules: DnsRules, progress: Progress) -> None:
        self.tunnel = tunnel
        self.rules = rules
        self.progress = progress
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
                reply = await self.answer(query, server)
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
            answer = await self.answer(data, server)
            if self._udp is not None:
                self._udp.sendto(answer, addr)

        task = asyncio.ensure_future(reply())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- answering -----------------------------------------------------------------------------

    async def answer(self, query: bytes, server: tuple[str, int]) -> bytes:
        """The reply to one DNS message: local for local names, else the pod nameserver's."""
        try:
            message = dns.message.from_wire(query)
            question = message.question[0]
        except (dns.exception.DNSException, IndexError):
            return query[:2] + b"\x81\x01" + query[4:12] if len(query) >= 12 else b""
        name = question.name.to_text()
        if self.rules.decide(name) is Side.LOCAL:
            return await self._local(message, question)
        try:
            return await self._remote(query, server)
        except (RemoteOpError, TunnelClosedError, ConnectionError, asyncio.IncompleteReadError):
            failure = dns.message.make_response(message)
            failure.set_rcode(dns.rcode.SERVFAIL)
            return failure.to_wire()

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
