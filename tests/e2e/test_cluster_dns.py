"""Cluster DNS answers at the kube-dns Service IP and never forwards outside names."""

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.e2e.kube import get

DNS_IP = "198.19.0.10"


def _ask(name: str, rdtype: str = "A", tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    if tcp:
        return dns.query.tcp(query, DNS_IP, timeout=3)
    return dns.query.udp(query, DNS_IP, timeout=3)


def test_kube_dns_service_answers_service_names_over_udp_and_tcp() -> None:
    backend_ip = get("service", "backend", "shop")["spec"]["clusterIP"]
    for tcp in (False, True):
        reply = _ask("backend.shop.svc.cluster.local.", tcp=tcp)
        assert reply.rcode() == dns.rcode.NOERROR
        addrs = [rr.address for rrset in reply.answer for rr in rrset]
        assert addrs == [backend_ip]


def test_srv_record_for_named_port() -> None:
    reply = _ask("_http._tcp.backend.shop.svc.cluster.local.", "SRV")
    ports = [rr.port for rrset in reply.answer for rr in rrset]
    assert ports == [80]


def test_outside_names_are_not_forwarded() -> None:
    reply = _ask("example.com.")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert not reply.answer
