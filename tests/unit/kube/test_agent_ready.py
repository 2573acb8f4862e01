"""What a state of the agent pod means while a session waits for it (no cluster)."""

from datetime import UTC, datetime

import pytest

from tether.kube.agent_ready import Assessment, assess, failed_create_hint
from tether.kube.objects import ContainerState, PodView


def _pod(
    phase: str = "Pending",
    node: str | None = "n1",
    state: str | None = None,
    reason: str = "",
    conditions: dict[str, tuple[str, str, str]] | None = None,
) -> PodView:
    statuses = {}
    if state is not None:
        statuses["agent"] = ContainerState("agent", False, None, state, reason, "msg", None)
    return PodView(
        name="tether-agent-x-abcde",
        namespace="ns",
        uid="u",
        phase=phase,
        node_name=node,
        pod_ip=None,
        labels={},
        containers=["agent"],
        sidecars=[],
        init_containers=[],
        annotations={},
        host_network=False,
        images={"agent": "img:1"},
        statuses=statuses,
        created=datetime(2026, 1, 1, tzinfo=UTC),
        deleting=False,
        reason="",
        message="",
        conditions=conditions or {},
    )


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        (_pod(node=None), Assessment([])),
        (
            _pod(node=None, conditions={"PodScheduled": ("False", "Unschedulable", "no room")}),
            Assessment(["not scheduled yet: no room"]),
        ),
        (_pod(), Assessment(["scheduled on node n1"])),
        (
            _pod(state="waiting", reason="ContainerCreating"),
            Assessment(["scheduled on node n1"]),
        ),
        (
            _pod(state="waiting", reason="CreateContainerConfigError"),
            Assessment(["scheduled on node n1", "waiting: CreateContainerConfigError"]),
        ),
        (
            _pod(phase="Running", state="running"),
            Assessment(["scheduled on node n1", "container started"], running=True),
        ),
        (
            _pod(phase="Running", state="terminated"),
            Assessment(["scheduled on node n1"], exited=True),
        ),
        (_pod(phase="Failed"), Assessment(["scheduled on node n1"], exited=True)),
        (_pod(phase="Succeeded"), Assessment(["scheduled on node n1"], exited=True)),
    ],
)
def test_assess(pod: PodView, expected: Assessment) -> None:
    assert assess(pod) == expected


@pytest.mark.parametrize("reason", ["ErrImageNeverPull", "ImagePullBackOff", "InvalidImageName"])
def test_an_image_the_node_cannot_get_names_the_image_and_the_fix(reason: str) -> None:
    verdict = assess(_pod(state="waiting", reason=reason))
    assert verdict.image_error is not None
    assert 'agent image "img:1" is not available on node "n1"' in verdict.image_error
    assert reason in verdict.image_error and "agent.image" in verdict.image_error
    assert not verdict.running and not verdict.exited


@pytest.mark.parametrize(
    ("message", "needle"),
    [
        (
            'pods "tether-agent-x-abc" is forbidden: violates PodSecurity "baseline:latest":'
            " host namespaces (hostPID=true)",
            "set agent.namespace",
        ),
        (
            'pods "tether-agent-x-abc" is forbidden: unable to validate against any pod security'
            " policy: []",
            "set agent.namespace",
        ),
        ('pods "x" is forbidden: exceeded quota: compute, requested: pods=1', "ResourceQuota"),
        ("something else", ""),
    ],
)
def test_a_refused_agent_pod_says_what_to_do(message: str, needle: str) -> None:
    hint = failed_create_hint(message)
    assert (needle in hint) if needle else hint == ""
