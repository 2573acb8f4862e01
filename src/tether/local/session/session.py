"""A session: the target resolved, an agent Job next to it, and one tunnel to that agent
over a single API-server port-forward. Cleanup (the Job) happens on every exit path."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import getpass
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from tether import __version__
from tether.config import TetherConfig
from tether.errors import UserError
from tether.kube.agent_ephemeral import (
    EphemeralSupport,
    joinable_agent,
    refusal_reason,
    start_ephemeral_agent,
    support_for,
)
from tether.kube.agent_lifecycle import (
    AcquiredAgent,
    acquire_agent,
    agent_running,
    delete_agent_job,
    start_agent_job,
)
from tether.kube.agent_manifest import AgentHandle, agent_job_manifest, new_secret, new_session_id
from tether.kube.agent_ready import ReadyAgent, wait_agent_ready
from tether.kube.client import KubeClient, connect, server_version
from tether.kube.errors import (
    AdmissionRefusedError,
    AgentRefusedError,
    ClusterUnreachableError,
    KubeError,
)
from tether.kube.portforward import open_portforward
from tether.kube.targets import (
    ResolvedTarget,
    TargetKind,
    TargetSpec,
    ensure_namespace,
    parse_target,
    resolve_target,
)
from tether.local.policy.agent_mode import EPHEMERAL_COST, AgentPlan, plan_agent
from tether.local.session.progress import Progress
from tether.local.session.reconnect import keep_connected
from tether.protocol import Connection, Role
from tether.protocol.events import SESSION_TARGET_GONE, TARGET_GONE
from tether.protocol.messages import SessionLeave, SessionTarget
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError
from tether.tunnel.tunnel import PeerMovedError

HANDSHAKE_TIMEOUT = 15.0
# How often a session whose pod went away looks for a Ready one to move to.
FOLLOW_POLL = 1.0
# How long the cleanup waits for an API server that does not answer (restarting, say).
CLEANUP_RETRY = 30.0
LEAVE_TIMEOUT = 5.0
# Joining a shared agent can meet it just as its last session leaves: start over this often.
CONNECT_ATTEMPTS = 3


class SessionError(UserError):
    """A session could not start or broke; the message is one line for the user."""


Moved = Callable[[ResolvedTarget], Awaitable[None]]


@dataclass
class Session:
    """A live session: use `tunnel` for requests and streams.

    For a deployment or statefulset target the session follows its workload: when its pod
    goes, `tunnel` carries on with an agent next to another Ready pod (`follow`), and
    `on_moving`/`on_moved` callbacks hear of it."""

    kube: KubeClient
    namespace: str
    target: ResolvedTarget | None
    tunnel: Tunnel
    session_id: str
    who: str
    """Who runs this session, for messages other sessions see (user@host pid N)."""
    spec: TargetSpec
    config: TetherConfig
    progress: Progress
    link: AgentLink
    on_moving: list[Moved] = field(default_factory=list)
    """Called with the new pod before the session attaches to it."""
    on_moved: list[Moved] = field(default_factory=list)
    """Called with the new pod once the tunnel runs through it."""

    @property
    def agent(self) -> AgentHandle:
        """The agent Job this session's tunnel goes to now."""
        return self.link.handle

    @property
    def follows(self) -> bool:
        """Whether the session moves to another pod when its pod goes (workload targets)."""
        return self.target is not None and self.spec.kind is not TargetKind.POD

    async def follow(self) -> bool:
        """The target's pod went away: move to a Ready pod of the workload, waiting for one
        up to `agent.reconnect_timeout`. False if there was none (or the move failed)."""
        old = self.link
        assert self.target is not None
        gone = self.target
        started = time.monotonic()
        deadline = started + self.config.agent.reconnect_timeout
        lost = self.tunnel.lost_because
        if isinstance(lost, PeerMovedError) and lost.code == TARGET_GONE:
            # Its agent is leaving with its target: its Job goes now, not after a TTL. (Not
            # when only this session's own container went: the agent serves others still.)
            with contextlib.suppress(KubeError):
                await _finish_agent(self.kube, old.acquired, True, self.progress)
        last = "no Ready pod"
        while time.monotonic() < deadline:
            try:
                target = await resolve_target(self.kube, self.spec, self.namespace)
            except (KubeError, OSError) as exc:
                last = str(exc)
                target = None
            # The same pod is fine once its container restarted (a crash, a liveness kill).
            if target is not None and target.container_id != gone.container_id:
                for moving in self.on_moving:
                    await moving(target)
                try:
                    link = await attach_agent(
                        self.kube,
                        self.namespace,
                        target,
                        self.config,
                        self.progress,
                        self.session_id,
                        tunnel=self.tunnel,
                        follow=self.follow,
                    )
                except (UserError, OSError) as exc:
                    last = str(exc)
                else:
                    self.link = link
                    self.target = target
                    after = f"(after {time.monotonic() - started:.1f} s)"
                    if target.pod_uid == gone.pod_uid:
                        self.progress.step(
                            f"container {gone.container_name} of pod {gone.pod_name} restarted;"
                            f" now on the new one {after}"
                        )
                    else:
                        self.progress.step(
                            f"pod {gone.pod_name} went away; now on {target.pod_name} {after}"
                        )
                    for moved in self.on_moved:
                        await moved(target)
                    return True
            await asyncio.sleep(FOLLOW_POLL)
        self.progress.warn(f"no pod of {self.spec.kind.value}/{self.spec.name} to move to: {last}")
        return False


def describe_user() -> str:
    """user@host (pid N): how other developers' sessions name this one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} (pid {os.getpid()})"


async def _connect_agent(
    kube: KubeClient,
    handle: AgentHandle,
    secret: str,
    config: TetherConfig,
    progress: Progress,
    tunnel: Tunnel | None = None,
) -> tuple[ReadyAgent, Tunnel]:
    """Wait for the agent and connect: a new tunnel, or `tunnel` rebased onto it."""
    ready = await wait_agent_ready(
        kube, handle, config.agent.startup_timeout, on_phase=progress.detail
    )
    progress.step(f"agent {handle.container if handle.ephemeral else ready.pod} ready")
    forward = await open_portforward(kube, handle.namespace, ready.pod, ready.port)
    conn = Connection(
        Role.CLIENT,
        secret=bytes.fromhex(secret),
        version=__version__,
        # The agent holds our session this long after a cut, for us to resume it.
        info={"resume_grace": config.agent.reconnect_timeout},
    )
    if tunnel is not None:
        await tunnel.rebase(conn, forward, timeout=HANDSHAKE_TIMEOUT)
        return ready, tunnel
    fresh = Tunnel(conn, forward)
    try:
        await fresh.start(timeout=HANDSHAKE_TIMEOUT)
    except TunnelClosedError:
        await forward.close()
        raise
    return ready, fresh


async def _retrying(action: Callable[[], Awaitable[None]], what: str, progress: Progress) -> None:
    """`action()`, tried again while the API server does not answer (it may be restarting
    just as the session ends), for up to CLEANUP_RETRY seconds."""
    deadline = time.monotonic() + CLEANUP_RETRY
    warned = False
    while True:
        try:
            await action()
            return
        except ClusterUnreachableError:
            if time.monotonic() >= deadline:
                raise
            if not warned:
                progress.warn(f"the API server is not answering; retrying {what}")
                warned = True
            await asyncio.sleep(1.0)


async def _leave(kube: KubeClient, acquired: AcquiredAgent, tunnel: Tunnel | None) -> bool:
    """Say goodbye to a shared agent; True if we were its last session (so its Job goes)."""
    if tunnel is not None and tunnel.peer_closed:
        return True  # the agent ended every session: it is exiting (target gone, stopped)
    if tunnel is not None and not tunnel.closed and not tunnel.suspended:
        try:
            return (await tunnel.call(SessionLeave(), timeout=LEAVE_TIMEOUT)).last
        except (TimeoutError, TunnelClosedError, RemoteOpError):
            pass
    # Without an answer, remove the Job only if its agent is gone anyway: another
    # developer's sessions may still use a running one (it exits by itself when idle).
    try:
        return not await agent_running(kube, acquired.handle)
    except KubeError:
        return False


@dataclass
class AgentLink:
    """One agent next to one pod (or a targetless one), and this session's tunnel to it,
    kept connected (reconnect.py) until `close`."""

    kube: KubeClient
    target: ResolvedTarget | None
    acquired: AcquiredAgent
    pod: str
    tunnel: Tunnel
    keeper: asyncio.Task[None]

    @property
    def handle(self) -> AgentHandle:
        """The agent's Job."""
        return self.acquired.handle

    async def close(self, progress: Progress) -> None:
        """Leave the agent: say goodbye, close the tunnel, and delete the Job if this was
        its last session."""
        self.keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.keeper
        last = self.target is None or await _leave(self.kube, self.acquired, self.tunnel)
        await self.tunnel.close("session ended")
        await _finish_agent(self.kube, self.acquired, last, progress)


async def _finish_agent(
    kube: KubeClient, acquired: AcquiredAgent, last: bool, progress: Progress
) -> None:
    handle = acquired.handle
    if last:
        what = f"the Secret of {handle.describe()}" if handle.ephemeral else handle.describe()
        await _retrying(
            functools.partial(delete_agent_job, kube, handle), f"deleting {what}", progress
        )
        progress.detail(f"deleted {what}")
    else:
        progress.detail(f"left the shared agent {handle.job_name} to its other sessions")


async def attach_agent(
    kube: KubeClient,
    namespace: str,
    target: ResolvedTarget | None,
    config: TetherConfig,
    progress: Progress,
    session_id: str,
    *,
    tunnel: Tunnel | None = None,
    follow: Callable[[], Awaitable[bool]] | None = None,
) -> AgentLink:
    """Create or join the agent next to `target` (a targetless session's own agent for
    None) and connect to it: with a new tunnel, or `tunnel` rebased onto it (a session
    following its workload). `follow` is how the link's keeper moves the session when the
    pod goes. On failure nothing of the agent is left behind (and `tunnel` is not closed).

    `agent.mode` picks the agent (local/policy/agent_mode.py): the Job, an ephemeral
    container in the target's pod, or (auto) the Job and, when admission refuses its pod,
    the ephemeral container instead.
    """
    plan = plan_agent(
        config.agent.mode,
        targetless=target is None,
        incoming=config.incoming.mode != "off",
        host_network=target is not None and target.host_network,
    )
    attach = functools.partial(
        _attach, kube, namespace, target, config, progress, session_id, tunnel, follow
    )
    if target is not None and plan.ephemeral:
        return await attach(await _ephemeral_plan(kube, config, target, None))
    try:
        return await attach(None)
    except (AdmissionRefusedError, AgentRefusedError) as exc:
        if target is None or not plan.fallback:
            raise
        refused = exc
    ephemeral = await _ephemeral_plan(kube, config, target, refused)
    progress.warn(
        f"{refused}; agent.mode is auto, so the agent runs as an ephemeral container in pod"
        f" {target.pod_name} instead: {EPHEMERAL_COST}"
    )
    return await attach(ephemeral)


async def _ephemeral_plan(
    kube: KubeClient,
    config: TetherConfig,
    target: ResolvedTarget,
    refused: KubeError | None,
) -> tuple[AgentPlan, EphemeralSupport]:
    """The plan for an ephemeral agent, now that the server's version says what it allows;
    a SessionError if it cannot serve the session (after `refused`, the Job's refusal)."""
    version = await server_version(kube)
    support = support_for(version)
    plan = plan_agent(
        "ephemeral",
        targetless=False,
        incoming=config.incoming.mode != "off",
        host_network=target.host_network,
        support=support,
        server=f"this cluster runs {version}",
    )
    if plan.refusal is not None:
        if refused is not None:
            raise SessionError(f"{refused}; an ephemeral agent cannot stand in: {plan.refusal}")
        raise SessionError(f"agent.mode = ephemeral: {plan.refusal}")
    return plan, support


async def _acquire(
    kube: KubeClient,
    namespace: str,
    target: ResolvedTarget | None,
    config: TetherConfig,
    session_id: str,
    ephemeral: tuple[AgentPlan, EphemeralSupport] | None,
) -> AcquiredAgent:
    """Create the agent, or join the one already serving the target."""
    secret = new_secret()
    if target is not None and ephemeral is not None:
        plan, support = ephemeral
        joined = await joinable_agent(kube, target, config.agent.image)
        if joined is not None:
            return AcquiredAgent(joined[0], joined[1], False)
        try:
            handle = await start_ephemeral_agent(
                kube, target, config.agent, session_id, secret, support, plan.capabilities
            )
        except AdmissionRefusedError as exc:
            asked = f" (it asked for {', '.join(plan.capabilities)})" if plan.capabilities else ""
            raise SessionError(
                f"the policy of namespace {target.namespace} refuses the ephemeral agent"
                f"{asked}: {refusal_reason(exc)}"
            ) from None
        return AcquiredAgent(handle, secret, True)
    manifest = agent_job_manifest(
        session_id=session_id,
        agent=config.agent,
        target=target,
        namespace=namespace,
        shared=target is not None,
    )
    if target is None:
        return AcquiredAgent(await start_agent_job(kube, manifest, secret), secret, True)
    return await acquire_agent(kube, manifest, secret)


async def _attach(
    kube: KubeClient,
    namespace: str,
    target: ResolvedTarget | None,
    config: TetherConfig,
    progress: Progress,
    session_id: str,
    given: Tunnel | None,
    follow: Callable[[], Awaitable[bool]] | None,
    ephemeral: tuple[AgentPlan, EphemeralSupport] | None,
) -> AgentLink:
    """attach_agent with the kind of agent chosen: the Job (`ephemeral` None) or not."""
    for attempt in range(CONNECT_ATTEMPTS):
        acquired = await _acquire(kube, namespace, target, config, session_id, ephemeral)
        handle = acquired.handle
        verb = "created" if acquired.created else "joined"
        progress.detail(f"{verb} {handle.describe()}")
        for warning in handle.warnings:
            progress.warn(f"the API server warns about the agent Job: {warning}")
        tunnel = given
        try:
            try:
                ready, tunnel = await _connect_agent(
                    kube, handle, acquired.secret, config, progress, given
                )
            except TunnelClosedError as exc:
                if acquired.created or attempt == CONNECT_ATTEMPTS - 1:
                    raise SessionError(f"agent refused the session: {exc}") from None
                progress.detail(f"the shared agent is leaving ({exc}); starting over")
                await _finish_agent(kube, acquired, False, progress)
                continue
            shares_pod = not acquired.created and not handle.ephemeral
            if target is not None and shares_pod and target.container_id:
                # A shared agent serves the whole pod; it started on its creator's container.
                # (An ephemeral one was picked for this very container.)
                try:
                    await tunnel.call(SessionTarget(target.container_id))
                except RemoteOpError as exc:
                    what = f"container {target.container_name}"
                    raise SessionError(f"the shared agent cannot serve {what}: {exc}") from None
        except BaseException:
            connected = tunnel if tunnel is not None and tunnel.conn.handshaken else None
            last = (
                target is None
                or (connected is None and acquired.created)
                or await _leave(kube, acquired, connected)
            )
            if tunnel is not None and given is None:
                await tunnel.close("session ended")
            await _finish_agent(kube, acquired, last, progress)
            raise
        if follow is not None:
            tunnel.follow_codes = frozenset({TARGET_GONE, SESSION_TARGET_GONE})
        keeper = asyncio.create_task(
            keep_connected(
                tunnel,
                functools.partial(open_portforward, kube, handle.namespace, ready.pod, ready.port),
                config.agent.reconnect_timeout,
                functools.partial(agent_running, kube, handle),
                progress,
                follow=follow,
            )
        )
        return AgentLink(kube, target, acquired, ready.pod, tunnel, keeper)
    raise AssertionError("unreachable: the last attempt returns or raises")


@contextlib.asynccontextmanager
async def open_session(config: TetherConfig, progress: Progress) -> AsyncIterator[Session]:
    """Start everything a command needs; tear all of it down when the block exits.

    A session on a target shares that target's agent with every other session on it (it
    creates the agent Job or joins it); a targetless session has an agent of its own.
    """
    kube = await connect(config.kubeconfig, config.context)
    try:
        spec = parse_target(config.target or "targetless")
        namespace = config.namespace or kube.default_namespace
        await ensure_namespace(kube, namespace)
        target = None if spec.targetless else await resolve_target(kube, spec, namespace)
        progress.step(f"target: {target.describe() if target else 'targetless'}")
        session_id = new_session_id()
        holder: list[Session] = []

        async def follow() -> bool:
            return await holder[0].follow()

        follows = target is not None and spec.kind is not TargetKind.POD
        link = await attach_agent(
            kube,
            namespace,
            target,
            config,
            progress,
            session_id,
            follow=follow if follows else None,
        )
        session = Session(
            kube, namespace, target, link.tunnel, session_id, describe_user(), spec, config,
            progress, link,
        )  # fmt: skip
        holder.append(session)
        try:
            yield session
        finally:
            await session.link.close(progress)
    finally:
        await kube.close()
