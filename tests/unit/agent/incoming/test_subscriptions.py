"""The subscription policy, as plain functions of the subscriptions (no sockets)."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from tether.agent.incoming.filters import HttpFilter
from tether.agent.incoming.routing import RequestHead
from tether.agent.incoming.subscriptions import (
    IncomingError,
    Mode,
    SessionRef,
    Subscription,
    check_steal,
    is_probe_request,
    route_request,
)

ALICE = SessionRef(cast(Any, None), 1, "alice")
BOB = SessionRef(cast(Any, None), 2, "bob")
CAROL = SessionRef(cast(Any, None), 3, "carol")


def _sub(who: SessionRef, mode: Mode = "steal", header: str | None = None) -> Subscription:
    filt = HttpFilter(headers=(re.compile(header),)) if header else None
    return Subscription(who, 80, mode, filt, steal_probes=False, since=0.0)


def _head(*headers: tuple[str, str], target: str = "/") -> RequestHead:
    return RequestHead("GET", target, tuple(headers), http2=False)


@pytest.mark.parametrize(
    ("sub", "others", "override", "outcome"),
    [
        (_sub(ALICE), [], False, []),
        (_sub(ALICE), [_sub(BOB, "mirror")], False, []),
        (_sub(ALICE), [_sub(BOB)], False, "EBUSY"),
        (_sub(ALICE), [_sub(BOB, header="^x-dev: bob$")], False, "EBUSY"),
        (_sub(ALICE), [_sub(BOB)], True, []),
        (_sub(ALICE, header="^x-dev: a$"), [_sub(BOB)], False, ["without a filter"]),
        (_sub(ALICE, header="^x-dev: a$"), [_sub(BOB, header="^x-dev: b$")], False, []),
        (_sub(ALICE, header="^x-dev: b$"), [_sub(BOB, header="^x-dev: b$")], False, ["overlaps"]),
    ],
)
def test_check_steal(
    sub: Subscription, others: list[Subscription], override: bool, outcome: str | list[str]
) -> None:
    if outcome == "EBUSY":
        with pytest.raises(IncomingError) as info:
            check_steal(sub, others, override)
        assert info.value.code == "EBUSY" and "pass --override" in str(info.value)
        assert "bob steals" in str(info.value)
        return
    warnings = check_steal(sub, others, override)
    assert len(warnings) == len(outcome)
    for warning, needle in zip(warnings, outcome, strict=True):
        assert needle in warning


SUBS = [
    _sub(CAROL, "mirror"),
    _sub(ALICE, header="^x-dev: alice$"),
    _sub(BOB, header="^x-dev: (alice|bob)$"),
]


@pytest.mark.parametrize(
    ("head", "who"),
    [
        (_head(("X-Dev", "alice")), "alice"),  # the first match wins, though bob's matches too
        (_head(("X-Dev", "bob")), "bob"),
        (_head(("X-Dev", "carol")), None),  # a mirror takes no requests
        (_head(), None),
        # A probe goes to the app unless the steal asked for probes.
        (_head(("X-Dev", "alice"), ("User-Agent", "kube-probe/1.30")), None),
    ],
)
def test_route_request(head: RequestHead, who: str | None) -> None:
    sub = route_request(SUBS, head)
    assert (sub.session.who if sub else None) == who


@pytest.mark.parametrize(
    ("data", "probe"),
    [
        (b"GET /healthz HTTP/1.1\r\nUser-Agent: kube-probe/1.20\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nHost: x\r\nuser-agent: curl/8\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\n", False),
        (b"\x16\x03\x01binary", False),
    ],
)
def test_is_probe_request(data: bytes, probe: bool) -> None:
    assert is_probe_request(data) is probe
