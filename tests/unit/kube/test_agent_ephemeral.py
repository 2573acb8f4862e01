"""The ephemeral agent's manifests and choices, both API shapes (no cluster: the 1.22+ shape
is checked against recorded answers of a 1.30 API server)."""

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.kube.pods import fixture_pod
from tether.config.models import AgentConfig
from tether.kube.agent_ephemeral import (
    EphemeralSupport,
    add_ephemeral_container,
    container_name,
    ephemeral_container,
    ephemeral_patch,
    ephemeral_secret_manifest,
    joinable,
    server_minor,
    support_for,
)
from tether.kube.agent_manifest import SECRET_KEY
from tether.kube.errors import AdmissionRefusedError, Operation, error_for_status
from tether.kube.targets import ResolvedTarget, TargetKind
from tether.protocol.launch import SECRET_DIGEST_ENV, SECRET_ENV, parse_agent_args

FIXTURES = Path(__file__).with_name("fixtures")
TARGET = ResolvedTarget(
    kind=TargetKind.DEPLOYMENT,
    name="api",
    namespace="staging",
    pod_name="api-7d9f8c6b5-k2m4p",
    pod_uid="5f0c2a9e-8b1d-4c3e-9a7f-1e2d3c4b5a69",
    node_name="worker-1",
    container_name="api",
    container_id="containerd://111aaa",
    pod_ip="10.8.1.23",
)
SECRET = "ab" * 32
IMAGE = "ghcr.io/tether-dev/tether-agent:0.1.0"


@pytest.mark.parametrize(
    ("version", "shape", "capabilities"),
    [
        ("v1.20.2", "EphemeralContainers", False),  # the devcluster
        ("v1.21.14", "EphemeralContainers", True),  # securityContext allowed from 1.21
        ("v1.22.0", "Pod", True),
        ("v1.30.2-gke.1200", "Pod", True),
        ("v1.35.0", "Pod", True),
        ("garbage", "Pod", True),  # unreadable: taken for a modern one
    ],
)
def test_the_api_shape_follows_the_server_version(
    version: str, shape: str, capabilities: bool
) -> None:
    assert support_for(version) == EphemeralSupport(shape, capabilities)  # type: ignore[arg-type]


def test_server_minor() -> None:
    assert server_minor("v1.30.2-eks-1") == (1, 30)
    assert server_minor("v1.27+") == (1, 27)
    assert server_minor("x") is None


def test_the_container_runs_the_agent_in_the_targets_process_namespace() -> None:
    agent = AgentConfig(image=IMAGE, idle_timeout=30)
    c = ephemeral_container(name="tether-agent-1", agent=agent, target=TARGET, secret=SECRET)
    assert c["name"] == "tether-agent-1" and c["image"] == IMAGE
    assert c["targetContainerName"] == "api"
    args = parse_agent_args(c["args"])
    assert args.in_pod and args.port == 0 and args.idle_timeout == 30
    assert args.container_id is None and args.pod_uid is None
    # Only the digest is in the spec, which anyone who may get pods reads.
    (env,) = c["env"]
    assert env == {
        "name": SECRET_DIGEST_ENV,
        "value": hashlib.sha256(bytes.fromhex(SECRET)).hexdigest(),
    }
    assert SECRET not in json.dumps(c) and env["name"] != SECRET_ENV
    # Ephemeral containers may have no ports, resources or probes; no privilege unasked.
    assert not {"ports", "resources", "readinessProbe", "securityContext"} & c.keys()


def test_capabilities_only_when_asked() -> None:
    agent = AgentConfig(image=IMAGE, image_pull_policy="Never")
    c = ephemeral_container(
        name="n", agent=agent, target=TARGET, secret=SECRET, capabilities=("NET_ADMIN",)
    )
    assert c["securityContext"] == {"capabilities": {"add": ["NET_ADMIN"]}}
    assert c["imagePullPolicy"] == "Never"


def test_each_shape_has_its_patch() -> None:
    c = {"name": "tether-agent-1"}
    assert ephemeral_patch(c, "EphemeralContainers") == {"ephemeralContainers": [c]}
    assert ephemeral_patch(c, "Pod") == {"spec": {"ephemeralContainers": [c]}}


def test_names_are_unique_per_session() -> None:
    assert container_name("0a1b2c3d") == "tether-agent-0a1b2c3d"


def test_the_secret_goes_with_the_pod() -> None:
    secret = ephemeral_secret_manifest("tether-agent-1", TARGET, "s1", SECRET)
    meta = secret["metadata"]
    assert meta["namespace"] == "staging" and meta["name"] == "tether-agent-1"
    (owner,) = meta["ownerReferences"]
    assert owner["kind"] == "Pod" and owner["uid"] == TARGET.pod_uid
    assert owner["name"] == TARGET.pod_name
    assert set(secret["data"]) == {SECRET_KEY}


def test_a_recorded_pod_with_ephemeral_containers() -> None:
    pod = fixture_pod("pod-ephemeral-agents-1.30.json")
    assert pod.containers == ["api", "metrics"]  # ephemeral ones are never targets
    assert pod.ephemeral["tether-agent-4e5f6a7b"] == "api"
    assert pod.ephemeral["debugger-x7k2q"] == "api"
    assert pod.statuses["tether-agent-0a1b2c3d"].state == "terminated"
    assert pod.images["tether-agent-8c9d0e1f"].endswith(":0.0.9")
    assert pod.ready()


def test_only_a_running_agent_of_this_image_for_this_container_is_joined() -> None:
    pod = fixture_pod("pod-ephemeral-agents-1.30.json")
    # Not the terminated one, not another version's, not the metrics container's, not a
    # debugger someone added.
    assert joinable(pod, "api", IMAGE) == ["tether-agent-4e5f6a7b"]
    assert joinable(pod, "metrics", IMAGE) == ["tether-agent-2a3b4c5d"]
    assert joinable(pod, "api", "other:1") == []


def test_a_refusal_of_the_ephemeral_container_is_admissions() -> None:
    body = (FIXTURES / "ephemeral-psa-refused-1.30.json").read_text()
    op = Operation("patch", "pods/ephemeralcontainers", "staging", TARGET.pod_name)
    error = error_for_status(403, body, op)
    assert isinstance(error, AdmissionRefusedError)
    assert "NET_ADMIN" in error.reason and "baseline" in error.reason


class _Response:
    released = False

    def release(self) -> None:
        self.released = True


class _Core:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.response = _Response()

    async def patch_namespaced_pod_ephemeralcontainers(
        self, name: str, namespace: str, body: Any, **kwargs: Any
    ) -> _Response:
        self.calls.append((name, namespace, body, kwargs))
        return self.response


class _Kube:
    server = "https://k"

    def __init__(self) -> None:
        self.core = _Core()

    async def call(self, request: Any, op: Operation) -> Any:
        return await request


@pytest.mark.parametrize("shape", ["EphemeralContainers", "Pod"])
async def test_adding_is_one_strategic_merge_patch_read_raw(shape: str) -> None:
    kube = _Kube()
    c = {"name": "tether-agent-1"}
    await add_ephemeral_container(kube, TARGET, c, shape, dry_run=True)  # type: ignore[arg-type]
    ((name, namespace, body, kwargs),) = kube.core.calls
    assert (name, namespace) == (TARGET.pod_name, "staging")
    assert body == ephemeral_patch(c, shape)  # type: ignore[arg-type]
    assert kwargs["_content_type"] == "application/strategic-merge-patch+json"
    # The 1.20 answer is a kind the library cannot read: it is not parsed, only released.
    assert kwargs["_preload_content"] is False and kube.core.response.released
    assert kwargs["dry_run"] == "All"
