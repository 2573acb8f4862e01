"""Unit tests for tether.agent.resolver against a real DNS server on 127.0.0.1 (dnslib)."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from dnslib import QTYPE, RCODE, RR, DNSRecord
from dnslib.server import DNSLogger, DNSServer

from tether.agent.netns import NetnsExecutor
from tether.agent.resolver import (
    NameNotFound,
    PodResolver,
    ResolvConf,
    ResolveError,
    ResolveTimeoutError,
    parse_hosts,
    parse_resolv_conf,
    search_candidates,
)

SEARCH = "shop.svc.cluster.local svc.cluster.local cluster.local"
BIG_TXT = " ".join(f'"{"x" * 200}{i}"' for i in range(5))  # > 512 bytes: only over TCP

ZONE = f"""
backend.shop.svc.cluster.local. 5 IN A 198.51.100.10
dual.shop.svc.cluster.local. 5 IN A 198.51.100.11
dual.shop.svc.cluster.local. 5 IN AAAA 2001:db8::11
v6only.shop.svc.cluster.local. 5 IN AAAA 2001:db8::12
alias.shop.svc.cluster.local. 5 IN CNAME backend.shop.svc.cluster.local.
flaky.svc.cluster.local. 5 IN A 198.51.100.13
_http._tcp.backend.shop.svc.cluster.local. 5 IN SRV 0 100 80 backend.shop.svc.cluster.local.
txt.shop.svc.cluster.local. 5 IN TXT "hello world"
big.shop.svc.cluster.local. 5 IN TXT {BIG_TXT}
example.com. 5 IN A 198.51.100.20
"""


@dataclass
class FakeDNS:
    """Answers from ZONE, SERVFAIL for "broken*" and "flaky.shop*"; logs the queries."""

    records: list[RR] = field(default_factory=lambda: RR.fromZone(ZONE))
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        q = request.q
        qname, qtype = str(q.qname).lower(), QTYPE[q.qtype]
        self.log.append((qname, qtype, handler.protocol))
        reply = request.reply()
        if qname.startswith(("broken", "flaky.shop")):
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if qname.startswith("big.") and handler.protocol == "udp":
            reply.header.tc = 1  # as a server does when the answer does not fit 512 bytes
            return reply
        names = {str(rr.rname).lower() for rr in self.records}
        for rr in self.records:
            if str(rr.rname).lower() != qname:
                continue
            if QTYPE[rr.rtype] in (qtype, "CNAME"):
                reply.add_answer(rr)
            if QTYPE[rr.rtype] == "CNAME" and qtype != "CNAME":
                target = str(rr.rdata.label).lower()
                reply.add_answer(
                    *(
                        r
                        for r in self.records
                        if str(r.rname).lower() == target and QTYPE[r.rtype] == qtype
                    )
                )
        if qname not in names:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

    def names(self) -> list[str]:
        return [name for name, _, _ in self.log]


def _serve(resolver: FakeDNS) -> tuple[int, list[DNSServer]]:
    quiet = DNSLogger("-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)
    for _ in range(20):
        udp = DNSServer(resolver, address="127.0.0.1", port=0, logger=quiet)
        port = udp.server.server_address[1]
        try:
            tcp = DNSServer(resolver, address="127.0.0.1", port=port, tcp=True, logger=quiet)
        except OSError:
            udp.server.server_close()
            continue
        for server in (udp, tcp):
            server.start_thread()
        return port, [udp, tcp]
    raise RuntimeError("no free port for UDP and TCP at once")


@dataclass
class Env:
    dns: FakeDNS
    port: int
    root: Path
    resolver: PodResolver


@pytest.fixture(scope="module")
def executor() -> Iterator[NetnsExecutor]:
    ex = NetnsExecutor(None, max_workers=4)
    yield ex
    ex.shutdown()


@pytest.fixture(scope="module")
def dns_server() -> Iterator[tuple[FakeDNS, int]]:
    fake = FakeDNS()
    port, servers = _serve(fake)
    try:
        yield fake, port
    finally:
        for server in servers:
            server.stop()
            server.server.server_close()


def write_root(root: Path, resolv_conf: str, hosts: str) -> None:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "resolv.conf").write_text(resolv_conf)
    (root / "etc" / "hosts").write_text(hosts)


HOSTS = """# kubelet-managed hosts file
127.0.0.1\tlocalhost
::1\tlocalhost ip6-localhost
198.51.100.99\tfrontend-0.shop frontend-0  # the pod itself
198.51.100.98 dual.shop.svc.cluster.local
not-an-ip bogus
"""


@pytest.fixture
def env(tmp_path: Path, dns_server: tuple[FakeDNS, int], executor: NetnsExecutor) -> Iterator[Env]:
    fake, port = dns_server
    write_root(
        tmp_path,
        f"nameserver 127.0.0.1\nsearch {SEARCH}\noptions ndots:5 timeout:2 attempts:1\n",
        HOSTS,
    )
    fake.log.clear()
    yield Env(fake, port, tmp_path, PodResolver(tmp_path, executor, port=port))


async def test_short_name_resolves_through_the_search_list(env: Env) -> None:
    assert await env.resolver.resolve("backend") == ["198.51.100.10"]
    assert env.dns.names() == ["backend.shop.svc.cluster.local."] * 2  # A and AAAA
    assert await env.resolver.resolve("backend.shop") == ["198.51.100.10"]
    assert await env.resolver.resolve("alias", socket.AF_INET) == ["198.51.100.10"]


async def test_a_before_aaaa_and_family_filters(env: Env) -> None:
    assert await env.resolver.resolve("dual.shop") == ["198.51.100.11", "2001:db8::11"]
    assert await env.resolver.resolve("dual.shop", socket.AF_INET6) == ["2001:db8::11"]
    assert await env.resolver.resolve("v6only") == ["2001:db8::12"]
    with pytest.raises(NameNotFound) as err:
        await env.resolver.resolve("v6only", socket.AF_INET)
    assert err.value.errno == socket.EAI_NODATA


async def test_search_order_with_few_dots(env: Env) -> None:
    assert await env.resolver.resolve("example.com", socket.AF_INET) == ["198.51.100.20"]
    assert env.dns.names() == [
        "example.com.shop.svc.cluster.local.",
        "example.com.svc.cluster.local.",
        "example.com.cluster.local.",
        "example.com.",
    ]


async def test_absolute_name_skips_the_search_list(env: Env) -> None:
    assert await env.resolver.resolve("example.com.", socket.AF_INET) == ["198.51.100.20"]
    assert env.dns.names() == ["example.com."]
    with pytest.raises(NameNotFound):
        await env.resolver.resolve("backend.", socket.AF_INET)
    assert env.dns.names()[1:] == ["backend."]


async def test_hosts_file_wins_and_is_reread(env: Env) -> None:
    assert await env.resolver.resolve("dual.shop.svc.cluster.local") == ["198.51.100.98"]
    assert await env.resolver.resolve("Frontend-0") == ["198.51.100.99"]
    assert await env.resolver.resolve("localhost") == ["127.0.0.1", "::1"]
    assert await env.resolver.resolve("localhost", socket.AF_INET6) == ["::1"]
    assert env.dns.log == []
    (env.root / "etc" / "hosts").write_text("198.51.100.97 frontend-0 backend\n")
    assert await env.resolver.resolve("backend") == ["198.51.100.97"]
    assert await env.resolver.resolve("dual.shop.svc.cluster.local") == [
        "198.51.100.11",
        "2001:db8::11",
    ]


async def test_a_hosts_file_that_is_not_a_file_is_ignored(env: Env) -> None:
    assert await env.resolver.resolve("frontend-0") == ["198.51.100.99"]
    hosts = env.root / "etc" / "hosts"
    hosts.unlink()
    os.mkfifo(hosts)  # opening or reading it must not hang
    with pytest.raises(NameNotFound):
        await env.resolver.resolve("frontend-0.", socket.AF_INET)
    hosts.unlink()
    with pytest.raises(NameNotFound):
        await env.resolver.resolve("frontend-0.", socket.AF_INET)


async def test_resolv_conf_is_reread(env: Env) -> None:
    (env.root / "etc" / "resolv.conf").write_text(
        "nameserver 127.0.0.1\nsearch svc.cluster.local\noptions ndots:1 timeout:1\n"
    )
    assert env.resolver.config().search == ("svc.cluster.local",)
    assert await env.resolver.resolve("example.com", socket.AF_INET) == ["198.51.100.20"]
    assert env.dns.names() == ["example.com."]  # enough dots now: as is first


async def test_nxdomain_everywhere(env: Env) -> None:
    with pytest.raises(NameNotFound) as err:
        await env.resolver.resolve("nope")
    assert isinstance(err.value, socket.gaierror)
    assert err.value.errno == socket.EAI_NONAME
    assert len(env.dns.log) == 2 * 4  # A and AAAA for three search domains and as is


async def test_servfail_moves_on_then_fails_temporarily(env: Env) -> None:
    # flaky.shop.svc.cluster.local fails, flaky.svc.cluster.local answers.
    assert await env.resolver.resolve("flaky", socket.AF_INET) == ["198.51.100.13"]
    with pytest.raises(ResolveError) as err:
        await env.resolver.resolve("broken.", socket.AF_INET)
    assert not isinstance(err.value, NameNotFound | ResolveTimeoutError)
    assert err.value.errno == socket.EAI_AGAIN


async def test_ip_literals_need_no_query(env: Env) -> None:
    assert await env.resolver.resolve("198.51.100.7") == ["198.51.100.7"]
    assert await env.resolver.resolve("2001:DB8::1") == ["2001:db8::1"]
    assert await env.resolver.resolve("::1", socket.AF_INET6) == ["::1"]
    with pytest.raises(ResolveError) as err:
        await env.resolver.resolve("::1", socket.AF_INET)
    assert err.value.errno == socket.EAI_ADDRFAMILY
    with pytest.raises(ResolveError) as err:
        await env.resolver.resolve("backend", socket.AF_UNIX)
    assert err.value.errno == socket.EAI_FAMILY
    assert env.dns.log == []


async def test_raw_queries(env: Env) -> None:
    assert await env.resolver.query("_http._tcp.backend", "SRV") == [
        "0 100 80 backend.shop.svc.cluster.local."
    ]
    assert await env.resolver.query("txt", "txt") == ['"hello world"']
    assert await env.resolver.query("backend", "TXT") == []  # exists, no such records
    with pytest.raises(NameNotFound):
        await env.resolver.query("nope", "SRV")


async def test_a_truncated_answer_is_retried_over_tcp(env: Env) -> None:
    records = await env.resolver.query("big", "TXT")
    assert len(records) == 1
    assert records[0].count("x" * 200) == 5
    assert [p for n, _, p in env.dns.log if n.startswith("big.")] == ["udp", "tcp"]


async def test_concurrent_lookups(env: Env) -> None:
    results = await asyncio.gather(*(env.resolver.resolve("backend") for _ in range(10)))
    assert results == [["198.51.100.10"]] * 10


async def test_a_silent_server_times_out(tmp_path: Path, executor: NetnsExecutor) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        write_root(tmp_path, "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n", "")
        resolver = PodResolver(tmp_path, executor, port=silent.getsockname()[1])
        start = time.monotonic()
        with pytest.raises(ResolveTimeoutError) as err:
            await resolver.resolve("backend.")
        assert err.value.errno == socket.EAI_AGAIN
        assert time.monotonic() - start < 3
    finally:
        silent.close()


async def test_missing_files_mean_glibc_defaults(tmp_path: Path, executor: NetnsExecutor) -> None:
    resolver = PodResolver(tmp_path, executor)
    assert resolver.config() == ResolvConf()
    assert await resolver.resolve("198.51.100.1") == ["198.51.100.1"]


def test_parse_resolv_conf() -> None:
    conf = parse_resolv_conf(
        "# comment\n; other comment\nnameserver 198.51.100.1\nnameserver bogus\n"
        "nameserver 2001:db8::53\nnameserver 198.51.100.2\nnameserver 198.51.100.3\n"
        "domain ignored.local\nsearch a.local b.local. \n"
        "options ndots:99 timeout:0 attempts:3 rotate edns0 unknown:1 ndots:x\n"
    )
    assert conf == ResolvConf(
        nameservers=("198.51.100.1", "2001:db8::53", "198.51.100.2"),
        search=("a.local", "b.local"),
        ndots=15,
        timeout=1.0,
        attempts=3,
        rotate=True,
        edns0=True,
    )
    assert parse_resolv_conf("search x\ndomain y\n").search == ("y",)
    assert parse_resolv_conf("options ndots:0").ndots == 0


def test_search_candidates() -> None:
    k8s = ResolvConf(search=tuple(SEARCH.split()), ndots=5)
    assert search_candidates("backend", k8s) == [
        "backend.shop.svc.cluster.local.",
        "backend.svc.cluster.local.",
        "backend.cluster.local.",
        "backend.",
    ]
    assert search_candidates("a.b.c.d.e.f", k8s)[0] == "a.b.c.d.e.f."
    assert search_candidates("x.", k8s) == ["x."]
    assert search_candidates("x", ResolvConf()) == ["x."]


def test_parse_hosts() -> None:
    assert parse_hosts(HOSTS) == {
        "localhost": ["127.0.0.1", "::1"],
        "ip6-localhost": ["::1"],
        "frontend-0.shop": ["198.51.100.99"],
        "frontend-0": ["198.51.100.99"],
        "dual.shop.svc.cluster.local": ["198.51.100.98"],
    }
