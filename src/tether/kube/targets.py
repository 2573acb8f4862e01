"""Targets: parsing "deployment/NAME/container/C", resolving them to a running container,
and listing what a namespace offers."""

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn

from tether.kube.client import KubeClient
from tether.kube.errors import (
    ContainerNotFoundError,
    InvalidTargetError,
    NamespaceNotFoundError,
    NoReadyPodError,
    NotFoundError,
    Operation,
    TargetNotFoundError,
    TargetNotRunningError,
    error_for_exception,
)
from tether.kube.objects import PodView, label_selector, pod_view

AGENT_APP_LABEL = ("app.kubernetes.io/name", "tether-agent")

# Sidecars a service mesh injects: with no container named, the target is the first other one.
MESH_SIDECARS = frozenset(
    {
        "istio-proxy",
        "istio-validation",
        "linkerd-proxy",
        "envoy",
        "envoy-sidecar",
        "kuma-sidecar",
        "kuma-dp",
        "consul-dataplane",
        "consul-connect-envoy-sidecar",
        "aws-appmesh-envoy",
        "osm-envoy",
        "daprd",
        "vault-agent",
        "cloud-sql-proxy",
    }
)


# Mesh init containers (they write the pod's traffic redirection) and annotations a mesh's
# injector leaves: with native sidecars (1.28+) the proxy itself is an init container, and in
# Istio's ambient mode there is no proxy container at all.
_MESH_MARKERS = (
    ("istio", ("istio-proxy", "istio-init", "istio-validation"), ("sidecar.istio.io/status",)),
    ("istio-ambient", (), ("ambient.istio.io/redirection",)),
    ("linkerd", ("linkerd-proxy", "linkerd-init", "linkerd-network-validator"),
     ("linkerd.io/proxy-version",)),
    ("kuma", ("kuma-sidecar", "kuma-init", "kuma-dp"), ("kuma.io/sidecar-injected",)),
    ("consul", ("consul-dataplane", "consul-connect-envoy-sidecar", "consul-connect-inject-init"),
     ("consul.hashicorp.com/connect-inject-status",)),
    ("aws-appmesh", ("aws-appmesh-envoy", "proxyinit"), ()),
    ("osm", ("osm-envoy", "osm-init"), ()),
)  # fmt: skip

# kubectl's annotation naming the container a command goes to when none is named.
DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


def detect_mesh(pod: PodView) -> str | None:
    """The service mesh whose containers (regular, native sidecar or init) or annotations the
    pod carries, or None."""
    names = {*pod.containers, *pod.sidecars, *pod.init_containers}
    for mesh, containers, annotations in _MESH_MARKERS:
        if names.intersection(containers) or any(
            pod.annotations.get(a, "") not in ("", "disabled") for a in annotations
        ):
            return mesh
    return None


class TargetKind(StrEnum):
    """What a target names."""

    POD = "pod"
    DEPLOYMENT = "deployment"
    STATEFULSET = "statefulset"
    TARGETLESS = "targetless"


_KINDS = {
    "pod": TargetKind.POD,
    "deployment": TargetKind.DEPLOYMENT,
    "deploy": TargetKind.DEPLOYMENT,
    "statefulset": TargetKind.STATEFULSET,
    "sts": TargetKind.STATEFULSET,
}

# DNS-1123 subdomain (object names) and label (container names).
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_CONTAINER = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

TARGET_FORMS = (
    "pod/NAME, deployment/NAME (or deploy/NAME), statefulset/NAME (or sts/NAME),"
    " each optionally followed by /container/NAME; or targetless"
)


@dataclass(frozen=True)
class TargetSpec:
    """A parsed target: what the user named, not yet looked up."""

    kind: TargetKind
    name: str | None = None
    """The pod or workload name; None for targetless."""
    container: str | None = None

    @property
    def targetless(self) -> bool:
        """True for the "targetless" target (no pod: the agent runs on its own)."""
        return self.kind is TargetKind.TARGETLESS

    def __str__(self) -> str:
        if self.kind is TargetKind.TARGETLESS:
            return "targetless"
        text = f"{self.kind.value}/{self.name}"
        return f"{text}/container/{self.container}" if self.container else text


@dataclass(frozen=True)
class ResolvedTarget:
    """A target looked up: the pod and container tether attaches to."""

    kind: TargetKind
    name: str
    """The name as given (the workload's for deployments/statefulsets)."""
    namespace: str
    pod_name: str
    pod_uid: str
    node_name: str
    container_name: str
    container_id: str
    """Runtime id with its scheme, e.g. "containerd://<hex>"."""
    pod_ip: str | None
    mesh: str | None = None
    """The service mesh the pod is part of (see detect_mesh), if any."""
    host_network: bool = False
    """The pod uses the node's network: the agent refuses to redirect its ports."""
    deleting: bool = False
    """The pod is being deleted (it may still run for its grace period)."""

    def describe(self) -> str:
        """One line for the user: which pod and container a target resolved to."""
        via = "" if self.kind is TargetKind.POD else f"{self.kind.value}/{self.name} -> "
        mesh = f" (mesh: {self.mesh})" if self.mesh else ""
        mesh += " (hostNetwork: no mirror or steal)" if self.host_network else ""
        return (
            f"{via}pod {self.pod_name} container {self.container_name} in namespace"
            f" {self.namespace} on node {self.node_name}{mesh}"
        )


def parse_target(text: str) -> TargetSpec:
    """Parse a target string; raises InvalidTargetError listing the accepted forms."""
    raw = text.strip()
    if raw.lower() == "targetless":
        return TargetSpec(TargetKind.TARGETLESS)
    parts = raw.split("/")
    kind = _KINDS.get(parts[0].lower()) if parts else None
    container: str | None = None
    if len(parts) == 4 and parts[2] == "container":
        container = parts[3]
    elif len(parts) != 2:
        kind = None
    if (
        kind is None
        or not _NAME.match(parts[1])
        or (container is not None and not _CONTAINER.match(container))
    ):
        raise InvalidTargetError(f'invalid target "{text}": expected {TARGET_FORMS}')
    return TargetSpec(kind, parts[1], container)


async def ensure_namespace(kc: KubeClient, namespace: str) -> None:
    """Raise NamespaceNotFoundError if `namespace` does not exist (silent if we may not read it)."""
    op = Operation("get", "namespaces", name=namespace)
    try:
        await kc.call(kc.core.read_namespace(namespace), op)
    except NotFoundError:
        raise NamespaceNotFoundError(
            f'namespace "{namespace}" not found (kubectl get namespaces lists them)'
        ) from None
    except Exception:
        # Only a definite 404 is worth reporting; without RBAC on namespaces, stay silent.
        return


async def _target_not_found(kc: KubeClient, kind: str, name: str, namespace: str) -> NoReturn:
    await ensure_namespace(kc, namespace)
    raise TargetNotFoundError(
        f'{kind} "{name}" not found in namespace "{namespace}"'
        f" (tether ls -n {namespace} lists targets)"
    )


async def resolve_target(kc: KubeClient, spec: TargetSpec, namespace: str) -> ResolvedTarget:
    """Find the pod and container `spec` means in `namespace`.

    For a deployment or statefulset this picks a Running pod whose containers are all ready
    (the newest); with no container named, the first container that is not a mesh sidecar.
    Raises TargetNotFoundError, NamespaceNotFoundError, NoReadyPodError,
    TargetNotRunningError, ContainerNotFoundError.
    Targetless has no pod: callers handle it before (ValueError here).
    """
    if spec.kind is TargetKind.TARGETLESS or spec.name is None:
        raise ValueError("targetless has no pod to resolve")
    if spec.kind is TargetKind.POD:
        pod = await _read_pod(kc, spec.name, namespace)
        if pod.phase != "Running" or pod.deleting:
            state = "being deleted" if pod.deleting else (pod.phase or "unknown")
            raise TargetNotRunningError(
                f'pod "{pod.name}" in namespace "{namespace}" is {state}, not Running'
                f" (kubectl -n {namespace} describe pod {pod.name})"
            )
    else:
        pod = await _pick_workload_pod(kc, spec.kind, spec.name, namespace)
    return _resolved(spec, namespace, pod)


async def ready_targets(
    kc: KubeClient,
    spec: TargetSpec,
    namespace: str,
    *,
    started: bool = False,
    deleting: bool = False,
    scheduled: bool = False,
) -> list[ResolvedTarget]:
    """Every Ready pod of a deployment or statefulset target (with `started`, every pod
    whose chosen container runs, Ready or not yet), resolved as `resolve_target` would
    resolve it; with `scheduled`, every pod given a node, those whose container does not run
    yet with an empty `container_id`. Pods being deleted are left out unless `deleting`
    (`ResolvedTarget.deleting` says which). For a pod target, that pod if it runs. Raises as
    `resolve_target` for a missing workload."""
    if spec.kind is TargetKind.POD:
        return [await resolve_target(kc, spec, namespace)]
    if spec.kind is TargetKind.TARGETLESS or spec.name is None:
        raise ValueError("targetless has no pods")
    _, views = await _workload_pods(kc, spec.kind, spec.name, namespace)
    out = []
    for pod in views:
        if pod.deleting and not deleting:
            continue
        if scheduled:
            if pod.phase not in ("Pending", "Running") or not pod.node_name:
                continue
        elif pod.phase != "Running" or not (started or pod.ready()):
            continue
        try:
            out.append(_resolved(spec, namespace, pod, pending=scheduled))
        except (TargetNotRunningError, ContainerNotFoundError):
            continue
    return out


def _resolved(
    spec: TargetSpec, namespace: str, pod: PodView, *, pending: bool = False
) -> ResolvedTarget:
    assert spec.name is not None
    container = pick_container(pod, spec.container)
    status = pod.statuses.get(container)
    running = status is not None and status.state == "running" and bool(status.container_id)
    if pending and not running and pod.node_name:
        # Scheduled, its container not running yet: a target by its pod (the sandbox), with
        # no container ID; only incoming traffic can use it.
        status = None
    elif status is None or status.state != "running" or not status.container_id:
        state = status.state if status else "not started"
        reason = f" ({status.reason})" if status and status.reason else ""
        raise TargetNotRunningError(
            f'container "{container}" of pod "{pod.name}" in namespace "{namespace}" is'
            f" {state}{reason}, not running (kubectl -n {namespace} describe pod {pod.name})"
        )
    return ResolvedTarget(
        kind=spec.kind,
        name=spec.name,
        namespace=namespace,
        pod_name=pod.name,
        pod_uid=pod.uid,
        node_name=pod.node_name or "",
        container_name=container,
        container_id=(status.container_id or "") if status is not None else "",
        pod_ip=pod.pod_ip,
        mesh=detect_mesh(pod),
        host_network=pod.host_network,
        deleting=pod.deleting,
    )


def pick_container(pod: PodView, wanted: str | None) -> str:
    """`wanted` if the pod has it (a native sidecar may be named too), else (None) the
    container kubectl's default-container annotation names, else the first regular container
    that is not a mesh sidecar. Native sidecars are never picked by default."""
    if wanted is not None:
        if wanted not in pod.containers and wanted not in pod.sidecars:
            raise ContainerNotFoundError(
                f'container "{wanted}" not found in pod "{pod.name}"'
                f" (containers: {', '.join([*pod.containers, *pod.sidecars])})"
            )
        return wanted
    default = pod.annotations.get(DEFAULT_CONTAINER_ANNOTATION)
    if default in pod.containers:
        return default
    for name in pod.containers:
        if name not in MESH_SIDECARS:
            return name
    if not pod.containers:
        raise ContainerNotFoundError(f'pod "{pod.name}" has no containers')
    return pod.containers[0]


async def _read_pod(kc: KubeClient, name: str, namespace: str) -> PodView:
    op = Operation("get", "pods", namespace, name)
    try:
        return pod_view(await kc.call(kc.core.read_namespaced_pod(name, namespace), op))
    except NotFoundError:
        await _target_not_found(kc, "pod", name, namespace)


async def _pick_workload_pod(
    kc: KubeClient, kind: TargetKind, name: str, namespace: str
) -> PodView:
    selector, views = await _workload_pods(kc, kind, name, namespace)
    ready = [p for p in views if p.ready()]
    if not ready:
        seen = ", ".join(f"{p.name} {_pod_state(p)}" for p in views[:3]) or "no pods"
        raise NoReadyPodError(
            f'no ready pod for {kind.value} "{name}" in namespace "{namespace}" ({seen};'
            f" kubectl -n {namespace} get pods -l {selector})"
        )
    # The newest ready pod: during a rollout it is the one that stays.
    epoch = datetime.min.replace(tzinfo=UTC)
    return max(ready, key=lambda p: (p.created or epoch, p.name))


async def _workload_pods(
    kc: KubeClient, kind: TargetKind, name: str, namespace: str
) -> tuple[str, list[PodView]]:
    """The workload's label selector and its pods."""
    if kind is TargetKind.DEPLOYMENT:
        op = Operation("get", "deployments.apps", namespace, name)
        request = kc.apps.read_namespaced_deployment(name, namespace)
    else:
        op = Operation("get", "statefulsets.apps", namespace, name)
        request = kc.apps.read_namespaced_stateful_set(name, namespace)
    try:
        workload = await kc.call(request, op)
    except NotFoundError:
        await _target_not_found(kc, kind.value, name, namespace)
    selector = label_selector(workload.spec.selector)
    pods = await kc.call(
        kc.core.list_namespaced_pod(namespace, label_selector=selector),
        Operation("list", "pods", namespace),
    )
    return selector, [pod_view(p) for p in pods.items]


def _pod_state(pod: PodView) -> str:
    if pod.deleting:
        return "terminating"
    waiting = [s.reason for s in pod.statuses.values() if s.reason]
    if waiting:
        return f"{pod.phase or 'Pending'}/{waiting[0]}"
    if pod.phase == "Running":
        return "Running/not ready"
    return pod.phase or "Pending"


async def list_targets(kc: KubeClient, namespace: str) -> list[str]:
    """Every target in `namespace`, sorted: pod/x (and pod/x/container/c for each container
    when x has more than one), deployment/x, statefulset/x. Raises NamespaceNotFoundError."""
    pods, deployments, statefulsets = await asyncio.gather(
        kc.call(kc.core.list_namespaced_pod(namespace), Operation("list", "pods", namespace)),
        kc.call(
            kc.apps.list_namespaced_deployment(namespace),
            Operation("list", "deployments.apps", namespace),
        ),
        kc.call(
            kc.apps.list_namespaced_stateful_set(namespace),
            Operation("list", "statefulsets.apps", namespace),
        ),
    )
    targets: list[str] = []
    for pod in map(pod_view, pods.items):
        if _is_agent(pod) or pod.deleting or pod.phase in ("Succeeded", "Failed"):
            continue
        targets.append(f"pod/{pod.name}")
        if len(pod.containers) > 1:
            targets.extend(f"pod/{pod.name}/container/{c}" for c in pod.containers)
    targets.extend(f"deployment/{_name(d)}" for d in deployments.items)
    targets.extend(f"statefulset/{_name(s)}" for s in statefulsets.items)
    if not targets:
        # Listing a missing namespace returns nothing rather than 404.
        await ensure_namespace(kc, namespace)
    return sorted(targets)


def _is_agent(pod: PodView) -> bool:
    key, value = AGENT_APP_LABEL
    return pod.labels.get(key) == value


def _name(obj: Any) -> str:
    return str(obj.metadata.name)


async def watch_workload_pods(
    kc: KubeClient, spec: TargetSpec, namespace: str, on_change: Callable[[], None]
) -> None:
    """Call `on_change()` at every change of the workload's pods (added, a phase or a
    readiness flip, deleted), until cancelled; the watch is renewed when the server ends it.
    Raises a KubeError when the workload or the watch cannot be had."""
    from kubernetes_asyncio import watch

    if spec.kind is TargetKind.POD or spec.kind is TargetKind.TARGETLESS or spec.name is None:
        raise ValueError("only a workload has pods to watch")
    selector, _ = await _workload_pods(kc, spec.kind, spec.name, namespace)
    op = Operation("watch", "pods", namespace)
    while True:
        try:
            async with watch.Watch().stream(
                kc.core.list_namespaced_pod,
                namespace,
                label_selector=selector,
                timeout_seconds=300,
            ) as events:
                async for _ in events:
                    on_change()
        except Exception as exc:
            error = error_for_exception(exc, op, kc.server)
            if error is None:
                raise
            raise error from exc
