"""The agent Job manifest: targeted and targetless (no cluster)."""

import base64
import json
from types import SimpleNamespace
from typing import Any

import pytest

from tether.config import AgentConfig
from tether.kube.agent_manifest import (
    agent_job_manifest,
    agent_secret_manifest,
    job_name,
    job_secret_name,
    new_secret,
    new_session_id,
    owner_reference,
    secret_value,
)
from tether.kube.targets import ResolvedTarget, TargetKind

TARGET = ResolvedTarget(
    kind=TargetKind.DEPLOYMENT,
    name="frontend",
    namespace="shop",
    pod_name="frontend-76c4989cc7-9sldf",
    pod_uid="uid-1",
    node_name="node-a",
    container_name="frontend",
    container_id="containerd://abc123",
    pod_ip="198.18.0.34",
)


def _pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = manifest["spec"]["template"]["spec"]
    return spec


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = _pod_spec(manifest)["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def test_targeted_manifest() -> None:
    m = agent_job_manifest(session_id="a1b2c3d4", agent=AgentConfig(), target=TARGET)
    assert m["apiVersion"] == "batch/v1"
    assert m["kind"] == "Job"
    assert m["metadata"]["name"] == "tether-agent-a1b2c3d4"
    assert m["metadata"]["namespace"] == "shop"
    labels = {
        "app.kubernetes.io/name": "tether-agent",
        "tether.dev/session": "a1b2c3d4",
        "tether.dev/target-pod": "frontend-76c4989cc7-9sldf",
    }
    assert m["metadata"]["labels"] == labels
    assert m["spec"]["template"]["metadata"]["labels"] == labels
    assert m["spec"]["backoffLimit"] == 0
    assert m["spec"]["ttlSecondsAfterFinished"] == 60
    # A hard cap besides the idle exit: a stuck agent cannot outlive it.
    assert m["spec"]["activeDeadlineSeconds"] == 86400
    pod = _pod_spec(m)
    assert pod["restartPolicy"] == "Never"
    assert pod["nodeName"] == "node-a"
    assert pod["hostPID"] is True
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert pod["terminationGracePeriodSeconds"] == 5
    assert pod["automountServiceAccountToken"] is False
    c = _container(m)
    assert c["name"] == "agent"
    assert c["image"] == "ghcr.io/tether-dev/tether-agent:0.1.0"
    assert "imagePullPolicy" not in c
    assert c["command"] == ["python3", "-m", "tether.agent"]
    assert c["args"] == [
        "--port",
        "47047",
        "--idle-timeout",
        "30",
        "--container-id",
        "containerd://abc123",
    ]
    assert c["env"] == [
        {
            "name": "TETHER_SECRET",
            "valueFrom": {"secretKeyRef": {"name": "tether-agent-a1b2c3d4", "key": "secret"}},
        }
    ]
    assert c["securityContext"] == {
        "capabilities": {"add": ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN"]}
    }
    assert c["resources"] == {"requests": {"cpu": "10m", "memory": "32Mi"}}


def test_configured_agent_settings() -> None:
    agent = AgentConfig(
        image="local/agent:dev",
        image_pull_policy="Never",
        namespace="tether-system",
        port=5000,
        idle_timeout=2.5,
        ttl_seconds_after_finished=5,
        max_lifetime=3600,
        privileged=True,
        labels={"team": "a", "tether.dev/session": "overridden?"},
        annotations={"note": "x"},
    )
    m = agent_job_manifest(session_id="ff", agent=agent, target=TARGET, command=["sleep", "1"])
    assert m["metadata"]["namespace"] == "tether-system"
    assert m["metadata"]["labels"]["team"] == "a"
    assert m["metadata"]["labels"]["tether.dev/session"] == "ff", "tether's labels win"
    assert m["metadata"]["annotations"] == {"note": "x"}
    assert m["spec"]["template"]["metadata"]["annotations"] == {"note": "x"}
    assert m["spec"]["ttlSecondsAfterFinished"] == 5
    assert m["spec"]["activeDeadlineSeconds"] == 3600
    c = _container(m)
    assert c["image"] == "local/agent:dev"
    assert c["imagePullPolicy"] == "Never"
    assert c["command"] == ["sleep", "1"]
    assert c["args"][:4] == ["--port", "5000", "--idle-timeout", "2.5"]
    assert c["securityContext"]["privileged"] is True


def test_targetless_manifest_is_plain() -> None:
    m = agent_job_manifest(
        session_id="abcd",
        agent=AgentConfig(privileged=True),
        target=None,
        namespace="dev",
    )
    assert m["metadata"]["namespace"] == "dev"
    assert "tether.dev/target-pod" not in m["metadata"]["labels"]
    pod = _pod_spec(m)
    assert "hostPID" not in pod
    assert "nodeName" not in pod
    assert pod["automountServiceAccountToken"] is False
    assert pod["restartPolicy"] == "Never"
    c = _container(m)
    assert "securityContext" not in c
    assert "--container-id" not in c["args"]
    assert c["args"] == ["--port", "47047", "--idle-timeout", "30"]


def test_targetless_needs_a_namespace() -> None:
    with pytest.raises(ValueError, match="namespace"):
        agent_job_manifest(session_id="a", agent=AgentConfig(), target=None)


def test_long_pod_name_label_is_truncated_to_a_valid_value() -> None:
    long_target = ResolvedTarget(**{**TARGET.__dict__, "pod_name": "a" * 61 + "-b-c"})
    m = agent_job_manifest(session_id="a", agent=AgentConfig(), target=long_target)
    value = m["metadata"]["labels"]["tether.dev/target-pod"]
    assert len(value) <= 63
    assert value[-1].isalnum()


def test_ids_are_hex() -> None:
    sid, secret = new_session_id(), new_secret()
    int(sid, 16)
    int(secret, 16)
    assert len(sid) == 8
    assert len(secret) >= 32
    assert new_session_id() != sid
    assert job_name(sid) == f"tether-agent-{sid}"


def test_shared_manifest_is_named_after_the_target_pod() -> None:
    from dataclasses import replace

    from tether import __version__
    from tether.kube.agent_manifest import shared_job_name, target_key

    a = agent_job_manifest(session_id="s1", agent=AgentConfig(), target=TARGET, shared=True)
    b = agent_job_manifest(session_id="s2", agent=AgentConfig(), target=TARGET, shared=True)
    # Every session on the target asks for the same Job: the API server lets one create it.
    assert a["metadata"]["name"] == b["metadata"]["name"] == shared_job_name(TARGET)
    assert a["metadata"]["labels"]["tether.dev/target"] == target_key(TARGET)
    assert a["metadata"]["labels"]["tether.dev/version"] == __version__
    assert a["metadata"]["labels"]["tether.dev/session"] == "s1"
    # Another pod (same name, new UID: a restart) gets its own agent; another container of
    # the same pod shares it (one network namespace, one owner of its redirect rules).
    assert shared_job_name(replace(TARGET, pod_uid="uid-2")) != shared_job_name(TARGET)
    assert shared_job_name(replace(TARGET, container_name="sidecar")) == shared_job_name(TARGET)
    assert len(shared_job_name(TARGET)) <= 63


@pytest.mark.parametrize("shared", [False, True])
def test_the_secret_is_in_a_secret_never_in_the_job(shared: bool) -> None:
    secret = new_secret()
    job = agent_job_manifest(session_id="a1", agent=AgentConfig(), target=TARGET, shared=shared)
    # Anyone who may `get jobs` (or pods) sees the Job and its pod template: no value there.
    assert secret not in json.dumps(job)
    assert base64.b64encode(secret.encode()).decode() not in json.dumps(job)
    made = agent_secret_manifest(job, secret)
    assert made["kind"] == "Secret" and made["type"] == "Opaque"
    assert made["metadata"]["name"] == job["metadata"]["name"]
    assert made["metadata"]["namespace"] == job["metadata"]["namespace"]
    assert made["metadata"]["labels"] == job["metadata"]["labels"]
    assert base64.b64decode(made["data"]["secret"]).decode() == secret
    ref = _container(job)["env"][0]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": made["metadata"]["name"], "key": "secret"}


def test_owner_reference_lets_the_job_take_its_secret_along() -> None:
    assert owner_reference("tether-agent-x", "uid-1") == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": "tether-agent-x",
        "uid": "uid-1",
        "blockOwnerDeletion": False,
    }


def _api_job(env: list[SimpleNamespace]) -> SimpleNamespace:
    container = SimpleNamespace(env=env)
    return SimpleNamespace(
        spec=SimpleNamespace(template=SimpleNamespace(spec=SimpleNamespace(containers=[container])))
    )


def _ref(name: str) -> SimpleNamespace:
    return SimpleNamespace(secret_key_ref=SimpleNamespace(name=name, key="secret"))


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ([SimpleNamespace(name="TETHER_SECRET", value=None, value_from=_ref("s1"))], "s1"),
        ([SimpleNamespace(name="OTHER", value=None, value_from=_ref("s2"))], None),
        # An agent of an older tether with the value inline is not joined through a Secret.
        ([SimpleNamespace(name="TETHER_SECRET", value="abc", value_from=None)], None),
        ([], None),
    ],
)
def test_job_secret_name(env: list[SimpleNamespace], name: str | None) -> None:
    assert job_secret_name(_api_job(env)) == name


@pytest.mark.parametrize(
    ("data", "value"),
    [
        ({"secret": base64.b64encode(b"abc").decode()}, "abc"),
        ({"secret": "!!notbase64"}, None),
        ({}, None),
        (None, None),
    ],
)
def test_secret_value(data: dict[str, str] | None, value: str | None) -> None:
    assert secret_value(SimpleNamespace(data=data)) == value


@pytest.mark.parametrize(
    ("headers", "texts"),
    [
        (
            ['299 - "would violate PodSecurity \\"baseline:latest\\": host namespaces"'],
            ['would violate PodSecurity "baseline:latest": host namespaces'],
        ),
        (['299 - "a"', '299 - "b"'], ["a", "b"]),
        (["not the RFC form"], ["not the RFC form"]),
        ([], []),
    ],
)
def test_admission_warnings(headers: list[str], texts: list[str]) -> None:
    from tether.kube.agent_lifecycle import admission_warnings

    assert admission_warnings(headers) == texts


def test_a_pod_whose_container_does_not_run_yet_gets_an_agent_for_its_sandbox() -> None:
    pending = ResolvedTarget(**{**TARGET.__dict__, "container_id": ""})
    job = agent_job_manifest(session_id="s", agent=AgentConfig(), target=pending, shared=True)
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--container-id" not in args
    assert args[args.index("--pod-uid") + 1] == TARGET.pod_uid
    # The same agent as the running pod's: sessions share it.
    running = agent_job_manifest(session_id="t", agent=AgentConfig(), target=TARGET, shared=True)
    assert job["metadata"]["name"] == running["metadata"]["name"]
