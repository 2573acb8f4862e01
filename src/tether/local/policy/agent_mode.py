"""Which agent a session starts: a Job, an ephemeral container, or the Job with the
ephemeral container to fall back on (`agent.mode`). Pure: table-tested."""

from dataclasses import dataclass
from typing import Literal

from tether.kube.agent_ephemeral import INCOMING_CAPABILITIES, EphemeralSupport

Mode = Literal["auto", "job", "ephemeral"]

EPHEMERAL_COST = (
    "env, files, outgoing and DNS work; mirror and steal only where the cluster grants it"
    " NET_ADMIN; the container stays in the pod's spec (terminated) until the pod goes"
)


@dataclass(frozen=True)
class AgentPlan:
    """How to start a session's agent."""

    ephemeral: bool
    """Start with an ephemeral container (else with the Job)."""
    fallback: bool
    """If admission refuses the Job's pod, go on with an ephemeral container."""
    capabilities: tuple[str, ...] = ()
    """What the ephemeral container asks for."""
    refusal: str | None = None
    """Why an ephemeral agent cannot do what the session needs (the plan then has no
    ephemeral part: with `ephemeral`, the session must not start)."""


def ephemeral_refusal(
    incoming: bool, host_network: bool, support: EphemeralSupport | None, server: str
) -> str | None:
    """Why an ephemeral agent cannot serve this session, or None. `support` is None when
    it is not known yet (the version is read only when an ephemeral agent is considered)."""
    if not incoming:
        return None
    if host_network:
        return (
            "the target uses the node's network (hostNetwork): mirror and steal would"
            " redirect the node's own ports, which tether refuses"
        )
    if support is not None and not support.capabilities:
        return (
            f"mirror and steal need NET_ADMIN, which an ephemeral container cannot have on"
            f" Kubernetes before 1.21 ({server}): use agent.mode = job, with agent.namespace"
            " set to a namespace that allows privileged pods if the target's does not"
        )
    return None


def plan_agent(
    mode: Mode,
    *,
    targetless: bool,
    incoming: bool,
    host_network: bool = False,
    support: EphemeralSupport | None = None,
    server: str = "this cluster",
) -> AgentPlan:
    """The plan for `agent.mode` given what the session needs (`incoming`: mirror or
    steal) and, once known, what the cluster allows an ephemeral container."""
    if targetless or mode == "job":
        # A targetless agent has no pod to join: it is always a Job of its own.
        return AgentPlan(ephemeral=False, fallback=False)
    refusal = ephemeral_refusal(incoming, host_network, support, server)
    capabilities = INCOMING_CAPABILITIES if incoming else ()
    if mode == "ephemeral":
        return AgentPlan(True, False, capabilities, refusal)
    return AgentPlan(False, refusal is None, capabilities, refusal)
