"""A session: the target resolved, an agent Job next to it, and one tunnel to that agent
over a single API-server port-forward. Cleanup (the Job) happens on every exit path."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from tether import __version__
from tether.config import TetherConfig
from tether.kube.client import KubeClient, connect
from tether.kube.job import (
    AgentHandle,
    agent_job_manifest,
    delete_agent_job,
    new_secret,
    new_session_id,
    start_agent_job,
    wait_agent_ready,
)
from tether.kube.portforward import open_portforward
from tether.kube.targets import ResolvedTarget, ensure_namespace, parse_target, resolve_target
from tether.local.progress import Progress
from tether.protocol import Connection, Role
from tether.tunnel import Tunnel, TunnelClosedError

HANDSHAKE_TIMEOUT = 15.0
KEEPALIVE_INTERVAL = 15.0


class SessionError(Exception):
    """A session could not start or broke; the message is one line for the user."""


@dataclass
class Session:
    """A live session: use `tunnel` for requests and streams."""

    kube: KubeClient
    namespace: str
    target: ResolvedTarget | None
    agent: AgentHandle
    agent_pod: str
    tunnel: Tunnel


async def _keepalive(tunnel: Tunnel, progress: Progress) -> None:
    # A dead port-forward can go unnoticed until the next write; pings notice it.
    while not tunnel.closed:
        await asyncio.sleep(KEEPALIVE_INTERVAL)
        try:
            rtt = await tunnel.ping(timeout=KEEPALIVE_INTERVAL)
        except (TimeoutError, TunnelClosedError):
            progress.warn("the agent stopped answering keepalive pings")
            await tunnel.close("keepalive timeout")
            return
        progress.detail(f"keepalive rtt {rtt * 1000:.1f} ms")


@contextlib.asynccontextmanager
async def open_session(config: TetherConfig, progress: Progress) -> AsyncIterator[Session]:
    """Start everything a command needs; tear all of it down when the block exits."""
    kube = await connect(config.kubeconfig, config.context)
    try:
        spec = parse_target(config.target or "targetless")
        namespace = config.namespace or kube.default_namespace
        await ensure_namespace(kube, namespace)
        target = None if spec.targetless else await resolve_target(kube, spec, namespace)
        progress.step(f"target: {target.describe() if target else 'targetless'}")
        session_id, secret = new_session_id(), new_secret()
        manifest = agent_job_manifest(
            session_id=session_id,
            secret=secret,
            agent=config.agent,
            target=target,
            namespace=namespace,
        )
        handle = await start_agent_job(kube, manifest)
        progress.detail(f"created job {handle.namespace}/{handle.job_name}")
        try:
            pod = await wait_agent_ready(
                kube, handle, config.agent.startup_timeout, on_phase=progress.detail
            )
            progress.step(f"agent {pod} ready")
            forward = await open_portforward(kube, handle.namespace, pod, config.agent.port)
            conn = Connection(Role.CLIENT, secret=bytes.fromhex(secret), version=__version__)
            tunnel = Tunnel(conn, forward)
            try:
                await tunnel.start(timeout=HANDSHAKE_TIMEOUT)
            except TunnelClosedError as exc:
                await forward.close()
                raise SessionError(f"agent refused the session: {exc}") from None
            keepalive = asyncio.create_task(_keepalive(tunnel, progress))
            try:
                yield Session(kube, namespace, target, handle, pod, tunnel)
            finally:
                keepalive.cancel()
                await tunnel.close("session ended")
        finally:
            await delete_agent_job(kube, handle)
            progress.detail(f"deleted job {handle.namespace}/{handle.job_name}")
    finally:
        await kube.close()
