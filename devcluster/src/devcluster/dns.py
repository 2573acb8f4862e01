"""Cluster DNS for the devcluster: a small CoreDNS stand-in (Debian ships no CoreDNS).

It implements the Kubernetes DNS-based service discovery spec for one domain plus
``in-addr.arpa`` from Services, Endpoints and Pods watched through the API server. It is
authoritative only: nothing is ever forwarded, names outside its zones get NXDOMAIN.

Run: ``python -m devcluster.dns --kubeconfig PATH --listen IP --port N --domain cluster.local``
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal, NamedTuple

from dnslib import AAAA, OPCODE, PTR, QTYPE, RCODE, RR, SOA, SRV, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer
from kubernetes import client, config, watch

_log = logging.getLogger("devcluster.dns")

TTL = 5
REVERSE_ZONE = "in-addr.arpa"
Kind = Literal["services", "endpoints", "pods"]


class Port(NamedTuple):
    """A service or endpoints port; ``name`` is "" for an unnamed port."""

    name: str
    protocol: str
    port: int


class Address(NamedTuple):
    """A ready endpoint address with its optional ``hostname`` (set by StatefulSets)."""

    ip: str
    hostname: str | None = None


class Answer(NamedTuple):
    """Outcome of a lookup: rcode, the three RR sections and the AA flag."""

    rcode: int
    answer: list[Any]
    authority: list[Any]
    additional: list[Any]
    authoritative: bool = True


@dataclass(frozen=True)
class _Service:
    cluster_ip: str
    ports: tuple[Port, ...]

    @property
    def headless(self) -> bool:
        return self.cluster_ip in ("", "None")


@dataclass(frozen=True)
class _Endpoints:
    addresses: tuple[Address, ...]
    ports: tuple[Port, ...]


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        # Scoped IPv6 ("fe80::1%eth0") parses but cannot go into a record.
        return ipaddress.ip_address(text) if "%" not in text else None
    except ValueError:
        return None


def _ports(ports: Iterable[tuple[str, str, int]]) -> tuple[Port, ...]:
    return tuple(Port(*p) for p in ports)


def _dashed(ip: str) -> str:
    return ip.replace(".", "-").replace(":", "-")


def _addr_rr(owner: str, ip: str) -> Any:
    parsed = _ip(ip)
    if parsed is None:
        return None
    if parsed.version == 4:
        return RR(owner, QTYPE.A, rdata=A(str(parsed)), ttl=TTL)
    return RR(owner, QTYPE.AAAA, rdata=AAAA(str(parsed)), ttl=TTL)


class ClusterRecords:
    """Thread-safe, I/O-free view of the cluster that answers DNS questions about it."""

    def __init__(self, domain: str = "cluster.local") -> None:
        self.domain = domain.strip(".").lower()
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], _Service] = {}
        self._endpoints: dict[tuple[str, str], _Endpoints] = {}
        self._pods: dict[tuple[str, str], str] = {}
        self._serial = int(time.time())

    def upsert_service(
        self, namespace: str, name: str, cluster_ip: str, ports: Iterable[tuple[str, str, int]]
    ) -> None:
        """Add or replace a Service; ``cluster_ip`` "None" (or "") means headless."""
        self._put(self._services, namespace, name, _Service(cluster_ip, _ports(ports)))

    def upsert_endpoints(
        self,
        namespace: str,
        name: str,
        addresses: Iterable[tuple[str, str | None]],
        ports: Iterable[tuple[str, str, int]],
    ) -> None:
        """Add or replace the ready addresses (ip, hostname) of a Service's Endpoints."""
        eps = _Endpoints(tuple(Address(*a) for a in addresses), _ports(ports))
        self._put(self._endpoints, namespace, name, eps)

    def upsert_pod(self, namespace: str, name: str, ip: str) -> None:
        """Record the IP of a running pod (for PTR and namespace existence)."""
        self._put(self._pods, namespace, name, ip)

    def delete_service(self, namespace: str, name: str) -> None:
        """Forget a Service."""
        self._put(self._services, namespace, name, None)

    def delete_endpoints(self, namespace: str, name: str) -> None:
        """Forget an Endpoints object."""
        self._put(self._endpoints, namespace, name, None)

    def delete_pod(self, namespace: str, name: str) -> None:
        """Forget a pod."""
        self._put(self._pods, namespace, name, None)

    def _put(self, table: dict[tuple[str, str], Any], ns: str, name: str, value: object) -> None:
        with self._lock:
            if value is None:
                table.pop((ns.lower(), name.lower()), None)
            else:
                table[(ns.lower(), name.lower())] = value
            self._serial += 1

    def retain(self, kind: Kind, keep: Collection[tuple[str, str]]) -> None:
        """Drop every (namespace, name) of ``kind`` that is not in ``keep``.

        A re-list after a broken watch calls this so objects deleted meanwhile disappear.
        """
        table: dict[tuple[str, str], object] = getattr(self, f"_{kind}")
        keep = {(ns.lower(), n.lower()) for ns, n in keep}
        with self._lock:
            for key in [k for k in table if k not in keep]:
                del table[key]
                self._serial += 1

    def answer(self, request: DNSRecord) -> DNSRecord:
        """Build the reply packet for ``request``; never raises (SERVFAIL on a bug)."""
        reply = request.reply(ra=1, aa=1)
        if request.header.opcode != OPCODE.QUERY or len(request.questions) != 1:
            reply.header.rcode = RCODE.NOTIMP if request.questions else RCODE.FORMERR
            return reply
        try:
            res = self.resolve(str(request.q.qname), QTYPE[request.q.qtype])
        except Exception:
            _log.exception("failed to answer %s", request.q.qname)
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        reply.header.rcode = res.rcode
        reply.header.aa = int(res.authoritative)
        reply.rr, reply.auth, reply.ar = res.answer, res.authority, res.additional
        return reply

    def resolve(self, qname: str, qtype: str) -> Answer:
        """Answer ``qname``/``qtype`` (e.g. "A", "SRV", "ANY"); owner names keep qname's case."""
        owner = qname if qname.endswith(".") else qname + "."
        name = owner.rstrip(".").lower()
        with self._lock:
            zone, found = self._lookup(name, owner)
            if zone is None:
                return Answer(RCODE.NXDOMAIN, [], [], [], authoritative=False)
            if found is None:
                return Answer(RCODE.NXDOMAIN, [], [self._soa(zone)], [])
            rrs = [r for r in found if qtype.upper() in ("ANY", QTYPE[r.rtype])]
            if not rrs:
                return Answer(RCODE.NOERROR, [], [self._soa(zone)], [])
            # Glue for SRV targets spares clients a second round trip, as CoreDNS does.
            extra: dict[tuple[str, str], Any] = {}
            for rr in rrs:
                if rr.rtype == QTYPE.SRV:
                    target = str(rr.rdata.target)
                    for r in self._lookup(target.rstrip("."), target)[1] or []:
                        if r.rtype in (QTYPE.A, QTYPE.AAAA):
                            extra[(target, str(r.rdata))] = r
            return Answer(RCODE.NOERROR, rrs, [], list(extra.values()))

    def _soa(self, zone: str) -> Any:
        times = (self._serial, 7200, 1800, 86400, TTL)
        mname, rname = f"ns.dns.{self.domain}.", f"hostmaster.{self.domain}."
        return RR(zone + ".", QTYPE.SOA, rdata=SOA(mname, rname, times), ttl=TTL)

    def _lookup(self, name: str, owner: str) -> tuple[str | None, list[Any] | None]:
        """Return (zone or None if not ours, records at the name or None if it does not exist)."""
        for zone, handler in ((self.domain, self._forward), (REVERSE_ZONE, self._reverse)):
            if name == zone or name.endswith("." + zone):
                labels = name[: -len(zone)].rstrip(".").split(".") if name != zone else []
                if not labels:
                    return zone, [self._soa(zone)]
                return zone, handler(labels, owner)
        return None, None

    def _namespace_known(self, ns: str) -> bool:
        return any(k[0] == ns for t in (self._services, self._pods) for k in t)

    def _forward(self, labels: list[str], owner: str) -> list[Any] | None:
        kind, rest = labels[-1], labels[:-1]
        if kind not in ("svc", "pod"):
            return None
        if not rest:
            return []
        if len(rest) == 1:
            return [] if self._namespace_known(rest[0]) else None
        if kind == "pod":
            ip = _ip(rest[0].replace("-", ".")) or _ip(rest[0].replace("-", ":"))
            if len(rest) != 2 or ip is None or not self._namespace_known(rest[1]):
                return None
            return [_addr_rr(owner, str(ip))]
        key = (rest[-1], rest[-2])
        svc, eps = self._services.get(key), self._endpoints.get(key)
        if svc is None:
            return None
        addrs = eps.addresses if eps else ()
        base = f"{key[1]}.{key[0]}.svc.{self.domain}."
        extra = rest[:-2]
        if not extra:
            ips = [a.ip for a in addrs] if svc.headless else [svc.cluster_ip]
            found = [_addr_rr(owner, ip) for ip in ips]
            return [r for r in found if r is not None] + self._srv(owner, svc, eps, base, None)
        if len(extra) == 1:
            hits = [a.ip for a in addrs if extra[0] in (a.hostname, _dashed(a.ip))]
            return [_addr_rr(owner, ip) for ip in hits] or None
        if len(extra) == 2 and all(x.startswith("_") for x in extra):
            want = (extra[0][1:], extra[1][1:])
            if not any((p.name.lower(), p.protocol.lower()) == want for p in svc.ports):
                return None
            return self._srv(owner, svc, eps, base, want)
        return None

    def _srv(
        self,
        owner: str,
        svc: _Service,
        eps: _Endpoints | None,
        base: str,
        want: tuple[str, str] | None,
    ) -> list[Any]:
        # Headless SRV points at each endpoint (on its target port), like CoreDNS does.
        if svc.headless:
            ports = eps.ports if eps else ()
            targets = [
                f"{a.hostname or _dashed(a.ip)}.{base}" for a in (eps.addresses if eps else ())
            ]
        else:
            ports, targets = svc.ports, [base]
        return [
            RR(owner, QTYPE.SRV, rdata=SRV(0, 100, p.port, t), ttl=TTL)
            for p in ports
            if (want is None and p.name) or (p.name.lower(), p.protocol.lower()) == want
            for t in targets
        ]

    def _reverse(self, labels: list[str], owner: str) -> list[Any] | None:
        ip = _ip(".".join(reversed(labels))) if len(labels) == 4 else None
        if ip is None:
            return None
        text = str(ip)
        names = sorted(
            f"{n}.{ns}.svc.{self.domain}."
            for (ns, n), s in self._services.items()
            if s.cluster_ip == text
        )
        names += sorted(
            f"{a.hostname}.{n}.{ns}.svc.{self.domain}."
            for (ns, n), e in self._endpoints.items()
            for a in e.addresses
            if a.ip == text and a.hostname
        )
        names += sorted(
            f"{_dashed(text)}.{ns}.pod.{self.domain}."
            for (ns, _), pod_ip in self._pods.items()
            if pod_ip == text
        )
        return [RR(owner, QTYPE.PTR, rdata=PTR(names[0]), ttl=TTL)] if names else None


class _Resolver(BaseResolver):  # type: ignore[misc]
    def __init__(self, records: ClusterRecords) -> None:
        self.records = records

    def resolve(self, request: DNSRecord, handler: Any) -> DNSRecord:
        return self.records.answer(request)


class _Handler(DNSHandler):  # type: ignore[misc]
    # Clients that did not negotiate EDNS only accept 512 bytes; big replies set TC.
    udplen = 512


class _TCPHandler(DNSHandler):  # type: ignore[misc]
    """Several queries per connection (RFC 7766): glibc with `options use-vc` pipelines its A
    and AAAA queries on one connection; dnslib's handler would answer one and hang up."""

    def handle(self) -> None:
        self.protocol = "tcp"  # get_reply consults it (no truncation over TCP)
        sock = self.request
        sock.settimeout(30)
        while True:
            header = _recv_exact(sock, 2)
            if header is None:
                return
            data = _recv_exact(sock, struct.unpack("!H", header)[0])
            if data is None:
                return
            reply: bytes = self.get_reply(data)
            sock.sendall(struct.pack("!H", len(reply)) + reply)


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    buf = b""
    try:
        while len(buf) < size:
            chunk = sock.recv(size - len(buf))
            if not chunk:
                return None
            buf += chunk
    except OSError:
        return None
    return buf


class ServerHandle:
    """Running UDP and TCP listeners; ``port`` is the bound port (useful with port 0)."""

    def __init__(self, udp: DNSServer, tcp: DNSServer, port: int) -> None:
        self._servers = (udp, tcp)
        self.port = port

    def stop(self) -> None:
        """Stop both listeners and close their sockets."""
        for server in self._servers:
            server.stop()
            server.server.server_close()


def start_servers(
    records: ClusterRecords, listen: str, port: int, *, log_queries: bool = False
) -> ServerHandle:
    """Serve ``records`` over UDP and TCP on (listen, port) in daemon threads.

    With ``port`` 0 a free port is picked that is free for both protocols.
    """
    resolver = _Resolver(records)
    logger = DNSLogger(log="request,reply,error" if log_queries else "error", prefix=False)
    logger.logf = _log.info
    for attempt in range(20):
        udp = DNSServer(resolver, address=listen, port=port, logger=logger, handler=_Handler)
        bound: int = udp.server.server_address[1]
        try:
            tcp = DNSServer(
                resolver, address=listen, port=bound, tcp=True, logger=logger, handler=_TCPHandler
            )
        except OSError:
            udp.server.server_close()
            if port or attempt == 19:
                raise
            continue
        udp.start_thread()
        tcp.start_thread()
        return ServerHandle(udp, tcp, bound)
    raise AssertionError("unreachable")


class KubeWatcher:
    """List+watch Services, Endpoints and Pods of all namespaces into a ClusterRecords.

    Each kind runs in its own daemon thread; any watch failure (410 Gone, apiserver
    restart, timeouts) leads to a re-list after ``backoff`` seconds, forever. ``ready``
    is set once all three kinds have been listed.
    """

    def __init__(self, records: ClusterRecords, kubeconfig: str, backoff: float = 2.0) -> None:
        cfg = client.Configuration()
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
        self._api = client.CoreV1Api(client.ApiClient(cfg))
        self._records = records
        self._backoff = backoff
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._listed: set[str] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the three watch threads."""
        loops: dict[Kind, tuple[Callable[..., Any], Callable[[str, Any], None]]] = {
            "services": (self._api.list_service_for_all_namespaces, self._apply_service),
            "endpoints": (self._api.list_endpoints_for_all_namespaces, self._apply_endpoints),
            "pods": (self._api.list_pod_for_all_namespaces, self._apply_pod),
        }
        for kind, (list_fn, apply) in loops.items():
            args = (kind, list_fn, apply)
            threading.Thread(target=self._run, args=args, name=f"dns-{kind}", daemon=True).start()

    def stop(self) -> None:
        """Ask the threads to end; they are daemons, so a blocked watch never holds up exit."""
        self._stopping.set()

    def _run(
        self, kind: Kind, list_fn: Callable[..., Any], apply: Callable[[str, Any], None]
    ) -> None:
        while not self._stopping.is_set():
            try:
                listing = list_fn(_request_timeout=30)
                for obj in listing.items:
                    apply("ADDED", obj)
                keys = [(o.metadata.namespace, o.metadata.name) for o in listing.items]
                self._records.retain(kind, keys)
                _log.info("listed %d %s", len(keys), kind)
                self._mark_listed(kind)
                rv = listing.metadata.resource_version
                while not self._stopping.is_set():
                    w = watch.Watch()  # type: ignore[no-untyped-call]
                    # Server-side timeout plus a client read timeout catch half-dead connections.
                    for event in w.stream(  # type: ignore[no-untyped-call]
                        list_fn,
                        resource_version=rv,
                        allow_watch_bookmarks=True,
                        timeout_seconds=300,
                        _request_timeout=(10, 330),
                    ):
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            apply(event["type"], event["object"])
                    rv = w.resource_version or rv
            except Exception as exc:  # every failure is healed by a re-list
                _log.warning(
                    "%s watch failed (%.200s); re-listing in %gs", kind, exc, self._backoff
                )
                self._stopping.wait(self._backoff)

    def _mark_listed(self, kind: str) -> None:
        with self._lock:
            self._listed.add(kind)
            if len(self._listed) == 3 and not self.ready.is_set():
                _log.info("initial list of services, endpoints and pods complete")
                self.ready.set()

    def _apply_service(self, event: str, svc: Any) -> None:
        ns, name = svc.metadata.namespace, svc.metadata.name
        if event == "DELETED":
            self._records.delete_service(ns, name)
            return
        ports = [(p.name or "", p.protocol or "TCP", p.port) for p in svc.spec.ports or []]
        self._records.upsert_service(ns, name, svc.spec.cluster_ip or "None", ports)

    def _apply_endpoints(self, event: str, eps: Any) -> None:
        ns, name = eps.metadata.namespace, eps.metadata.name
        if event == "DELETED":
            self._records.delete_endpoints(ns, name)
            return
        addresses: dict[str, str | None] = {}
        ports: set[tuple[str, str, int]] = set()
        for subset in eps.subsets or []:
            for a in subset.addresses or []:
                addresses[a.ip] = a.hostname
            ports.update((p.name or "", p.protocol or "TCP", p.port) for p in subset.ports or [])
        self._records.upsert_endpoints(ns, name, list(addresses.items()), sorted(ports))

    def _apply_pod(self, event: str, pod: Any) -> None:
        ns, name, ip = pod.metadata.namespace, pod.metadata.name, pod.status.pod_ip
        # Host-network pods share the node IP and finished pods may have had theirs reused.
        gone = event == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
        if gone or not ip or pod.spec.host_network:
            self._records.delete_pod(ns, name)
        else:
            self._records.upsert_pod(ns, name, ip)


def serve(
    kubeconfig: str, listen: str, port: int, domain: str, *, log_queries: bool = False
) -> None:
    """Watch the cluster, then answer DNS on (listen, port) until SIGTERM or SIGINT."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        _log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    records = ClusterRecords(domain)
    watcher = KubeWatcher(records, kubeconfig)
    watcher.start()
    _log.info("waiting for the initial list of services, endpoints and pods")
    # Short waits keep the main thread responsive to signals.
    while not watcher.ready.wait(0.5):
        if stop.is_set():
            watcher.stop()
            return
    handle = start_servers(records, listen, port, log_queries=log_queries)
    _log.info(
        "serving %s and %s on %s:%d (udp+tcp)", records.domain, REVERSE_ZONE, listen, handle.port
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        watcher.stop()
        _log.info("stopped")


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m devcluster.dns", description="Authoritative cluster DNS for devcluster."
    )
    parser.add_argument("--kubeconfig", required=True, help="kubeconfig to watch the cluster with")
    parser.add_argument("--listen", default="127.0.0.1", help="address to serve on")
    parser.add_argument("--port", type=int, default=53, help="UDP and TCP port (0: any free)")
    parser.add_argument("--domain", default="cluster.local", help="cluster domain")
    parser.add_argument("--log-queries", action="store_true", help="log every query and reply")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s dns %(levelname)s %(message)s"
    )
    # urllib3 warns on each connection retry; the watcher's own line per failure is enough.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    serve(args.kubeconfig, args.listen, args.port, args.domain, log_queries=args.log_queries)
    return 0


if __name__ == "__main__":
    sys.exit(main())
