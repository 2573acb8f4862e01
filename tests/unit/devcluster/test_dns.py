"""Unit tests for devcluster.dns: the pure record core and the real UDP/TCP listeners."""

from __future__ import annotations

from collections.abc import Iterator

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from devcluster.dns import ClusterRecords, ServerHandle, start_servers

NOERROR, NXDOMAIN = RCODE.NOERROR, RCODE.NXDOMAIN


def make_records() -> ClusterRecords:
    """A small cluster: a ClusterIP service, a headless StatefulSet service and pods."""
    r = ClusterRecords("cluster.local")
    r.upsert_service("default", "kubernetes", "10.96.0.1", [("https", "TCP", 443)])
    r.upsert_service(
        "default", "web", "10.96.0.10", [("http", "TCP", 80), ("dns", "UDP", 53), ("", "TCP", 81)]
    )
    r.upsert_endpoints("default", "web", [("10.244.0.20", None)], [("http", "TCP", 8080)])
    r.upsert_service("prod", "db", "None", [("pg", "TCP", 5432)])
    r.upsert_endpoints(
        "prod", "db", [("10.244.0.5", "db-0"), ("10.244.0.6", None)], [("pg", "TCP", 15432)]
    )
    r.upsert_pod("prod", "db-0", "10.244.0.5")
    r.upsert_pod("prod", "client", "10.244.0.9")
    return r


@pytest.fixture
def records() -> ClusterRecords:
    return make_records()


def rdata(rrs: list[object]) -> set[str]:
    return {str(rr.rdata) for rr in rrs}  # type: ignore[attr-defined]


WEB = "web.default.svc.cluster.local."
DB = "db.prod.svc.cluster.local."

CASES = [
    # (qname, qtype, rcode, expected answer rdata)
    ("web.default.svc.cluster.local", "A", NOERROR, {"10.96.0.10"}),
    (WEB, "A", NOERROR, {"10.96.0.10"}),
    ("WEB.Default.SVC.Cluster.Local.", "A", NOERROR, {"10.96.0.10"}),
    ("db.prod.svc.cluster.local", "A", NOERROR, {"10.244.0.5", "10.244.0.6"}),
    ("db-0.db.prod.svc.cluster.local", "A", NOERROR, {"10.244.0.5"}),
    ("10-244-0-6.db.prod.svc.cluster.local", "A", NOERROR, {"10.244.0.6"}),
    ("db-9.db.prod.svc.cluster.local", "A", NXDOMAIN, set()),
    ("_http._tcp.web.default.svc.cluster.local", "SRV", NOERROR, {f"0 100 80 {WEB}"}),
    ("_DNS._UDP.web.default.svc.cluster.local", "SRV", NOERROR, {f"0 100 53 {WEB}"}),
    ("_http._udp.web.default.svc.cluster.local", "SRV", NXDOMAIN, set()),
    ("_nope._tcp.web.default.svc.cluster.local", "SRV", NXDOMAIN, set()),
    (WEB, "SRV", NOERROR, {f"0 100 80 {WEB}", f"0 100 53 {WEB}"}),
    (
        "_pg._tcp.db.prod.svc.cluster.local",
        "SRV",
        NOERROR,
        {f"0 100 15432 db-0.{DB}", f"0 100 15432 10-244-0-6.{DB}"},
    ),
    ("_http._tcp.web.default.svc.cluster.local", "A", NOERROR, set()),
    ("10-244-0-9.prod.pod.cluster.local", "A", NOERROR, {"10.244.0.9"}),
    ("1-2-3-4.prod.pod.cluster.local", "A", NOERROR, {"1.2.3.4"}),
    ("1-2-3.prod.pod.cluster.local", "A", NXDOMAIN, set()),
    ("300-2-3-4.prod.pod.cluster.local", "A", NXDOMAIN, set()),
    ("1-2-3-4.ghost.pod.cluster.local", "A", NXDOMAIN, set()),
    ("10.0.96.10.in-addr.arpa", "PTR", NOERROR, {WEB}),
    ("5.0.244.10.in-addr.arpa.", "PTR", NOERROR, {f"db-0.{DB}"}),
    ("9.0.244.10.in-addr.arpa", "PTR", NOERROR, {"10-244-0-9.prod.pod.cluster.local."}),
    ("4.3.2.1.in-addr.arpa", "PTR", NXDOMAIN, set()),
    ("3.2.1.in-addr.arpa", "PTR", NXDOMAIN, set()),
    (WEB, "AAAA", NOERROR, set()),
    (WEB, "TXT", NOERROR, set()),
    ("default.svc.cluster.local", "A", NOERROR, set()),
    ("ghost.svc.cluster.local", "A", NXDOMAIN, set()),
    ("missing.default.svc.cluster.local", "A", NXDOMAIN, set()),
    ("a.b.web.default.svc.cluster.local", "A", NXDOMAIN, set()),
    ("web.default.cluster.local", "A", NXDOMAIN, set()),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "expected"), CASES)
def test_resolve(
    records: ClusterRecords, qname: str, qtype: str, rcode: int, expected: set[str]
) -> None:
    res = records.resolve(qname, qtype)
    assert res.rcode == rcode
    assert rdata(res.answer) == expected
    assert res.authoritative
    owner = qname if qname.endswith(".") else qname + "."
    assert all(str(rr.rname) == owner and rr.ttl == 5 for rr in res.answer)
    if expected:
        assert res.authority == []
    else:
        # NODATA and NXDOMAIN inside our zones carry the zone's SOA for negative caching.
        [soa] = res.authority
        assert QTYPE[soa.rtype] == "SOA"
        assert str(soa.rname) in ("cluster.local.", "in-addr.arpa.")


@pytest.mark.parametrize("qname", ["example.com", "kubernetes.default.svc", "ip6.arpa."])
def test_outside_zones_is_nxdomain_without_soa(records: ClusterRecords, qname: str) -> None:
    res = records.resolve(qname, "A")
    assert (res.rcode, res.answer, res.authority) == (NXDOMAIN, [], [])
    assert not res.authoritative


def test_srv_has_glue_in_additional(records: ClusterRecords) -> None:
    res = records.resolve("_pg._tcp.db.prod.svc.cluster.local", "SRV")
    glue = {(str(rr.rname), str(rr.rdata)) for rr in res.additional}
    assert glue == {(f"db-0.{DB}", "10.244.0.5"), (f"10-244-0-6.{DB}", "10.244.0.6")}


def test_apex_soa(records: ClusterRecords) -> None:
    res = records.resolve("cluster.local", "SOA")
    assert res.rcode == NOERROR
    assert [QTYPE[rr.rtype] for rr in res.answer] == ["SOA"]


def test_answer_packet_flags_and_case(records: ClusterRecords) -> None:
    request = DNSRecord.question("Web.Default.Svc.Cluster.Local", "A")
    reply = DNSRecord.parse(records.answer(request).pack())
    assert reply.header.id == request.header.id
    assert (reply.header.qr, reply.header.aa, reply.header.ra, reply.header.rd) == (1, 1, 1, 1)
    assert reply.header.rcode == NOERROR
    assert [(str(rr.rname), str(rr.rdata)) for rr in reply.rr] == [
        ("Web.Default.Svc.Cluster.Local.", "10.96.0.10")
    ]
    outside = records.answer(DNSRecord.question("example.com", "A"))
    assert (outside.header.rcode, outside.header.aa) == (NXDOMAIN, 0)


def test_updates_and_deletes(records: ClusterRecords) -> None:
    records.upsert_service("default", "web", "10.96.0.11", [("http", "TCP", 80)])
    assert rdata(records.resolve(WEB, "A").answer) == {"10.96.0.11"}
    assert records.resolve("10.0.96.10.in-addr.arpa", "PTR").rcode == NXDOMAIN
    records.delete_service("default", "web")
    assert records.resolve(WEB, "A").rcode == NXDOMAIN
    records.upsert_endpoints("prod", "db", [("10.244.0.7", None)], [("pg", "TCP", 5432)])
    assert rdata(records.resolve(DB, "A").answer) == {"10.244.0.7"}
    records.delete_endpoints("prod", "db")
    res = records.resolve(DB, "A")
    assert (res.rcode, res.answer) == (NOERROR, [])
    records.delete_pod("prod", "client")
    assert records.resolve("9.0.244.10.in-addr.arpa", "PTR").rcode == NXDOMAIN


def test_retain_drops_objects_missing_from_a_relist(records: ClusterRecords) -> None:
    records.retain("pods", [("prod", "db-0")])
    records.retain("services", [("default", "kubernetes")])
    assert records.resolve("9.0.244.10.in-addr.arpa", "PTR").rcode == NXDOMAIN
    assert records.resolve(WEB, "A").rcode == NXDOMAIN
    kube = records.resolve("kubernetes.default.svc.cluster.local", "A")
    assert rdata(kube.answer) == {"10.96.0.1"}


def test_other_domain() -> None:
    r = ClusterRecords("Corp.Example.")
    r.upsert_service("ns", "s", "10.0.0.1", [])
    assert rdata(r.resolve("s.ns.svc.corp.example", "A").answer) == {"10.0.0.1"}
    assert r.resolve("s.ns.svc.cluster.local", "A").rcode == NXDOMAIN


@pytest.fixture
def server() -> Iterator[ServerHandle]:
    handle = start_servers(make_records(), "127.0.0.1", 0)
    try:
        yield handle
    finally:
        handle.stop()


def test_real_udp_and_tcp_server(server: ServerHandle) -> None:
    query = dns.message.make_query("web.default.svc.cluster.local", "A")
    for send in (dns.query.udp, dns.query.tcp):
        reply = send(query, "127.0.0.1", port=server.port, timeout=5)
        assert reply.rcode() == dns.rcode.NOERROR
        [rrset] = reply.answer
        assert {r.to_text() for r in rrset} == {"10.96.0.10"}
        assert rrset.ttl == 5

    srv = dns.message.make_query("_pg._tcp.db.prod.svc.cluster.local", "SRV")
    reply = dns.query.tcp(srv, "127.0.0.1", port=server.port, timeout=5)
    assert {r.to_text() for r in reply.answer[0]} == {
        f"0 100 15432 db-0.{DB}",
        f"0 100 15432 10-244-0-6.{DB}",
    }

    nx = dns.message.make_query("nope.default.svc.cluster.local", "A")
    reply = dns.query.udp(nx, "127.0.0.1", port=server.port, timeout=5)
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_tcp_connection_carries_several_pipelined_queries() -> None:
    """glibc with `options use-vc` sends A and AAAA back to back on one connection."""
    import socket as _socket
    import struct as _struct

    records = ClusterRecords()
    records.upsert_service("shop", "backend", "198.19.0.20", [])
    handle = start_servers(records, "127.0.0.1", 0)
    try:
        queries = [
            DNSRecord.question("backend.shop.svc.cluster.local", qtype).pack()
            for qtype in ("A", "AAAA")
        ]
        with _socket.create_connection(("127.0.0.1", handle.port), timeout=5) as sock:
            sock.sendall(b"".join(_struct.pack("!H", len(q)) + q for q in queries))
            replies = []
            for _ in queries:
                (length,) = _struct.unpack("!H", sock.recv(2, _socket.MSG_WAITALL))
                replies.append(DNSRecord.parse(sock.recv(length, _socket.MSG_WAITALL)))
        assert [str(r.rr[0].rdata) for r in replies if r.rr] == ["198.19.0.20"]
        assert replies[1].header.rcode == RCODE.NOERROR and not replies[1].rr
    finally:
        handle.stop()
