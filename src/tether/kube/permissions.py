"""Every permission a session uses, in one place: `tether doctor` checks each with a
SelfSubjectAccessReview, and examples/rbac/tether-user.yaml (the README's minimal Role) must
grant exactly these (tests/unit/kube/test_permissions.py)."""

from dataclasses import dataclass
from typing import Literal

Where = Literal["target", "agent", "both"]


@dataclass(frozen=True)
class Permission:
    """One verb on one resource, in the namespace of the target (and of the agent)."""

    group: str
    resource: str
    verb: str
    why: str
    subresource: str = ""
    where: Where = "both"
    """The namespace it is needed in: the target's, the agent's (agent.namespace, by default
    the target's), or both."""

    @property
    def name(self) -> str:
        """As RBAC rules and kubectl spell it: `create pods/portforward`, `get jobs.batch`."""
        what = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        return f"{self.verb} {what}{'.' + self.group if self.group else ''}"


def _each(
    group: str, resource: str, verbs: str, why: str, sub: str = "", where: Where = "agent"
) -> list[Permission]:
    return [Permission(group, resource, verb, why, sub, where) for verb in verbs.split()]


SESSION = (
    *_each("", "pods", "get list watch", "the target and the agent's pod", where="both"),
    *_each("", "pods", "get", "the agent's ready line", sub="log"),
    # A WebSocket port-forward is a GET; Kubernetes 1.35+ also checks create for it.
    *_each("", "pods", "get create", "the tunnel to the agent", sub="portforward"),
    *_each("batch", "jobs", "create get list delete", "the agent Job"),
    *_each("", "secrets", "create get patch delete", "the session secret's Secret"),
    *_each("", "events", "list", "why an agent pod cannot be created"),
    *_each("apps", "deployments", "get list", "deployment targets", where="target"),
    *_each("apps", "statefulsets", "get list", "statefulset targets", where="target"),
)


# An ephemeral agent (agent.mode = ephemeral) lives in the target's pod: everything is in
# the target's namespace, and it adds itself with the one verb no default role grants.
EPHEMERAL = (
    *_each("", "pods", "get list watch", "the target and its agent", where="target"),
    *_each("", "pods", "get", "the agent's ready line", sub="log", where="target"),
    *_each("", "pods", "get create", "the tunnel to the agent", sub="portforward", where="target"),
    *_each("", "pods", "patch", "adding the agent", sub="ephemeralcontainers", where="target"),
    *_each("", "secrets", "create get delete", "the session secret's Secret", where="target"),
    *_each("apps", "deployments", "get list", "deployment targets", where="target"),
    *_each("apps", "statefulsets", "get list", "statefulset targets", where="target"),
)


def needed_in(
    target_namespace: str, agent_namespace: str, mode: str = "job"
) -> dict[str, list[Permission]]:
    """Each namespace a session touches, with the permissions it needs there: those of the
    Job agent (agent.mode job, and auto's first choice) or of an ephemeral one."""
    needs: dict[str, list[Permission]] = {}
    for p in EPHEMERAL if mode == "ephemeral" else SESSION:
        places = {
            "target": [target_namespace],
            "agent": [agent_namespace],
            "both": [target_namespace, agent_namespace],
        }[p.where]
        for ns in dict.fromkeys(places):
            needs.setdefault(ns, []).append(p)
    return needs


def ephemeral_extra(target_namespace: str, agent_namespace: str) -> list[Permission]:
    """What an ephemeral agent needs in the target's namespace beyond the Job agent's
    permissions there: what agent.mode = auto needs to fall back on one."""
    have = {p.name for p in needed_in(target_namespace, agent_namespace).get(target_namespace, [])}
    return [p for p in EPHEMERAL if p.name not in have]
