"""Incoming traffic on every replica: for a deployment or statefulset target, the session's
mirror and steal subscriptions hold on every pod of the workload (Ready, or running and about
to be), not only on the pod
its outgoing traffic, DNS, env and files come from, because a Service spreads requests over
all of them.

Each other pod gets its own agent (created or joined, shared with other sessions as any
agent) and the same subscriptions; pods that become Ready during the session (a scale-up, a
rollout's surge) are joined within a poll, pods that go are left. Port locks are each agent's,
so an unfiltered steal taken on every replica is refused on every replica to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from tether.config import TetherConfig
from tether.errors import UserError
from tether.kube.client import KubeClient
from tether.kube.errors import KubeError
from tether.kube.targets import (
    ResolvedTarget,
    TargetKind,
    TargetSpec,
    ready_targets,
    watch_workload_pods,
)
from tether.local.proxies.incoming import IncomingClient, IncomingError, Mode
from tether.local.session.progress import Progress
from tether.local.session.session import AgentLink, Session, attach_agent
from tether.tunnel import TunnelClosedError

log = logging.getLogger("tether.session.replicas")

POLL_INTERVAL = 2.0
# A pod whose agent could not be had is tried again after this long, not at every poll.
RETRY_AFTER = 10.0


def plan(
    targets: list[ResolvedTarget],
    *,
    joined: set[str],
    closed: set[str],
    joining: set[str],
    primary: str,
    promoting: str | None,
    retry_at: dict[str, float],
    now: float,
) -> tuple[list[str], list[ResolvedTarget]]:
    """Which replicas to leave (by pod UID) and which pods to join, given the workload's
    pods listed now (`targets`, those being deleted included).

    A replica is left once its pod is no longer listed (its app exited), or its tunnel
    ended (its agent went; the pod, if still running, is joined again later). A pod is
    joined once it runs, unless it is the session's own pod, being promoted to it, already
    joined or being joined, being deleted, or waiting out a failed attempt."""
    listed = {t.pod_uid: t for t in targets if t.pod_uid != primary}
    gone = [
        uid for uid in sorted(joined) if (uid not in listed or uid in closed) and uid != promoting
    ]
    new = [
        t
        for uid, t in listed.items()
        if uid not in joined
        and uid not in joining
        and uid != promoting
        and not t.deleting
        and now >= retry_at.get(uid, 0.0)
    ]
    return gone, new


class PodProgress(Progress):
    """What a replica's incoming client says, as detail lines naming its pod: the session's
    own lines already said what it subscribed."""

    def __init__(self, outer: Progress, pod: str) -> None:
        super().__init__(outer.verbosity, outer.stream)
        self.started = outer.started
        self.pod = pod

    def step(self, message: str) -> None:
        """A replica's step is a detail of the session."""
        self.detail(f"pod {self.pod}: {message}")

    def warn(self, message: str) -> None:
        """Warnings stay warnings, naming the pod."""
        super().warn(f"pod {self.pod}: {message}")


@dataclass
class _Replica:
    target: ResolvedTarget
    link: AgentLink
    incoming: IncomingClient


@dataclass
class Replicas:
    """The other Ready pods of the session's workload, each with the session's incoming
    subscriptions. `subscribe` follows the session's own; `close` leaves every agent."""

    kube: KubeClient
    spec: TargetSpec
    namespace: str
    primary_uid: str
    config: TetherConfig
    progress: Progress
    session_id: str
    who: str
    poll_interval: float = POLL_INTERVAL
    replicas: dict[str, _Replica] = field(default_factory=dict)
    wanted: dict[int, tuple[int, Mode | None]] = field(default_factory=dict)
    _failed: dict[str, float] = field(default_factory=dict)
    _joining: set[str] = field(default_factory=set)
    _promoting: str | None = None
    _work: set[asyncio.Future[None]] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def start(self) -> None:
        """Follow the workload's pods from now on (in the background)."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._follow())

    async def subscribe(self, remote: int, local: int, mode: Mode | None) -> None:
        """The session subscribed `remote` (delivered to `local`): every replica does too."""
        self.wanted[remote] = (local, mode)
        async with self._lock:
            replicas = list(self.replicas.values())
        await asyncio.gather(*(self._subscribe(r, remote, local, mode) for r in replicas))

    async def sync(self, *, wait: bool = True) -> None:
        """One poll: join the pods not joined yet and leave the pods that are gone. With
        `wait`, return once that is done; else those run in the background, so that a slow
        join never delays noticing the next pod."""
        try:
            # Pods are joined as soon as they have a node, before their app even runs (the
            # agent waits for the pod's sandbox; the Service sends the pod nothing before
            # it is Ready, and by then its subscriptions are in place), and pods being
            # deleted are kept until they are gone (they get traffic until their app exits).
            targets = await ready_targets(
                self.kube, self.spec, self.namespace, scheduled=True, deleting=True
            )
        except (KubeError, OSError) as exc:
            log.debug("listing the workload's pods failed: %s", exc)
            return
        now = asyncio.get_running_loop().time()
        async with self._lock:
            closed = {uid for uid, r in self.replicas.items() if r.link.tunnel.closed}
            gone, new = plan(
                targets,
                joined=set(self.replicas),
                closed=closed,
                joining=self._joining,
                primary=self.primary_uid,
                promoting=self._promoting,
                retry_at=self._failed,
                now=now,
            )
            self._joining.update(t.pod_uid for t in new)
        work = [asyncio.ensure_future(self._leave(uid)) for uid in gone]
        work += [asyncio.ensure_future(self._join(t)) for t in new]
        self._work.update(work)
        for task in work:
            task.add_done_callback(self._work.discard)
        if wait:
            await asyncio.gather(*work)

    async def close(self) -> None:
        """Leave every replica's agent."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._work):
            with contextlib.suppress(Exception):
                await task
        await asyncio.gather(*(self._leave(uid) for uid in list(self.replicas)))

    async def primary_moving(self, target: ResolvedTarget) -> None:
        """The session is moving to `target`'s pod: if it is a replica, it keeps serving as
        one until the session's own subscriptions are in place there (`primary_moved`)."""
        self._promoting = target.pod_uid

    async def primary_moved(self, target: ResolvedTarget) -> None:
        """The session runs through `target`'s pod now: it is no longer a replica. (Called
        before the session subscribes there again, so that its own subscriptions do not
        meet the replica's.)"""
        self.primary_uid = target.pod_uid
        self._promoting = None
        await self._leave(target.pod_uid)

    @property
    def pods(self) -> list[str]:
        """The replicas' pod names, sorted."""
        return sorted(r.target.pod_name for r in self.replicas.values())

    async def _follow(self) -> None:
        # A watch says at once when a pod changes; the poll is the fallback (a watch the
        # server ended, an API server restarting).
        changed = asyncio.Event()
        watcher = asyncio.ensure_future(
            watch_workload_pods(self.kube, self.spec, self.namespace, changed.set)
        )
        try:
            while True:
                changed.clear()
                await self.sync(wait=False)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), self.poll_interval)
                if watcher.done() and not watcher.cancelled() and watcher.exception():
                    log.debug("watching the workload's pods: %s", watcher.exception())
                    watcher = asyncio.ensure_future(
                        watch_workload_pods(self.kube, self.spec, self.namespace, changed.set)
                    )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _join(self, target: ResolvedTarget) -> None:
        try:
            await self._attach(target)
        finally:
            self._joining.discard(target.pod_uid)

    async def _attach(self, target: ResolvedTarget) -> None:
        progress = PodProgress(self.progress, target.pod_name)
        try:
            link = await attach_agent(
                self.kube, self.namespace, target, self.config, progress, self.session_id
            )
        except (UserError, OSError, TunnelClosedError) as exc:
            self._failed[target.pod_uid] = asyncio.get_running_loop().time() + RETRY_AFTER
            self.progress.warn(f"incoming on pod {target.pod_name} is not covered: {exc}")
            return
        if target.pod_uid == self.primary_uid:
            # The session moved onto this pod while we joined it: it is not a replica.
            with contextlib.suppress(UserError, OSError):
                await link.close(progress)
            return
        replica = _Replica(
            target, link, IncomingClient(link.tunnel, self.config.incoming, progress, self.who)
        )
        async with self._lock:
            self.replicas[target.pod_uid] = replica
        for remote, (local, mode) in list(self.wanted.items()):
            await self._subscribe(replica, remote, local, mode)
        if self.replicas.get(target.pod_uid) is replica:
            self.progress.step(f"incoming: also on pod {target.pod_name}")

    async def _subscribe(
        self, replica: _Replica, remote: int, local: int, mode: Mode | None
    ) -> None:
        try:
            await replica.incoming.subscribe(remote, local, mode)
        except IncomingError as exc:
            self.progress.warn(f"pod {replica.target.pod_name}: {exc}")
        except (TunnelClosedError, TimeoutError, ConnectionError) as exc:
            log.debug("pod %s: subscribing %d failed: %s", replica.target.pod_name, remote, exc)

    async def _leave(self, uid: str) -> None:
        async with self._lock:
            replica = self.replicas.pop(uid, None)
        if replica is None:
            return
        await replica.incoming.close()
        with contextlib.suppress(UserError, OSError):
            await replica.link.close(PodProgress(self.progress, replica.target.pod_name))
        self.progress.detail(f"incoming: pod {replica.target.pod_name} left")


def replicas_for(
    session: Session, incoming: IncomingClient, *, start: bool = True
) -> Replicas | None:
    """For a workload target, the session's other replicas, following `incoming`'s
    subscriptions from now on (following the workload's pods too, unless not `start`ed
    yet); None for a pod or targetless session."""
    if session.target is None or session.spec.kind is TargetKind.POD:
        return None
    replicas = Replicas(
        session.kube,
        session.spec,
        session.namespace,
        session.target.pod_uid,
        session.config,
        session.progress,
        session.session_id,
        session.who,
    )
    incoming.on_subscribed = replicas.subscribe
    session.on_moving.append(replicas.primary_moving)
    # First of the on_moved callbacks: the replica goes before the session subscribes there.
    session.on_moved.insert(0, replicas.primary_moved)
    if start:
        replicas.start()
    return replicas
