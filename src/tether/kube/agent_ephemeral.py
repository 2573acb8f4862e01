"""The agent as an ephemeral container in the target's pod (`agent.mode = ephemeral`).

No Job, no hostPID: the container is added to the running pod with `targetContainerName`, so
it shares the target container's process namespace (the target is its PID 1) and the pod's
network namespace. It asks for no privilege unless mirror or steal needs NET_ADMIN, which
only Kubernetes 1.21+ lets an ephemeral container have.

Two API shapes (shared/notes/modern-kubernetes.md T9): up to 1.21 the `ephemeralcontainers`
subresource speaks the `EphemeralContainers` kind; from 1.22 it speaks `Pod`. Both take a
strategic-merge patch that adds one container (merged by name), so only the body differs.

An ephemeral container cannot be removed: the agent exits when idle and stays in the pod's
spec, terminated, until the pod goes. A later session joins a running one or adds another
under a new name. Its session secret is in a Secret of the same name, for sessions that join
it, owned by the pod (the garbage collector removes it with the pod) and deleted by the
session that leaves last; the container itself holds only the secret's SHA-256.
"""

import base64
import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.config.models import AgentConfig
from tether.kube.agent_manifest import (
    SECRET_KEY,
    SESSION_LABEL,
    AgentHandle,
    secret_value,
)
from tether.kube.client import KubeClient
from tether.kube.errors import AdmissionRefusedError, NotFoundError, Operation
from tether.kube.objects import PodView, pod_view
from tether.kube.targets import AGENT_APP_LABEL, ResolvedTarget
from tether.protocol.launch import COMMAND, SECRET_DIGEST_ENV, AgentArgs

Shape = Literal["EphemeralContainers", "Pod"]
PREFIX = "tether-agent-"
STRATEGIC_MERGE = "application/strategic-merge-patch+json"
# Enough for mirror and steal (iptables); env and files need no capability when the agent
# and the target run as the same user, which the agent (root) is for a root target.
INCOMING_CAPABILITIES = ("NET_ADMIN",)


def server_minor(git_version: str) -> tuple[int, int] | None:
    """(major, minor) of an API server's gitVersion ("v1.30.2-gke.1" -> (1, 30)), or None."""
    parts = git_version.lstrip("v").split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()))
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class EphemeralSupport:
    """What the API server's version allows an ephemeral agent (pure: `support_for`)."""

    shape: Shape
    """The kind the `ephemeralcontainers` subresource speaks."""
    capabilities: bool
    """Whether the container may carry a securityContext (capabilities): 1.21+."""


def support_for(git_version: str) -> EphemeralSupport:
    """The ephemeral-container API of a server of `git_version`; an unreadable version is
    taken for a modern one (the legacy shape ended with 1.21, years ago)."""
    minor = server_minor(git_version) or (1, 99)
    return EphemeralSupport(
        shape="Pod" if minor >= (1, 22) else "EphemeralContainers",
        capabilities=minor >= (1, 21),
    )


def container_name(session_id: str) -> str:
    """The ephemeral container's (and its Secret's) name: unique per session, since names
    in a pod can never be reused."""
    return f"{PREFIX}{session_id}"


def ephemeral_container(
    *,
    name: str,
    agent: AgentConfig,
    target: ResolvedTarget,
    secret: str,
    capabilities: Sequence[str] = (),
) -> dict[str, Any]:
    """The EphemeralContainer that runs the agent for `target`'s container (pure).

    It listens on a free port (`--port 0`: the pod's own ports are the app's; the ready line
    says which) and has no resources, ports or probes, which ephemeral containers may not.
    """
    launch = AgentArgs(port=0, idle_timeout=agent.idle_timeout, in_pod=True)
    secret_digest = hashlib.sha256(bytes.fromhex(secret)).hexdigest()
    container: dict[str, Any] = {
        "name": name,
        "image": agent.image,
        "command": list(COMMAND),
        "args": launch.to_argv(),
        # Not a secretKeyRef: on 1.20 the kubelet may not read a Secret that only an
        # ephemeral container names (the node authorizer's graph skips them). Only the
        # secret's digest is in the spec; the Secret keeps the secret for joining sessions.
        "env": [{"name": SECRET_DIGEST_ENV, "value": secret_digest}],
        "targetContainerName": target.container_name,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if agent.image_pull_policy is not None:
        container["imagePullPolicy"] = agent.image_pull_policy
    if capabilities:
        container["securityContext"] = {"capabilities": {"add": list(capabilities)}}
    return container


def ephemeral_patch(container: dict[str, Any], shape: Shape) -> dict[str, Any]:
    """The strategic-merge patch of the `ephemeralcontainers` subresource that adds
    `container` (pure): the legacy kind holds the list at its top, the Pod in its spec."""
    if shape == "EphemeralContainers":
        return {"ephemeralContainers": [container]}
    return {"spec": {"ephemeralContainers": [container]}}


def ephemeral_secret_manifest(
    name: str, target: ResolvedTarget, session_id: str, secret: str
) -> dict[str, Any]:
    """The Secret an ephemeral agent reads its session secret from, owned by the target's
    pod so that it goes with the pod at the latest (pure)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": target.namespace,
            "labels": {AGENT_APP_LABEL[0]: AGENT_APP_LABEL[1], SESSION_LABEL: session_id},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": target.pod_name,
                    "uid": target.pod_uid,
                    "blockOwnerDeletion": False,
                }
            ],
        },
        "type": "Opaque",
        "data": {SECRET_KEY: base64.b64encode(secret.encode()).decode()},
    }


def joinable(pod: PodView, target_container: str, image: str) -> list[str]:
    """The running ephemeral agents of `pod` that serve `target_container` with `image`,
    newest name last (pure): a session joins one rather than adding another."""
    return sorted(
        name
        for name, aimed in pod.ephemeral.items()
        if name.startswith(PREFIX)
        and aimed == target_container
        and pod.images.get(name) == image
        and name in pod.statuses
        and pod.statuses[name].state == "running"
    )


def handle_for(target: ResolvedTarget, name: str, session_id: str) -> AgentHandle:
    """The handle of the ephemeral agent `name` in `target`'s pod."""
    return AgentHandle(target.namespace, name, session_id, target.pod_uid, pod=target.pod_name)


async def read_target_pod(kc: KubeClient, namespace: str, name: str) -> PodView | None:
    """The pod an ephemeral agent is in (None once it is gone)."""
    try:
        pod = await kc.call(
            kc.core.read_namespaced_pod(name, namespace), Operation("get", "pods", namespace, name)
        )
    except NotFoundError:
        return None
    return pod_view(pod)


async def add_ephemeral_container(
    kc: KubeClient,
    target: ResolvedTarget,
    container: dict[str, Any],
    shape: Shape,
    *,
    dry_run: bool = False,
) -> None:
    """PATCH `container` into `target`'s pod. Raises AdmissionRefusedError (a policy refused
    it: Pod Security checks ephemeral containers too), ForbiddenError (RBAC: patch
    pods/ephemeralcontainers), NotFoundError (the pod, or ephemeral containers disabled)."""
    op = Operation(
        "patch",
        "pods/ephemeralcontainers",
        target.namespace,
        target.pod_name,
        not_found_hint="the pod is gone, or the cluster has ephemeral containers off: the"
        " EphemeralContainers feature gate, on by default from Kubernetes 1.23",
    )
    # The raw response: the 1.20 answer is the EphemeralContainers kind, which the client
    # library (built for the Pod kind) cannot read; the status code is all we need.
    response = await kc.call(
        kc.core.patch_namespaced_pod_ephemeralcontainers(
            target.pod_name,
            target.namespace,
            ephemeral_patch(container, shape),
            dry_run="All" if dry_run else None,
            _content_type=STRATEGIC_MERGE,
            _preload_content=False,
        ),
        op,
    )
    response.release()


async def _create_secret(kc: KubeClient, manifest: dict[str, Any]) -> None:
    meta = manifest["metadata"]
    await kc.call(
        kc.core.create_namespaced_secret(meta["namespace"], manifest),
        Operation("create", "secrets", meta["namespace"], meta["name"]),
    )


async def delete_ephemeral_secret(kc: KubeClient, handle: AgentHandle) -> None:
    """Delete the ephemeral agent's Secret (the container itself cannot be removed); a
    missing one is fine."""
    with contextlib.suppress(NotFoundError):
        await kc.call(
            kc.core.delete_namespaced_secret(handle.job_name, handle.namespace),
            Operation("delete", "secrets", handle.namespace, handle.job_name),
        )


async def start_ephemeral_agent(
    kc: KubeClient,
    target: ResolvedTarget,
    agent: AgentConfig,
    session_id: str,
    secret: str,
    support: EphemeralSupport,
    capabilities: Sequence[str] = (),
) -> AgentHandle:
    """Add a new ephemeral agent to `target`'s pod, its Secret first (the kubelet would not
    start the container without it); if the container cannot be added, the Secret goes."""
    name = container_name(session_id)
    await _create_secret(kc, ephemeral_secret_manifest(name, target, session_id, secret))
    handle = handle_for(target, name, session_id)
    try:
        container = ephemeral_container(
            name=name, agent=agent, target=target, secret=secret, capabilities=capabilities
        )
        await add_ephemeral_container(kc, target, container, support.shape)
    except BaseException:
        await delete_ephemeral_secret(kc, handle)
        raise
    return handle


async def joinable_agent(
    kc: KubeClient, target: ResolvedTarget, image: str
) -> tuple[AgentHandle, str] | None:
    """A running ephemeral agent of `target`'s container and its session secret, or None."""
    pod = await read_target_pod(kc, target.namespace, target.pod_name)
    if pod is None:
        return None
    for name in reversed(joinable(pod, target.container_name, image)):
        try:
            found = await kc.call(
                kc.core.read_namespaced_secret(name, target.namespace),
                Operation("get", "secrets", target.namespace, name),
            )
        except NotFoundError:
            continue  # its last session left (it is exiting): not one to join
        secret = secret_value(found)
        if secret is not None:
            session = str((found.metadata.labels or {}).get(SESSION_LABEL, ""))
            return handle_for(target, name, session), secret
    return None


def refusal_reason(exc: AdmissionRefusedError) -> str:
    """The policy's own words about a refused ephemeral container, on one line."""
    return " ".join(exc.reason.split()) or str(exc)
