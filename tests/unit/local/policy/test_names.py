"""tether.local.policy.names: the names behind each address, from DNS replies (table-driven,
with a fake clock)."""

from __future__ import annotations

import dns.message
import dns.rrset
import pytest

from tether.local.policy.names import NameCache, Resolved, normalize_address, resolved_in


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reply(qname: str, *records: tuple[str, int, str, str]) -> bytes:
    """A reply to an A query for `qname` with answer records (name, ttl, type, value)."""
    message = dns.message.make_response(dns.message.make_query(qname, "A"))
    for name, ttl, rdtype, value in records:
        message.answer.append(dns.rrset.from_text(name, ttl, "IN", rdtype, value))
    return message.to_wire()


RESOLVED_CASES: list[tuple[bytes, list[Resolved]]] = [
    (
        reply("db.test.", ("db.test.", 60, "A", "10.0.0.5")),
        [Resolved("10.0.0.5", ("db.test",), 60)],
    ),
    (
        reply("DB.Test.", ("db.test.", 60, "A", "10.0.0.5"), ("db.test.", 60, "A", "10.0.0.6")),
        [Resolved("10.0.0.5", ("db.test",), 60), Resolved("10.0.0.6", ("db.test",), 60)],
    ),
    (
        # A CNAME chain: every name on the way counts, and the shortest TTL.
        reply(
            "www.shop.test.",
            ("www.shop.test.", 300, "CNAME", "lb.cloud.test."),
            ("lb.cloud.test.", 20, "CNAME", "edge.cloud.test."),
            ("edge.cloud.test.", 120, "A", "192.0.2.9"),
        ),
        [Resolved("192.0.2.9", ("www.shop.test", "lb.cloud.test", "edge.cloud.test"), 20)],
    ),
    (
        # Records for other names (additional junk in the answer) are not the question's.
        reply("a.test.", ("a.test.", 60, "A", "10.0.0.1"), ("b.test.", 60, "A", "10.0.0.2")),
        [Resolved("10.0.0.1", ("a.test",), 60)],
    ),
    (
        reply("aaaa.test.", ("aaaa.test.", 30, "AAAA", "2001:db8::1")),
        [Resolved("2001:db8::1", ("aaaa.test",), 30)],
    ),
    (reply("nothing.test."), []),
    (reply("txt.test.", ("txt.test.", 60, "TXT", '"hello"')), []),
    (
        # A CNAME loop ends.
        reply("l.test.", ("l.test.", 60, "CNAME", "m.test."), ("m.test.", 60, "CNAME", "l.test.")),
        [],
    ),
    (b"", []),
    (b"\x00" * 5, []),
    (b"\x12\x34\x81\x80" + b"\x00" * 8, []),  # a header without a question
]


@pytest.mark.parametrize(("wire", "expected"), RESOLVED_CASES)
def test_resolved_in(wire: bytes, expected: list[Resolved]) -> None:
    assert resolved_in(wire) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("10.0.0.1", "10.0.0.1"),
        ("::ffff:10.0.0.1", "10.0.0.1"),
        ("2001:0db8:0:0::1", "2001:db8::1"),
        ("fe80::1%2", "fe80::1%2"),
        ("not an address", "not an address"),
    ],
)
def test_normalize_address(address: str, expected: str) -> None:
    assert normalize_address(address) == expected


# Steps against one cache: ("learn", address, names, ttl) or ("wait", seconds) or
# ("names", address, expected).
Step = tuple[object, ...]
CACHE_CASES: list[tuple[str, dict[str, float], list[Step]]] = [
    (
        "a name lives for its TTL",
        {"min_ttl": 0},
        [
            ("learn", "10.0.0.1", ("db.test",), 60),
            ("names", "10.0.0.1", ("db.test",)),
            ("wait", 59.9),
            ("names", "10.0.0.1", ("db.test",)),
            ("wait", 0.1),
            ("names", "10.0.0.1", ()),
        ],
    ),
    (
        "a short TTL still covers the connections that follow the lookup",
        {"min_ttl": 30},
        [
            ("learn", "10.0.0.1", ("db.test",), 0),
            ("wait", 29),
            ("names", "10.0.0.1", ("db.test",)),
            ("wait", 1),
            ("names", "10.0.0.1", ()),
        ],
    ),
    (
        "several names, the latest answer first; each expires on its own",
        {"min_ttl": 0},
        [
            ("learn", "10.0.0.1", ("a.test",), 100),
            ("wait", 10),
            ("learn", "10.0.0.1", ("b.test",), 20),
            ("names", "10.0.0.1", ("b.test", "a.test")),
            ("wait", 20),
            ("names", "10.0.0.1", ("a.test",)),
            ("learn", "10.0.0.1", ("B.test.",), 20),
            ("learn", "10.0.0.1", ("a.test",), 100),
            ("names", "10.0.0.1", ("a.test", "b.test")),
        ],
    ),
    (
        "an answer again refreshes its TTL",
        {"min_ttl": 0},
        [
            ("learn", "10.0.0.1", ("a.test",), 10),
            ("wait", 9),
            ("learn", "10.0.0.1", ("a.test",), 10),
            ("wait", 9),
            ("names", "10.0.0.1", ("a.test",)),
        ],
    ),
    (
        "one spelling per address",
        {},
        [
            ("learn", "::ffff:10.0.0.1", ("a.test",), 10),
            ("names", "10.0.0.1", ("a.test",)),
            ("names", "::ffff:10.0.0.1", ("a.test",)),
            ("names", "10.0.0.2", ()),
        ],
    ),
    (
        "bounded: the least recently answered address goes first",
        {"max_addresses": 2},
        [
            ("learn", "10.0.0.1", ("a.test",), 10),
            ("learn", "10.0.0.2", ("b.test",), 10),
            ("learn", "10.0.0.1", ("a.test",), 10),
            ("learn", "10.0.0.3", ("c.test",), 10),
            ("names", "10.0.0.2", ()),
            ("names", "10.0.0.1", ("a.test",)),
            ("names", "10.0.0.3", ("c.test",)),
        ],
    ),
    (
        "bounded: at most max_names per address, an answer's looked-up name kept first",
        {"max_names": 2},
        [
            ("learn", "10.0.0.1", ("a.test", "b.test", "c.test"), 10),
            ("names", "10.0.0.1", ("a.test", "b.test")),
        ],
    ),
]


@pytest.mark.parametrize(("why", "limits", "steps"), CACHE_CASES, ids=[c[0] for c in CACHE_CASES])
def test_name_cache(why: str, limits: dict[str, float], steps: list[Step]) -> None:
    clock = Clock()
    cache = NameCache(clock=clock, **limits)  # type: ignore[arg-type]
    for step in steps:
        if step[0] == "learn":
            _, address, names, ttl = step
            cache.learn(str(address), names, float(ttl))  # type: ignore[arg-type]
        elif step[0] == "wait":
            clock.now += float(step[1])  # type: ignore[arg-type]
        else:
            _, address, expected = step
            assert cache.names(str(address)) == expected, (why, step)


def test_name_cache_forgets_an_address_with_no_live_name() -> None:
    clock = Clock()
    cache = NameCache(clock=clock, min_ttl=0)
    cache.learn("10.0.0.1", ["a.test"], 1)
    assert len(cache) == 1
    clock.now += 1
    assert cache.names("10.0.0.1") == ()
    assert len(cache) == 0


def test_name_cache_learns_a_reply() -> None:
    cache = NameCache(clock=Clock())
    cache.learn_reply(
        reply("x.test.", ("x.test.", 5, "CNAME", "y.test."), ("y.test.", 5, "A", "10.9.9.9"))
    )
    cache.learn_reply(b"garbage")
    assert cache.names("10.9.9.9") == ("x.test", "y.test")
