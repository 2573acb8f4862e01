"""Subscriptions: which sessions mirror or steal which port, and the policy over them.

Pure: no sockets, no tasks. Who may steal a port (the port lock), which session a request
goes to, and what a kube-probe is, are plain functions of the subscriptions, table-tested.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tether.agent.incoming.filters import HttpFilter, is_probe, overlaps
from tether.protocol import RemoteError
from tether.tunnel import RemoteOpError

if TYPE_CHECKING:
    from tether.agent.incoming.router import RequestHead
    from tether.tunnel import Tunnel

Mode = Literal["mirror", "steal"]


class IncomingError(Exception):
    """A subscription that cannot be granted; `code` is the protocol error code."""

    def __init__(self, code: str, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errno = errno

    def as_remote(self) -> RemoteOpError:
        """The error as the session sees it."""
        return RemoteOpError(RemoteError(self.code, str(self), self.errno))


@dataclass(eq=False)
class SessionRef:
    """One connected session, as incoming traffic knows it."""

    tunnel: Tunnel
    key: int
    who: str = "another session"
    # While its tunnel is down and the agent holds it for a resume: its subscriptions keep
    # their ports and locks but take no traffic.
    suspended: bool = False


@dataclass(eq=False)
class Subscription:
    """One session's interest in one port."""

    session: SessionRef
    port: int
    mode: Mode
    filter: HttpFilter | None
    steal_probes: bool
    since: float = field(default_factory=time.time)

    @property
    def whole(self) -> bool:
        """An unfiltered steal: whole connections go to the session."""
        return self.mode == "steal" and self.filter is None

    def describe(self) -> str:
        """Who holds it and how, for other sessions' messages."""
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        how = "mirrors" if self.mode == "mirror" else "steals"
        what = f" requests matching {self.filter.describe()}" if self.filter else ""
        return f"{self.session.who} {how}{what} (since {when})"


def check_steal(sub: Subscription, others: list[Subscription], override: bool) -> list[str]:
    """Whether `sub`, a steal, may join `others` (the other sessions' subscriptions on its
    port): the warnings for its user, or IncomingError EBUSY when an unfiltered steal would
    collide with another session's steal (unless `override`)."""
    warnings: list[str] = []
    steals = [s for s in others if s.mode == "steal"]
    whole = [s for s in steals if s.whole]
    if sub.whole and steals and not override:
        holder = (whole or steals)[0]
        raise IncomingError(
            "EBUSY",
            f"port {sub.port} is taken: {holder.describe()}; pass --override to take it"
            + (" (their requests would come to you)" if not whole else ""),
            errno.EBUSY,
        )
    if not sub.whole and whole:
        warnings.append(
            f"port {sub.port}: {whole[0].describe()} without a filter; your filter gets"
            " nothing until they leave"
        )
    if sub.filter is not None:
        for other in steals:
            if other.filter is not None and overlaps(sub.filter, other.filter):
                warnings.append(
                    f"port {sub.port}: your filter {sub.filter.describe()} overlaps"
                    f" {other.describe()}; requests matching both go to them (first come)"
                )
    return warnings


def active(subs: list[Subscription]) -> list[Subscription]:
    """The subscriptions that take traffic now (their session is not away)."""
    if any(s.session.suspended for s in subs):
        return [s for s in subs if not s.session.suspended]
    return subs


def whole_steal(subs: list[Subscription]) -> Subscription | None:
    """The unfiltered steal among `subs` whose session is here, which takes whole
    connections, if any."""
    return next((s for s in subs if s.whole and not s.session.suspended), None)


def filtered_steals(subs: list[Subscription]) -> list[Subscription]:
    """The steals with an HTTP filter, in subscription order."""
    return [s for s in subs if s.mode == "steal" and s.filter is not None]


def route_request(subs: list[Subscription], head: RequestHead) -> Subscription | None:
    """The filtered steal a request goes to (the first whose filter matches, probes only to
    those that asked for them, none whose session is away), or None for the original app."""
    probe = is_probe(head.headers)
    for sub in filtered_steals(subs):
        assert sub.filter is not None
        if sub.session.suspended:
            continue
        if probe and not (sub.steal_probes or sub.filter.steal_probes):
            continue
        if sub.filter.matches(head.method, head.target, head.headers):
            return sub
    return None


def is_probe_request(data: bytes) -> bool:
    """Whether the HTTP request head at the start of `data` is a kube-probe's."""
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers = []
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return is_probe(headers)
