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


def test_an_ephemeral_agent_reports_its_own_container_and_no_scheduling() -> None:
    pod = _pod(phase="Running")
    name = "tether-agent-1a2b3c4d"
    waiting = ContainerState(name, False, None, "waiting", "ErrImageNeverPull", "no", None)
    running = ContainerState(name, False, None, "running", "", "", None)
    done = ContainerState(name, False, None, "terminated", "Completed", "", 0)

    def with_state(state: ContainerState) -> PodView:
        return PodView(**{**pod.__dict__, "statuses": {name: state}, "images": {name: "img:2"}})

    assert assess(pod, name) == Assessment([])  # the target runs; the agent has no status yet
    assert assess(with_state(running), name) == Assessment(["container started"], running=True)
    assert assess(with_state(done), name) == Assessment([], exited=True)
    refused = assess(with_state(waiting), name)
    assert refused.image_error is not None and '"img:2"' in refused.image_error


@pytest.mark.parametrize(
    ("field_path", "container", "about"),
    [
        (None, "agent", True),  # a Job's pod: its own events are the agent's
        ("spec.containers{agent}", "agent", True),
        (None, "tether-agent-1", False),  # the target pod's own events
        ("spec.containers{web}", "tether-agent-1", False),
        ("spec.ephemeralContainers{tether-agent-1}", "tether-agent-1", True),
        ("spec.ephemeralContainers{tether-agent-2}", "tether-agent-1", False),
    ],
)
def test_which_events_are_the_agents(field_path: str | None, container: str, about: bool) -> None:
    from tether.kube.agent_ready import _about

    assert _about(field_path, container) is about


PSA_FAILED_CREATE = (
    'Error creating: pods "tether-agent-1-x" is forbidden: violates PodSecurity'
    ' "baseline:latest": host namespaces (hostPID=true)'
)


@pytest.mark.parametrize(
    ("message", "refused"),
    [
        (PSA_FAILED_CREATE, True),
        ('Error creating: pods "a-" is forbidden: PodSecurityPolicy: unable to admit pod', True),
        ("Error creating: pods is forbidden: exceeded quota: q, requested: pods=1", True),
        ("Error creating: Timeout: request did not complete within 60s", False),
    ],
)
async def test_a_failed_create_by_admission_is_a_refusal(message: str, refused: bool) -> None:
    # agent.mode = auto falls back on an ephemeral agent for a refusal, and for nothing else.
    from types import SimpleNamespace
    from typing import Any

    from tether.kube.agent_manifest import AgentHandle
    from tether.kube.agent_ready import _check_job
    from tether.kube.errors import AgentFailedError, AgentRefusedError

    async def answer(value: object) -> object:
        return value

    job = SimpleNamespace(status=SimpleNamespace(conditions=[]))
    event = SimpleNamespace(reason="FailedCreate", message=message)
    kube: Any = SimpleNamespace(
        batch=SimpleNamespace(read_namespaced_job=lambda name, ns: answer(job)),
        core=SimpleNamespace(
            list_namespaced_event=lambda ns, field_selector: answer(SimpleNamespace(items=[event]))
        ),
        call=lambda request, op: request,
    )
    with pytest.raises(AgentFailedError) as caught:
        await _check_job(kube, AgentHandle("ns", "tether-agent-1", "s", "uid"))
    assert isinstance(caught.value, AgentRefusedError) is refused
    assert message in str(caught.value)
