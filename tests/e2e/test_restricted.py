"""A namespace that refuses the agent's pod, on the devcluster.

Pod Security (1.23+) and PodSecurityPolicy refuse the privileged agent pod at admission; the
devcluster runs neither. A ResourceQuota of zero pods refuses it the same way (its admission
plugin is on in every cluster): the Job is created, its pod is not, and the only trace is a
FailedCreate event. That is the path tether must see at once and say what to do about."""

import json
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.cli import AGENT, agent_objects, tether
from tests.e2e.kube import kubectl


@pytest.fixture
def refusing() -> Iterator[str]:
    """A namespace whose ResourceQuota admits no pod."""
    name = f"tether-e2e-refusing-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-pods", "namespace": name},
        "spec": {"hard": {"pods": "0"}},
    }
    kubectl("apply", "-f", "-", input=json.dumps(quota))
    try:
        yield name
    finally:
        kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


TARGET = ["--target", "deployment/frontend", "-n", "shop", *AGENT]


def test_doctor_names_the_refusal_and_the_fix(refusing: str) -> None:
    proc = tether("doctor", *TARGET, "--agent-namespace", refusing, "-o", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    (admission,) = [c for c in found["checks"] if c["name"] == "admission"]
    assert admission["status"] == "failing"
    assert "exceeded quota" in admission["detail"]
    assert "agent.namespace" in admission["fix"]
    assert agent_objects(refusing) == (0, 0)  # a dry-run creates nothing
    assert tether("doctor", *TARGET).returncode == 0  # in shop it passes


def test_a_refused_agent_pod_stops_the_session_at_once_and_leaves_nothing(
    refusing: str,
) -> None:
    proc = tether("env", *TARGET, "--agent-namespace", refusing, timeout=60)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tether: error:")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr
    assert "exceeded quota" in errors[0] and "ResourceQuota" in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert agent_objects(refusing) == (0, 0)
