"""The agent's incoming traffic: every session's subscriptions, and the ports they redirect.

A port is redirected (iptables, redirect.py) to one listener inside the target's network
namespace with its first subscription and given back with its last. Who may subscribe how is
policy (subscriptions.py); what happens to each redirected connection is dispatch.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Coroutine
from typing import Any

from tether.agent.incoming.dispatch import Dispatcher
from tether.agent.incoming.filters import HttpFilter
from tether.agent.incoming.mirror import MIRROR_QUEUE_LIMIT, OPEN_TIMEOUT, MirrorCopy
from tether.agent.incoming.sockopts import reset_connections
from tether.agent.incoming.subscriptions import (
    IncomingError,
    Mode,
    SessionRef,
    Subscription,
    check_steal,
)
from tether.agent.iptables import RedirectError, Redirector
from tether.agent.netns import NetnsExecutor
from tether.protocol.messages import IncomingLost
from tether.tunnel import RemoteOpError, TunnelClosedError

__all__ = [
    "MIRROR_QUEUE_LIMIT",
    "IncomingError",
    "IncomingManager",
    "MirrorCopy",
    "SessionRef",
    "Subscription",
]

log = logging.getLogger("tether.agent.incoming")


class _PortState:
    def __init__(self, port: int, server: asyncio.Server, listen_port: int) -> None:
        self.port = port
        self.server = server
        self.listen_port = listen_port
        self.subs: list[Subscription] = []


class IncomingManager:
    """Subscriptions of every session of one agent, and the traffic that follows from them."""

    def __init__(
        self,
        executor: NetnsExecutor,
        redirector: Redirector | None = None,
        refusal: str | None = None,
    ) -> None:
        self.executor = executor
        # Set when this target's ports must never be redirected (host_network_refusal).
        self.refusal = refusal
        self.redirector = redirector or Redirector(executor)
        self.ports: dict[int, _PortState] = {}
        self._lock = asyncio.Lock()
        self._rules_up = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self.dispatcher = Dispatcher(executor, self._subscriptions_of)

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self,
        session: SessionRef,
        port: int,
        mode: Mode,
        http_filter: HttpFilter | None,
        *,
        steal_probes: bool = False,
        override: bool = False,
        reset: bool = True,
    ) -> list[str]:
        """Add (or replace) `session`'s subscription to `port`; return warnings for the user.

        Raises IncomingError EBUSY when an unfiltered steal would collide with another
        session's steal (unless `override`), and for redirect failures.
        """
        if mode == "mirror" and http_filter is not None:
            raise IncomingError("EINVAL", "a mirror takes no HTTP filter", errno.EINVAL)
        if self.refusal is not None:
            raise IncomingError("EPERM", f"cannot {mode} port {port}: {self.refusal}", errno.EPERM)
        sub = Subscription(session, port, mode, http_filter, steal_probes)
        warnings: list[str] = []
        async with self._lock:
            state = self.ports.get(port)
            others = [s for s in state.subs if s.session is not session] if state else []
            if mode == "steal":
                warnings += check_steal(sub, others, override)
            if state is None:
                state = await self._open_port(port)
            state.subs = [s for s in state.subs if s.session is not session]
            if override and sub.whole:
                for lost in [s for s in state.subs if s.mode == "steal"]:
                    log.info("port %d: %s overrides %s", port, session.who, lost.describe())
                    warnings.append(f"took port {port} from {lost.describe()}")
                    state.subs.remove(lost)
                    self._spawn(_tell_lost(lost, session.who))
            state.subs.append(sub)
        log.info("port %d: %s", port, sub.describe())
        if mode == "steal" and reset:
            warnings += await self._reset(port)
        return warnings

    async def unsubscribe(self, session: SessionRef, port: int) -> bool:
        """Remove `session`'s subscription to `port`; False if it had none."""
        async with self._lock:
            state = self.ports.get(port)
            if state is None or not any(s.session is session for s in state.subs):
                return False
            state.subs = [s for s in state.subs if s.session is not session]
            await self._maybe_close(state)
        return True

    async def drop_session(self, session: SessionRef) -> None:
        """Forget every subscription of a session that left (or whose tunnel died)."""
        async with self._lock:
            for state in list(self.ports.values()):
                before = len(state.subs)
                state.subs = [s for s in state.subs if s.session is not session]
                if len(state.subs) != before:
                    log.info("port %d: %s left", state.port, session.who)
                await self._maybe_close(state)

    def subscriptions(self) -> list[Subscription]:
        """Every subscription, port by port in subscription order."""
        return [s for state in self.ports.values() for s in state.subs]

    async def close(self) -> None:
        """Remove every rule and listener (the agent is exiting)."""
        async with self._lock:
            for state in list(self.ports.values()):
                state.subs.clear()
                await self._maybe_close(state)
            if self._rules_up:
                await self.redirector.teardown()
                self._rules_up = False
        for task in list(self._tasks):
            task.cancel()

    # -- ports -------------------------------------------------------------------------------

    async def _open_port(self, port: int) -> _PortState:
        sock = await self.executor.listen_tcp()
        listen_port = int(sock.getsockname()[1])
        try:
            server = await asyncio.start_server(
                lambda r, w: self._on_connection(port, r, w), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        try:
            if not self._rules_up:
                await self.redirector.setup()
                self._rules_up = True
            await self.redirector.add(port, listen_port)
        except Exception as exc:
            # Nothing of this port may stay behind: its listener, and the chains if no other
            # port uses them, so the app keeps its traffic.
            server.close()
            if not self.ports and self._rules_up:
                with contextlib.suppress(RedirectError):
                    await self.redirector.teardown()
                self._rules_up = False
            raise IncomingError("EIO", f"cannot redirect port {port}: {exc}", errno.EIO) from None
        state = _PortState(port, server, listen_port)
        self.ports[port] = state
        log.info("port %d: redirected to %d", port, listen_port)
        return state

    async def _maybe_close(self, state: _PortState) -> None:
        if state.subs:
            return
        del self.ports[state.port]
        with contextlib.suppress(RedirectError):
            await self.redirector.remove(state.port)
        # Connections already accepted keep going; only new ones reach the app directly.
        state.server.close()
        log.info("port %d: no subscription left; redirect removed", state.port)
        if not self.ports and self._rules_up:
            with contextlib.suppress(RedirectError):
                await self.redirector.teardown()
            self._rules_up = False

    async def _reset(self, port: int) -> list[str]:
        """Reset the app's open connections to a stolen port; a warning for the user if that
        fails. The steal itself stands either way: its rules are in and new connections come
        to the session, so failing here would only leave the port half set up."""
        try:
            killed = await reset_connections(
                self.executor, port, keep_peers=set(self.dispatcher.relayed)
            )
        except Exception as exc:
            log.warning("port %d: could not reset open connections: %s", port, exc)
            return [
                f"port {port}: new connections are stolen, but the ones already open were not"
                f" reset and stay with the pod until they close ({exc})"
            ]
        if killed:
            log.info("port %d: reset %d open connection(s) of the app", port, killed)
        return []

    # -- connections -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._spawn(self.dispatcher.serve(port, reader, writer))

    def suspend_session(self, session: SessionRef) -> None:
        """The session's tunnel is down and the agent holds it for a resume: its
        subscriptions take no traffic until `resume_session` (new connections and requests
        go to the pod), but keep their ports and locks, and a connection that arrives
        meanwhile stays routable, so its later requests reach the session once it is back."""
        session.suspended = True
        log.info("%s is away: its subscriptions take no traffic", session.who)

    def resume_session(self, session: SessionRef) -> None:
        """The session is back: its subscriptions take traffic again."""
        session.suspended = False

    def _subscriptions_of(self, port: int) -> list[Subscription] | None:
        state = self.ports.get(port)
        return state.subs if state is not None else None


async def _tell_lost(lost: Subscription, by: str) -> None:
    """Let a session know another one took its port (best effort: it may be gone too)."""
    with contextlib.suppress(RemoteOpError, TunnelClosedError, TimeoutError):
        await lost.session.tunnel.call(IncomingLost(lost.port, by), timeout=OPEN_TIMEOUT)
