"""Which names the process looked up for each address, learnt from the DNS answers tether
carries for it, so that `network.outgoing` name patterns can match a connect() that only
names an address.

Pure: `resolved_in` reads a DNS reply, `NameCache` remembers what it said (bounded, with the
answers' TTLs on an injected clock). The DNS proxy feeds the cache; the supervisor reads it.
"""

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.rdatatype

__all__ = ["NameCache", "Resolved", "normalize_address", "resolved_in"]

_ADDRESS_TYPES = (dns.rdatatype.A, dns.rdatatype.AAAA)
# A CNAME chain longer than this is a loop or an attack, not an answer.
_MAX_CHAIN = 16


def normalize_address(address: str) -> str:
    """An IP address in one spelling: compressed, and an IPv4-mapped IPv6 address as IPv4
    (an AF_INET6 socket reaches an IPv4 peer that way). Anything else comes back unchanged."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


@dataclass(frozen=True)
class Resolved:
    """One address a DNS answer gave, with the names that led to it (the question's first,
    then the CNAME chain's) and the smallest TTL along the way, in seconds."""

    address: str
    names: tuple[str, ...]
    ttl: int


def resolved_in(reply: bytes) -> list[Resolved]:
    """The addresses (A and AAAA records) a DNS reply gives for its question's name, directly
    or through CNAMEs. A reply that does not parse, or has no question, gives nothing."""
    try:
        message = dns.message.from_wire(reply)
    except (dns.exception.DNSException, ValueError):
        return []
    if not message.question:
        return []
    current = message.question[0].name
    chain = [_text(current)]
    ttl: int | None = None
    for _ in range(_MAX_CHAIN):
        cname = next(
            (r for r in message.answer if r.rdtype == dns.rdatatype.CNAME and r.name == current),
            None,
        )
        if cname is None:
            break
        ttl = cname.ttl if ttl is None else min(ttl, cname.ttl)
        current = next(iter(cname)).target
        chain.append(_text(current))
    found: list[Resolved] = []
    for rrset in message.answer:
        if rrset.rdtype not in _ADDRESS_TYPES or rrset.name != current:
            continue
        rrset_ttl = rrset.ttl if ttl is None else min(ttl, rrset.ttl)
        names = tuple(dict.fromkeys(chain))
        found.extend(Resolved(normalize_address(r.address), names, rrset_ttl) for r in rrset)
    return found


class NameCache:
    """address -> the names the process looked up that resolved to it, while the answer lives.

    Each name lives for its answer's TTL, but at least `min_ttl` seconds: a resolver asked
    for a name is about to connect, and clients reuse an address a while past a short TTL
    (connection pools, a JVM's cache), and the connection should still count as the name's.
    At most `max_addresses` addresses are kept (the least recently answered go first), with
    at most `max_names` names each (the oldest go first; in one answer, the CNAMEs before the
    name looked up). `clock` gives seconds (monotonic).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_addresses: int = 4096,
        max_names: int = 8,
        min_ttl: float = 30.0,
    ) -> None:
        """An empty cache; see the class docstring for the limits."""
        self._clock = clock
        self._max_addresses = max_addresses
        self._max_names = max_names
        self._min_ttl = min_ttl
        # address -> {name: expiry}, both in order of the last answer (oldest first).
        self._entries: OrderedDict[str, dict[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def learn(self, address: str, names: Iterable[str], ttl: float) -> None:
        """`names` resolved to `address` in an answer valid for `ttl` seconds."""
        address = normalize_address(address)
        expiry = self._clock() + max(ttl, self._min_ttl)
        entry = self._entries.pop(address, {})
        # Newest last; within one answer the first name (the one looked up) counts as newest.
        for name in reversed([n.lower().removesuffix(".") for n in names]):
            entry.pop(name, None)
            entry[name] = expiry
        while len(entry) > self._max_names:
            del entry[next(iter(entry))]
        self._entries[address] = entry
        while len(self._entries) > self._max_addresses:
            self._entries.popitem(last=False)

    def learn_reply(self, reply: bytes) -> None:
        """Learn every address a DNS reply gives (see `resolved_in`)."""
        for resolved in resolved_in(reply):
            self.learn(resolved.address, resolved.names, resolved.ttl)

    def names(self, address: str) -> tuple[str, ...]:
        """The live names behind `address`, the most recently answered first (and in one
        answer, the name looked up first)."""
        address = normalize_address(address)
        entry = self._entries.get(address)
        if entry is None:
            return ()
        now = self._clock()
        for name in [n for n, expiry in entry.items() if expiry <= now]:
            del entry[name]
        if not entry:
            del self._entries[address]
        return tuple(reversed(entry))
