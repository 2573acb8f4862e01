"""tether.local.proxies.dns_proxy.DnsProxy.answer: which side answers each query, and what the
name cache learns from the answer. The pod's nameserver is a fake tunnel; a local nameserver is a
responder on 127.0.0.1 run by the test."""

from __future__ import annotations

import asyncio
import io
import struct
from collections.abc import AsyncIterator
from typing import Any, cast

import dns.message
import dns.rcode
import dns.rrset
import pytest

from tether.config.models import DnsConfig, NetworkConfig, OutgoingConfig
from tether.local.policy.names import NameCache
from tether.local.policy.rules import DnsRules
from tether.local.proxies.dns_proxy import DnsProxy
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel, TunnelClosedError

POD_NS = ("198.19.0.10", 53)
_LEN = struct.Struct("!H")


def query(name: str) -> bytes:
    return dns.message.make_query(name, "A").to_wire()


def answer_for(wire: bytes, address: str) -> bytes:
    request = dns.message.from_wire(wire)
    response = dns.message.make_response(request)
    name = request.question[0].name
    response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
    return response.to_wire()


class PodStream:
    """A tunnel stream to the pod's nameserver: answers each query with `address`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._reply = b""

    async def write(self, data: bytes) -> None:
        reply = answer_for(data[_LEN.size :], self.address)
        self._reply = _LEN.pack(len(reply)) + reply

    async def read(self) -> bytes:
        reply, self._reply = self._reply, b""
        return reply

    def reset(self, *args: Any) -> None:
        pass


class PodTunnel:
    """Opens streams to the pod; records where to. `broken` makes it fail as a lost agent."""

    def __init__(self, address: str = "198.19.0.77", broken: bool = False, moves: int = 0) -> None:
        self.address = address
        self.broken = broken
        self.moves = moves  # this many queries meet the agent going away under them
        self.opened: list[tuple[str, int]] = []
        self.closed = False
        self.waited = 0

    async def wait_connected(self, timeout: float) -> bool:
        self.waited += 1
        return not self.broken

    async def open_stream(self, kind: str, args: dict[str, Any]) -> PodStream:
        assert kind == "tcp"
        if self.moves:
            self.moves -= 1
            raise TunnelClosedError("the pod went away")
        if self.broken:
            raise TunnelClosedError("gone")
        self.opened.append((args["host"], args["port"]))
        return PodStream(self.address)


class LocalNameserver(asyncio.DatagramProtocol):
    """A UDP and TCP responder on 127.0.0.1 answering every query with 192.0.2.53 (or not at
    all, when `silent`)."""

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent
        self.queries = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.queries += 1
        if not self.silent and self.transport is not None:
            self.transport.sendto(answer_for(data, "192.0.2.53"), addr)

    async def on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        size = _LEN.unpack(await reader.readexactly(2))[0]
        reply = answer_for(await reader.readexactly(size), "192.0.2.54")
        self.queries += 1
        writer.write(_LEN.pack(len(reply)) + reply)
        await writer.drain()
        writer.close()


@pytest.fixture
async def local_ns() -> AsyncIterator[tuple[LocalNameserver, int, int]]:
    """(responder, its UDP port, its TCP port), on 127.0.0.1."""
    responder = LocalNameserver()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: responder, local_addr=("127.0.0.1", 0)
    )
    server = await asyncio.start_server(responder.on_tcp, "127.0.0.1", 0)
    try:
        yield responder, transport.get_extra_info("sockname")[1], server.sockets[0].getsockname()[1]
    finally:
        transport.close()
        server.close()


def proxy(
    tunnel: PodTunnel,
    *,
    dns: DnsConfig | None = None,
    outgoing: OutgoingConfig | None = None,
    pod_nameserver: str | None = POD_NS[0],
    timeout: float = 5.0,
) -> tuple[DnsProxy, NameCache]:
    network = NetworkConfig(dns=dns or DnsConfig(), outgoing=outgoing or OutgoingConfig())
    names = NameCache()
    responder = DnsProxy(
        cast(Tunnel, tunnel),
        DnsRules(network),
        Progress(0, io.StringIO()),
        names=names,
        pod_nameserver=pod_nameserver,
        timeout=timeout,
    )
    return responder, names


def addresses(wire: bytes) -> list[str]:
    message = dns.message.from_wire(wire)
    return [r.to_text() for rrset in message.answer for r in rrset]


def rcode(wire: bytes) -> int:
    return int(dns.message.from_wire(wire).rcode())


async def test_through_the_pod_a_query_goes_to_the_nameserver_asked() -> None:
    tunnel = PodTunnel()
    responder, names = proxy(tunnel)
    reply = await responder.answer(query("backend.shop.svc.cluster.local"), POD_NS)
    assert addresses(reply) == ["198.19.0.77"]
    assert tunnel.opened == [POD_NS]
    assert names.names("198.19.0.77") == ("backend.shop.svc.cluster.local",)


async def test_through_the_pod_a_local_name_uses_this_machines_resolver() -> None:
    tunnel = PodTunnel()
    responder, names = proxy(tunnel, outgoing=OutgoingConfig(local=["*.localhost"]))
    reply = await responder.answer(query("localhost"), POD_NS)
    assert "127.0.0.1" in addresses(reply)
    assert tunnel.opened == []
    assert names.names("127.0.0.1") == ("localhost",)


@pytest.mark.parametrize(("proto", "address"), [("udp", "192.0.2.53"), ("tcp", "192.0.2.54")])
async def test_resolving_locally_a_query_goes_as_it_is_to_the_local_nameserver(
    local_ns: tuple[LocalNameserver, int, int], proto: str, address: str
) -> None:
    responder_ns, udp_port, tcp_port = local_ns
    tunnel = PodTunnel()
    responder, names = proxy(tunnel, dns=DnsConfig(enabled=False))
    port = udp_port if proto == "udp" else tcp_port
    reply = await responder.answer(query("example.test"), ("127.0.0.1", port), proto)  # type: ignore[arg-type]
    assert addresses(reply) == [address]
    assert responder_ns.queries == 1 and tunnel.opened == []
    assert names.names(address) == ("example.test",)


async def test_resolving_locally_a_remote_name_goes_to_the_pods_nameserver(
    local_ns: tuple[LocalNameserver, int, int],
) -> None:
    responder_ns, udp_port, _ = local_ns
    tunnel = PodTunnel()
    outgoing = OutgoingConfig(mode="local", remote=["*.svc.cluster.local"])
    responder, names = proxy(tunnel, dns=DnsConfig(enabled=False), outgoing=outgoing)
    reply = await responder.answer(
        query("db.shop.svc.cluster.local"), ("127.0.0.1", udp_port), "udp"
    )
    assert addresses(reply) == ["198.19.0.77"]
    assert tunnel.opened == [POD_NS] and responder_ns.queries == 0
    assert names.names("198.19.0.77") == ("db.shop.svc.cluster.local",)


@pytest.mark.parametrize(
    ("setup", "why"),
    [
        (
            {"dns": DnsConfig(enabled=False, remote=["*"]), "pod_nameserver": None},
            "no pod nameserver",
        ),
        ({"broken": True}, "the agent is gone"),
        ({"dns": DnsConfig(enabled=False), "silent": True, "timeout": 0.05}, "no local answer"),
    ],
)
async def test_a_query_nobody_answers_fails_with_servfail(
    local_ns: tuple[LocalNameserver, int, int], setup: dict[str, Any], why: str
) -> None:
    responder_ns, udp_port, _ = local_ns
    responder_ns.silent = setup.pop("silent", False)
    tunnel = PodTunnel(broken=setup.pop("broken", False))
    responder, names = proxy(tunnel, **setup)
    reply = await responder.answer(query("x.test"), ("127.0.0.1", udp_port), "udp")
    assert rcode(reply) == dns.rcode.SERVFAIL, why
    assert len(names) == 0


async def test_a_query_the_pod_went_away_under_is_asked_again_on_the_next() -> None:
    # A session following its workload: the agent of the old pod is gone, the new one is up.
    tunnel = PodTunnel(moves=1)
    responder, _ = proxy(tunnel)
    reply = await responder.answer(query("backend.shop.svc.cluster.local"), POD_NS)
    assert addresses(reply) == ["198.19.0.77"] and tunnel.waited == 1
    # Once only: an agent that keeps failing gets SERVFAIL.
    tunnel = PodTunnel(moves=2)
    responder, _ = proxy(tunnel)
    reply = await responder.answer(query("backend.shop.svc.cluster.local"), POD_NS)
    assert rcode(reply) == dns.rcode.SERVFAIL


async def test_a_malformed_query_gets_a_format_error_and_teaches_nothing() -> None:
    responder, names = proxy(PodTunnel())
    reply = await responder.answer(b"\x12\x34" + b"\x01\x00" + b"\x00" * 8, POD_NS)
    assert reply[:2] == b"\x12\x34" and reply[3] & 0x0F == dns.rcode.FORMERR
    assert await responder.answer(b"\x01", POD_NS) == b""
    assert len(names) == 0
