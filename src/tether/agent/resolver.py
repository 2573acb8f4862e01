"""Name resolution the way the target pod does it.

The pod's /etc/hosts is consulted first, then its /etc/resolv.conf nameservers with glibc's
search-list rules (ndots, search, timeout, attempts, rotate, edns0). Queries are sent from the
executor's threads, so they leave from the target's network namespace. dnspython is imported
on first use, in a worker thread, to keep the agent's start-up fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

from tether.agent.files import RootFS
from tether.agent.netns import NetnsExecutor

if TYPE_CHECKING:
    import dns.resolver

T = TypeVar("T")

# glibc's limits (resolv.h): MAXNS, RES_MAXNDOTS, RES_MAXRETRANS, RES_MAXRETRY.
_MAX_NAMESERVERS = 3
_MAX_NDOTS = 15
_MAX_TIMEOUT = 30
_MAX_ATTEMPTS = 5
_MAX_FILE = 1 << 20

_VERSIONS: dict[int, tuple[int, ...]] = {
    socket.AF_UNSPEC: (4, 6),
    socket.AF_INET: (4,),
    socket.AF_INET6: (6,),
}


class ResolveError(socket.gaierror):
    """A name could not be resolved; `errno` is an EAI_* code like getaddrinfo's.

    Raised as is (EAI_AGAIN) when every nameserver failed (SERVFAIL, REFUSED, unreachable).
    """


class NameNotFound(ResolveError):  # noqa: N818 (the agent protocol's name)
    """No such name (EAI_NONAME), or it has no records of the asked type (EAI_NODATA)."""


class ResolveTimeoutError(ResolveError):
    """The nameservers did not answer in time (EAI_AGAIN)."""


@dataclass(frozen=True)
class ResolvConf:
    """What the resolver reads from resolv.conf, with glibc's defaults."""

    nameservers: tuple[str, ...] = ("127.0.0.1",)
    search: tuple[str, ...] = ()
    ndots: int = 1
    timeout: float = 5.0
    attempts: int = 2
    rotate: bool = False
    edns0: bool = False


def _option(value: str, low: int, high: int, default: int) -> int:
    try:
        return max(low, min(int(value), high))
    except ValueError:
        return default


def parse_resolv_conf(text: str) -> ResolvConf:
    """Parse resolv.conf(5) text as glibc does (unknown lines and options are ignored)."""
    nameservers: list[str] = []
    search: list[str] = []
    ndots, timeout, attempts, rotate, edns0 = 1, 5, 2, False, False
    for line in text.splitlines():
        words = line.split()
        if not words or words[0][0] in "#;":
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args and len(nameservers) < _MAX_NAMESERVERS:
            with contextlib.suppress(ValueError):
                nameservers.append(str(ipaddress.ip_address(args[0])))
        elif key in ("search", "domain"):
            # The last search or domain line wins.
            search = [d.rstrip(".") for d in args if d.rstrip(".")]
        elif key == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                if name == "ndots":
                    ndots = _option(value, 0, _MAX_NDOTS, ndots)
                elif name == "timeout":
                    timeout = _option(value, 1, _MAX_TIMEOUT, timeout)
                elif name == "attempts":
                    attempts = _option(value, 1, _MAX_ATTEMPTS, attempts)
                elif name == "rotate":
                    rotate = True
                elif name == "edns0":
                    edns0 = True
    return ResolvConf(
        nameservers=tuple(nameservers) or ResolvConf.nameservers,
        search=tuple(search),
        ndots=ndots,
        timeout=float(timeout),
        attempts=attempts,
        rotate=rotate,
        edns0=edns0,
    )


def parse_hosts(text: str) -> dict[str, list[str]]:
    """hosts(5) text as {lower-case name: [addresses in file order]}."""
    hosts: dict[str, list[str]] = {}
    for line in text.splitlines():
        words = line.partition("#")[0].split()
        if len(words) < 2:
            continue
        try:
            address = str(ipaddress.ip_address(words[0]))
        except ValueError:
            continue
        for name in words[1:]:
            addresses = hosts.setdefault(name.lower(), [])
            if address not in addresses:
                addresses.append(address)
    return hosts


def search_candidates(name: str, conf: ResolvConf) -> list[str]:
    """The absolute names to try for `name`, in glibc's res_nsearch order.

    A name ending in "." is tried alone. One with at least `ndots` dots is tried as is first,
    then with each search domain; one with fewer gets the search domains first, as is last.
    """
    if name.endswith("."):
        return [name]
    as_is = name + "."
    searched = [f"{name}.{domain}." for domain in conf.search]
    ordered = [as_is, *searched] if name.count(".") >= conf.ndots else [*searched, as_is]
    return list(dict.fromkeys(ordered))


class _Watched(Generic[T]):
    """A file inside the root, parsed again whenever it changes."""

    def __init__(self, fs: RootFS, path: str, parse: Callable[[str], T]) -> None:
        self._fs, self._path, self._parse = fs, path, parse
        self._key: tuple[int, ...] | None = None
        self._value = parse("")

    def get(self) -> T:
        # O_NONBLOCK and the S_ISREG check: the container could make it a FIFO or /dev/zero.
        try:
            # Resolved in the kernel, inside the container's root (RootFS.open_fd).
            fd = self._fs.open_fd(self._path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return self._update(None, "")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._update(None, "")
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if key == self._key:
                return self._value
            return self._update(key, os.pread(fd, _MAX_FILE, 0).decode("utf-8", "replace"))
        finally:
            os.close(fd)

    def _update(self, key: tuple[int, ...] | None, text: str) -> T:
        if key is not None or self._key is not None:
            self._key, self._value = key, self._parse(text)
        return self._value


_Status = Literal["ok", "nodata", "nxdomain", "servfail", "timeout"]


@dataclass(frozen=True)
class _Outcome:
    status: _Status
    records: tuple[str, ...] = ()


class _Resolvers:
    """One dnspython resolver per resolv.conf version, built in a worker thread."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._lock = threading.Lock()
        self._cached: tuple[ResolvConf, dns.resolver.Resolver] | None = None

    def get(self, conf: ResolvConf) -> dns.resolver.Resolver:
        import dns.resolver

        with self._lock:
            if self._cached is None or self._cached[0] != conf:
                r = dns.resolver.Resolver(configure=False)
                r.nameservers = list(conf.nameservers)
                r.port = self._port
                r.timeout = conf.timeout
                # glibc waits `timeout` per try, `attempts` rounds over all the servers.
                r.lifetime = conf.timeout * conf.attempts * len(conf.nameservers)
                r.rotate = conf.rotate
                if conf.edns0:
                    r.use_edns(0, 0, 1232)
                self._cached = (conf, r)
            return self._cached[1]

    def lookup(self, conf: ResolvConf, qname: str, rdtype: str) -> _Outcome:
        """One query for an absolute name, sorted into the outcomes the search cares about."""
        import dns.exception
        import dns.resolver

        resolver = self.get(conf)
        try:
            answer = resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return _Outcome("nxdomain")
        except dns.resolver.NoNameservers:
            return _Outcome("servfail")
        except dns.exception.Timeout:
            return _Outcome("timeout")
        except dns.exception.DNSException:
            # e.g. a search domain made the name too long: glibc skips such a candidate.
            return _Outcome("nxdomain")
        if answer.rrset is None:
            return _Outcome("nodata")
        return _Outcome("ok", tuple(rdata.to_text() for rdata in answer.rrset))


class PodResolver:
    """Resolves names like a process in the container rooted at `root` would.

    `port` overrides the nameservers' port (53), for tests.
    """

    def __init__(self, root: Path, executor: NetnsExecutor, port: int = 53) -> None:
        fs = RootFS(root)
        self._executor = executor
        self._resolv_conf = _Watched(fs, "/etc/resolv.conf", parse_resolv_conf)
        self._hosts = _Watched(fs, "/etc/hosts", parse_hosts)
        self._resolvers = _Resolvers(port)

    def config(self) -> ResolvConf:
        """The resolv.conf in force now."""
        return self._resolv_conf.get()

    async def resolve(self, name: str, family: int = socket.AF_UNSPEC) -> list[str]:
        """The addresses of `name`: IPv4 (A) first, then IPv6 (AAAA), as getaddrinfo would.

        IP literals come back as they are (normalised), hosts-file entries win over DNS.
        Raises NameNotFound (EAI_NONAME/EAI_NODATA), ResolveTimeoutError or ResolveError (EAI_AGAIN
        when the servers failed, EAI_FAMILY/EAI_ADDRFAMILY for a family mismatch).
        """
        wanted = _VERSIONS.get(family)
        if wanted is None:
            raise ResolveError(socket.EAI_FAMILY, f"unsupported address family {family}")
        try:
            literal = ipaddress.ip_address(name)
        except ValueError:
            pass
        else:
            if literal.version not in wanted:
                raise ResolveError(socket.EAI_ADDRFAMILY, f"{name}: wrong address family")
            return [str(literal)]

        listed = self._hosts.get().get(name.rstrip(".").lower(), [])
        from_hosts = sorted(
            (a for a in listed if ipaddress.ip_address(a).version in wanted),
            key=lambda a: ipaddress.ip_address(a).version,
        )
        if from_hosts:
            return from_hosts
        rdtypes = [{4: "A", 6: "AAAA"}[v] for v in wanted]
        return await self._search(name, rdtypes, empty_ok=False)

    async def query(self, name: str, rdtype: str) -> list[str]:
        """Records of type `rdtype` ("SRV", "TXT", ...) in presentation format.

        The search list applies, the hosts file does not. A name that exists without such
        records gives []; errors are those of `resolve`.
        """
        return await self._search(name, [rdtype.upper()], empty_ok=True)

    async def _search(self, name: str, rdtypes: list[str], empty_ok: bool) -> list[str]:
        if not name or name == ".":
            raise NameNotFound(socket.EAI_NONAME, f"{name!r}: invalid name")
        conf = self._resolv_conf.get()
        nodata = servfail = False
        for qname in search_candidates(name, conf):
            outcomes = await asyncio.gather(
                *(self._executor.run(self._resolvers.lookup, conf, qname, t) for t in rdtypes)
            )
            records = [r for o in outcomes for r in o.records]
            if records:
                return records
            statuses = {o.status for o in outcomes}
            # As glibc: a timeout ends the search, other failures move on to the next name.
            if "timeout" in statuses:
                raise ResolveTimeoutError(socket.EAI_AGAIN, f"{name}: timed out ({qname})")
            nodata = nodata or bool(statuses & {"ok", "nodata"})
            servfail = servfail or "servfail" in statuses
        if nodata:
            if empty_ok:
                return []
            raise NameNotFound(socket.EAI_NODATA, f"{name}: no address")
        if servfail:
            raise ResolveError(socket.EAI_AGAIN, f"{name}: server failure")
        raise NameNotFound(socket.EAI_NONAME, f"{name}: name not found")
