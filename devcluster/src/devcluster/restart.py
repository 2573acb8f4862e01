"""`devcluster restart COMPONENT`: which component, and when it counts as back (pure: no I/O).

A restart is what a real cluster sees when one component dies and comes back: the process is
stopped (SIGTERM, SIGKILL after a grace period), which cuts every connection through it, then
started again exactly as `up` starts it (components.for_daemon). cluster.restart does the
stopping, starting and probing; this module decides what to restart and which probes must pass.
"""

import datetime
import enum
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from devcluster.errors import DevclusterError


class Check(enum.Enum):
    """One probe of a component's health; the value is how a timeout message names it."""

    ETCD_HEALTH = "etcd /health"
    APISERVER_READYZ = "API server /readyz"
    CONTAINERD_VERSION = "containerd answering on its socket"
    KUBELET_HEALTHZ = "kubelet healthz"
    NODE_LEASE_RENEWED = "node lease renewed by the new kubelet"
    NODE_READY_REPORTED = "node Ready reported by the new kubelet"
    PODS_READY = "pods Ready again under the new kubelet"
    KUBELET_RUNTIME = "kubelet reaching containerd (CRI)"
    NODE_READY = "node Ready"
    SCHEDULER_HEALTHZ = "scheduler healthz"
    CONTROLLER_MANAGER_HEALTHZ = "controller-manager healthz"
    KUBE_PROXY_HEALTHZ = "kube-proxy healthz"


@dataclass(frozen=True)
class Target:
    """A restartable component: the name users give, its daemon (PID file, log, factory) name,
    and the checks that must pass, in order, before it counts as back."""

    name: str
    daemon: str
    checks: tuple[Check, ...]


# In the order the "unknown component" message lists them.
TARGETS = (
    Target("apiserver", "kube-apiserver", (Check.APISERVER_READYZ,)),
    # /healthz answers as soon as the HTTP server is up; only a lease renewed and a node status
    # written after the new process started prove that this kubelet is talking to the API
    # server (the old kubelet's Ready condition stays in etcd for 40 s after it died). Then
    # the pods: see pods_not_back.
    Target(
        "kubelet",
        "kubelet",
        (
            Check.KUBELET_HEALTHZ,
            Check.NODE_LEASE_RENEWED,
            Check.NODE_READY_REPORTED,
            Check.PODS_READY,
        ),
    ),
    # containerd answering is not enough: the kubelet's gRPC connection to the old socket
    # reconnects with a back-off, and until it has, exec, logs and new pods fail.
    Target(
        "containerd",
        "containerd",
        (Check.CONTAINERD_VERSION, Check.KUBELET_RUNTIME, Check.NODE_READY),
    ),
    # The API server is etcd's only client: back means the API server is ready on it again.
    Target("etcd", "etcd", (Check.ETCD_HEALTH, Check.APISERVER_READYZ)),
    Target("scheduler", "kube-scheduler", (Check.SCHEDULER_HEALTHZ,)),
    Target("controller-manager", "kube-controller-manager", (Check.CONTROLLER_MANAGER_HEALTHZ,)),
    Target("kube-proxy", "kube-proxy", (Check.KUBE_PROXY_HEALTHZ,)),
)

# Restarting these moves iptables rules (kube-proxy prepends its jumps): re-check the guards.
TOUCH_IPTABLES = frozenset({"kubelet", "kube-proxy"})

# Their containers must outlive the restart: containerd's shims keep them running.
KEEP_CONTAINERS = frozenset({"containerd", "kubelet"})


class UnknownComponentError(DevclusterError):
    """A name `restart` does not know; the message lists the choices."""


def choose(word: str) -> Target:
    """The target `word` names: a short name (`apiserver`) or a daemon name as `devcluster
    status` prints it (`kube-apiserver`), in any case."""
    key = word.strip().lower()
    for target in TARGETS:
        if key in (target.name, target.daemon):
            return target
    names = ", ".join(t.name for t in TARGETS)
    raise UnknownComponentError(f"unknown component {word!r}: choose one of {names}")


def first_pending(checks: tuple[Check, ...], passes: Callable[[Check], bool]) -> Check | None:
    """The first of `checks` that does not pass yet, or None when all do. Checks run in order
    and stop at the first failure: a later one presumes the earlier ones (no node status
    without an API server), and a failing one is not worth the later probes' time."""
    for check in checks:
        if not passes(check):
            return check
    return None


def timestamp(text: str) -> float:
    """Seconds since the epoch of a Kubernetes Time ("...Z") or MicroTime ("....123456Z")."""
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def node_ready(node: Mapping[str, Any], since: float | None = None) -> bool:
    """Whether a Node object says Ready, from a kubelet heartbeat at or after `since` when
    given. Heartbeats have whole seconds: `since` is compared rounded down."""
    for c in node.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready" and c.get("status") == "True":
            if since is None:
                return True
            beat = c.get("lastHeartbeatTime")
            return beat is not None and timestamp(beat) >= int(since)
    return False


def lease_renewed(lease: Mapping[str, Any], holder: str, since: float) -> bool:
    """Whether a node Lease was renewed by `holder` at or after `since` (MicroTime: a renewal
    after the restart can only come from the new process)."""
    spec = lease.get("spec", {})
    renewed = spec.get("renewTime")
    if spec.get("holderIdentity") != holder or renewed is None:
        return False
    return timestamp(renewed) >= since


def _pod_ready(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's Ready condition if it is True."""
    for c in pod.get("status", {}).get("conditions", []):
        if c.get("type") == "Ready" and c.get("status") == "True":
            return dict(c)
    return None


def ready_pods(pods: Iterable[Mapping[str, Any]]) -> set[str]:
    """UIDs of the pods that are Ready and not being deleted."""
    return {
        p["metadata"]["uid"]
        for p in pods
        if not p["metadata"].get("deletionTimestamp") and _pod_ready(p) is not None
    }


def probe_period(pod: Mapping[str, Any]) -> float | None:
    """The longest period of the pod's readiness and startup probes; None without any."""
    periods = [
        float(probe.get("periodSeconds", 10))
        for c in pod.get("spec", {}).get("containers", [])
        for probe in (c.get("readinessProbe"), c.get("startupProbe"))
        if probe
    ]
    return max(periods) if periods else None


# How long after the kubelet's start a probed pod may stay Ready without the flap below before
# it counts as back anyway (on top of its probe period): a restart takes ~6 s to admit pods.
PROBE_FLAP_WAIT = 15.0


def pods_not_back(
    before: Collection[str],
    pods: Iterable[Mapping[str, Any]],
    admitted: Collection[str],
    since: float,
    now: float,
) -> list[str]:
    """The pods (namespace/name) that were Ready before a kubelet restart (`before`, UIDs) and
    are not yet back under the new kubelet, started at `since`; `admitted` are the UIDs the new
    kubelet lists as its pods, `now` the current time.

    A pod is back when the new kubelet has admitted it and it is Ready. A 1.20 kubelet starts
    every readiness (and startup) probe as failed, so a probed pod first turns not Ready, for
    about one probe period, a second or two after the restart seems complete: such a pod is
    back only once Ready has changed again since `since` (or it stayed Ready so long that the
    flap will not come). Pods deleted meanwhile, or being deleted, do not count."""
    waiting = []
    for pod in pods:
        meta = pod["metadata"]
        if meta["uid"] not in before or meta.get("deletionTimestamp"):
            continue
        ready = _pod_ready(pod)
        back = meta["uid"] in admitted and ready is not None
        period = probe_period(pod)
        if back and ready is not None and period is not None:
            changed = ready.get("lastTransitionTime")
            flapped = changed is not None and timestamp(changed) >= int(since)
            back = flapped or now - since >= period + PROBE_FLAP_WAIT
        if not back:
            waiting.append(f"{meta['namespace']}/{meta['name']}")
    return waiting


def summary(name: str, down: float, ready: float) -> str:
    """The one line `devcluster restart` prints."""
    return f"devcluster: restarted {name} (down {down:.1f} s, ready after {ready:.1f} s)"
