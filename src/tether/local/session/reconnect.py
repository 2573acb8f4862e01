"""Keeping a session connected: noticing a dead tunnel, and resuming it over a new
port-forward to the same agent until `agent.reconnect_timeout` runs out.

The decisions (is the transport dead? how long to wait before the next try? give up?) are
pure functions of times and counts, tested with tables; `keep_connected` is the shell.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tether.kube.errors import KubeError
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel, TunnelClosedError
from tether.tunnel.transport import Transport
from tether.tunnel.tunnel import PeerMovedError, ResumeRefusedError

# A ping this often keeps bytes flowing both ways on an idle session (the agent answers each,
# and watches for our silence: agent/server.py SILENCE_LIMIT), and keeps the runtime's idle
# timers on the stream (containerd's 4 h) from firing.
PING_INTERVAL = 2.5
# Nothing at all from the agent for this long means the transport is dead. Any byte counts,
# so a saturated bulk transfer, whose pongs wait behind data, is never taken for a dead one.
DEAD_AFTER = 10.0
# Waits before each reconnect attempt: the first at once, then growing to a cap.
BACKOFF = (0.0, 0.25, 0.5, 1.0, 2.0)
BACKOFF_CAP = 3.0
RESUME_TIMEOUT = 10.0

OpenTransport = Callable[[], Awaitable[Transport]]
AgentAlive = Callable[[], Awaitable[bool]]
Follow = Callable[[], Awaitable[bool]]


def transport_dead(now: float, last_received: float, last_tick: float, interval: float) -> bool:
    """Whether silence says the transport is dead: nothing for DEAD_AFTER seconds, unless we
    ourselves were not running (the process was stopped, the laptop slept: our tick came
    much later than due), in which case the silence is ours and the next tick decides."""
    if now - last_tick > interval + DEAD_AFTER / 2:
        return False
    return now - last_received >= DEAD_AFTER


def backoff(attempt: int) -> float:
    """Seconds to wait before reconnect attempt `attempt` (0-based)."""
    return BACKOFF[attempt] if attempt < len(BACKOFF) else BACKOFF_CAP


@dataclass
class Outcome:
    """How one reconnect ended: `resumed`, or the reason it gave up."""

    resumed: bool
    reason: str = ""


def one_line(exc: BaseException | None) -> str:
    """An exception as a short line for progress messages."""
    if exc is None:
        return "transport closed"
    text = " ".join(str(exc).split())
    return text[:200] if text else type(exc).__name__


async def reconnect(
    tunnel: Tunnel,
    open_transport: OpenTransport,
    timeout: float,
    agent_alive: AgentAlive,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Outcome:
    """Resume a suspended `tunnel` over new transports until it works, the agent refuses it
    (it lost the session: restarted, or held it too long), the agent's pod is found gone
    (`agent_alive`; its sockets went with it), or `timeout` s have passed."""
    deadline = clock() + timeout
    last = "no attempt"
    attempt = 0
    while True:
        await sleep(backoff(attempt))
        attempt += 1
        if tunnel.closed:
            return Outcome(False, one_line(tunnel.closed_because))
        left = deadline - clock()
        if left <= 0:
            return Outcome(False, f"no connection within {timeout:g} s (last: {last})")
        try:
            transport = await asyncio.wait_for(open_transport(), min(left, RESUME_TIMEOUT))
            await tunnel.resume(transport, timeout=min(left, RESUME_TIMEOUT))
        except ResumeRefusedError as exc:
            return Outcome(False, f"the agent cannot resume it: {exc}")
        except (KubeError, OSError, TunnelClosedError, TimeoutError) as exc:
            last = one_line(exc)
            if tunnel.closed:
                return Outcome(False, last)
            try:
                alive = await asyncio.wait_for(agent_alive(), min(left, RESUME_TIMEOUT))
            except (KubeError, OSError, TimeoutError):
                continue  # the API server itself is not back yet
            if not alive:
                return Outcome(
                    False, "the agent's pod is gone (its container exited): it cannot be resumed"
                )
            continue
        return Outcome(True)


async def keep_connected(
    tunnel: Tunnel,
    open_transport: OpenTransport,
    timeout: float,
    agent_alive: AgentAlive,
    progress: Progress,
    *,
    follow: Follow | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Run for the session's life: ping, notice a dead transport, and resume the tunnel over
    a new one (saying so). Past `timeout` the tunnel is abandoned with one line of why, which
    is how the session ends.

    With `follow`, a session whose pod went away (its agent said so) moves to another pod:
    `follow()` rebases the tunnel there, and the new link's keeper takes over."""
    while not tunnel.closed:
        await _watch(tunnel, clock)
        if tunnel.closed:
            return
        why = one_line(tunnel.lost_because)
        if follow is not None and isinstance(tunnel.lost_because, PeerMovedError):
            if not await follow():
                tunnel.abandon(TunnelClosedError(f"{why}; no pod of the workload to move to"))
            return
        if timeout <= 0:
            tunnel.abandon(TunnelClosedError(f"connection to the agent lost ({why})"))
            return
        progress.warn(f"connection to the agent lost ({why}); reconnecting...")
        started = clock()
        outcome = await reconnect(tunnel, open_transport, timeout, agent_alive, clock=clock)
        if not outcome.resumed:
            tunnel.abandon(
                TunnelClosedError(f"connection to the agent lost ({why}); {outcome.reason}")
            )
            return
        progress.step(f"reconnected after {clock() - started:.1f} s")


async def _watch(tunnel: Tunnel, clock: Callable[[], float]) -> None:
    """Ping until the transport is lost (the tunnel says so, or silence does)."""
    last_tick = clock()
    while not tunnel.closed and not tunnel.suspended:
        interrupted = asyncio.ensure_future(tunnel.wait_interrupted())
        try:
            await asyncio.wait([interrupted], timeout=PING_INTERVAL)
        finally:
            interrupted.cancel()
        if tunnel.closed or tunnel.suspended:
            return
        now = clock()
        if transport_dead(now, tunnel.last_received, last_tick, PING_INTERVAL):
            quiet = now - tunnel.last_received
            tunnel.transport_failed(TimeoutError(f"no answer from the agent for {quiet:.0f} s"))
            return
        last_tick = now
        tunnel.poke()
