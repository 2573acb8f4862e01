"""Which agent a session starts for each agent.mode (pure: a table)."""

import pytest

from tether.kube.agent_ephemeral import support_for
from tether.local.policy.agent_mode import AgentPlan, plan_agent

V120, V130 = support_for("v1.20.2"), support_for("v1.30.1")


@pytest.mark.parametrize(
    ("mode", "kwargs", "plan"),
    [
        # A targetless agent has no pod to join, whatever the mode.
        ("ephemeral", {"targetless": True, "incoming": False}, AgentPlan(False, False)),
        ("auto", {"targetless": True, "incoming": True}, AgentPlan(False, False)),
        ("job", {"targetless": False, "incoming": True}, AgentPlan(False, False)),
        # auto: the Job, with the ephemeral container to fall back on...
        ("auto", {"targetless": False, "incoming": False}, AgentPlan(False, True)),
        (
            "auto",
            {"targetless": False, "incoming": True, "support": V130},
            AgentPlan(False, True, ("NET_ADMIN",)),
        ),
        # ...unless it could not serve the session.
        (
            "ephemeral",
            {"targetless": False, "incoming": False, "support": V120},
            AgentPlan(True, False),
        ),
        (
            "ephemeral",
            {"targetless": False, "incoming": True, "support": V130},
            AgentPlan(True, False, ("NET_ADMIN",)),
        ),
    ],
)
def test_plans(mode: str, kwargs: dict[str, object], plan: AgentPlan) -> None:
    assert plan_agent(mode, **kwargs) == plan  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"incoming": True, "support": V120, "server": "v1.20.2"}, ["NET_ADMIN", "1.21", "job"]),
        ({"incoming": True, "host_network": True}, ["hostNetwork"]),
    ],
)
def test_what_an_ephemeral_agent_cannot_do_is_said_up_front(
    kwargs: dict[str, object], words: list[str]
) -> None:
    for mode in ("ephemeral", "auto"):
        plan = plan_agent(mode, targetless=False, **kwargs)  # type: ignore[arg-type]
        assert plan.refusal is not None and all(w in plan.refusal for w in words), plan
        assert not plan.fallback
    assert plan_agent("ephemeral", targetless=False, **kwargs).ephemeral  # type: ignore[arg-type]


def test_a_session_without_mirror_or_steal_never_asks_for_capabilities() -> None:
    plan = plan_agent("ephemeral", targetless=False, incoming=False, support=V130)
    assert plan.capabilities == () and plan.refusal is None
