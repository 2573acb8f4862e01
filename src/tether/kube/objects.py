"""Typed views of the API objects tether reads (the library's models are untyped)."""

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ContainerState:
    """One container's status in a pod."""

    name: str
    ready: bool
    container_id: str | None
    """Runtime id, e.g. "containerd://<hex>"; None until the container was created."""
    state: str
    """"running", "waiting", "terminated" or "unknown"."""
    reason: str
    """Waiting/terminated reason (e.g. "ErrImageNeverPull", "Error"), "" if none."""
    message: str
    exit_code: int | None


@dataclass(frozen=True)
class PodView:
    """The parts of a pod that targeting and agent start-up look at."""

    name: str
    namespace: str
    uid: str
    phase: str
    node_name: str | None
    pod_ip: str | None
    labels: dict[str, str]
    containers: list[str]
    """Names of spec.containers, in order."""
    sidecars: list[str]
    """Names of the native sidecars (1.28+: initContainers with restartPolicy Always)."""
    init_containers: list[str]
    """Names of the other initContainers (run to completion before the pod starts)."""
    annotations: dict[str, str]
    host_network: bool
    images: dict[str, str]
    """Container name -> image, as in the spec."""
    statuses: dict[str, ContainerState]
    created: datetime | None
    deleting: bool
    reason: str
    message: str
    conditions: dict[str, tuple[str, str, str]]
    """Condition type -> (status, reason, message)."""
    ephemeral: dict[str, str] = field(default_factory=dict)
    """Ephemeral container name -> the container it targets (targetContainerName, "" for
    none); their images are in `images`, their states in `statuses`."""

    def ready(self) -> bool:
        """Running, not being deleted, and every container reports ready."""
        return (
            self.phase == "Running"
            and not self.deleting
            and bool(self.containers)
            and all(c in self.statuses and self.statuses[c].ready for c in self.containers)
        )


def _container_state(status: Any) -> ContainerState:
    state = status.state
    kind, reason, message, exit_code = "unknown", "", "", None
    if state is not None and state.running is not None:
        kind = "running"
    elif state is not None and state.waiting is not None:
        kind = "waiting"
        reason = state.waiting.reason or ""
        message = state.waiting.message or ""
    elif state is not None and state.terminated is not None:
        kind = "terminated"
        reason = state.terminated.reason or ""
        message = state.terminated.message or ""
        exit_code = state.terminated.exit_code
    return ContainerState(
        name=str(status.name),
        ready=bool(status.ready),
        container_id=status.container_id or None,
        state=kind,
        reason=str(reason),
        message=str(message),
        exit_code=None if exit_code is None else int(exit_code),
    )


def pod_view(pod: Any) -> PodView:
    """Wrap a kubernetes_asyncio V1Pod."""
    meta, spec, status = pod.metadata, pod.spec, pod.status
    statuses = {
        s.name: _container_state(s) for s in (status.container_statuses if status else None) or []
    }
    containers = (spec.containers if spec else None) or []
    inits = (spec.init_containers if spec else None) or []
    # A native sidecar's status is among the init containers' (it is one, restarted always).
    statuses.update(
        {
            s.name: _container_state(s)
            for s in (status.init_container_statuses if status else None) or []
            if s.name not in statuses
        }
    )
    ephemerals = (spec.ephemeral_containers if spec else None) or []
    statuses.update(
        {
            s.name: _container_state(s)
            for s in (status.ephemeral_container_statuses if status else None) or []
            if s.name not in statuses
        }
    )
    conditions = {
        str(c.type): (str(c.status), c.reason or "", c.message or "")
        for c in (status.conditions if status else None) or []
    }
    return PodView(
        name=str(meta.name),
        namespace=str(meta.namespace),
        uid=str(meta.uid),
        phase=str(status.phase or "") if status else "",
        node_name=(spec.node_name or None) if spec else None,
        pod_ip=(status.pod_ip or None) if status else None,
        labels=dict(meta.labels or {}),
        containers=[str(c.name) for c in containers],
        sidecars=[str(c.name) for c in inits if c.restart_policy == "Always"],
        init_containers=[str(c.name) for c in inits if c.restart_policy != "Always"],
        annotations=dict(meta.annotations or {}),
        host_network=bool(spec.host_network) if spec else False,
        images={str(c.name): str(c.image) for c in [*containers, *inits, *ephemerals]},
        statuses=statuses,
        created=meta.creation_timestamp,
        deleting=meta.deletion_timestamp is not None,
        reason=str(status.reason or "") if status else "",
        message=str(status.message or "") if status else "",
        conditions=conditions,
        ephemeral={str(c.name): str(c.target_container_name or "") for c in ephemerals},
    )


def label_selector(selector: Any) -> str:
    """A V1LabelSelector as the string form list calls take ("a=b,c in (d,e)")."""
    parts = [f"{k}={v}" for k, v in sorted((selector.match_labels or {}).items())]
    for expr in selector.match_expressions or []:
        values = ",".join(expr.values or [])
        op = expr.operator
        if op == "In":
            parts.append(f"{expr.key} in ({values})")
        elif op == "NotIn":
            parts.append(f"{expr.key} notin ({values})")
        elif op == "Exists":
            parts.append(str(expr.key))
        elif op == "DoesNotExist":
            parts.append(f"!{expr.key}")
    return ",".join(parts)
