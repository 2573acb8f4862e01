"""Namespaces that refuse the agent's pod, on the devcluster.

The devcluster runs the PodSecurityPolicy admission plugin (devcluster/policy.py): pods of a
namespace that no RoleBinding grants the privileged policy get only the baseline one, which
refuses the Job agent's hostPID and capabilities. That is what Pod Security `baseline` does on
1.23+ clusters: the Job is created, its pod is refused, and the only trace is a FailedCreate
event. An ephemeral container is not checked by PodSecurityPolicy (1.20), and needs no
privilege here anyway: the devcluster's 1.20 gives ephemeral containers no capabilities.

A ResourceQuota of zero pods refuses the agent's pod the same way, in a namespace whose policy
would admit it.
"""

import http.client
import json
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import AGENT, agent_objects, one_line_error, tether, wait_no_agent_objects
from tests.e2e.kube import (
    PYTHON_IMAGE,
    create_namespace,
    get,
    kubeconfig_for_role,
    kubectl,
    readme_role,
)
from tests.e2e.test_incoming import LocalApp, request, running

# How a PodSecurityPolicy refusal reads (its FailedCreate event says "pod security policy").
PSP = "PodSecurityPolicy"
# The target: a small HTTP service that says which pod answered.
APP = """
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = json.dumps({"service": "api", "pod": socket.gethostname()}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"""


def _api(namespace: str) -> list[dict[str, Any]]:
    labels = {"app": "api"}
    container = {
        "name": "api",
        "image": PYTHON_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["python3", "-u", "-c", APP],
        "env": [{"name": "API_MODE", "value": "restricted"}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
    }
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "api", "namespace": namespace},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"terminationGracePeriodSeconds": 1, "containers": [container]},
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "api", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    ]


@pytest.fixture(scope="module")
def restricted() -> Iterator[str]:
    """A namespace without the privileged policy, serving deployment/api."""
    name = f"tether-e2e-restricted-{secrets.token_hex(3)}"
    create_namespace(name, privileged=False)
    try:
        kubectl("apply", "-f", "-", input=json.dumps({"kind": "List", "apiVersion": "v1",
                                                      "items": _api(name)}))  # fmt: skip
        kubectl("-n", name, "rollout", "status", "deployment/api", "--timeout=120s", timeout=130)
        yield name
    finally:
        kubectl("delete", "namespace", name, "--ignore-not-found", "--wait=false")


def _target(namespace: str) -> list[str]:
    return ["-t", "deployment/api", "-n", namespace, *AGENT]


def _pod(namespace: str) -> dict[str, Any]:
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", "app=api", "-o", "json"))
    (pod,) = [p for p in pods["items"] if not p["metadata"].get("deletionTimestamp")]
    return dict(pod)


def _objects(namespace: str) -> tuple[list[str], int]:
    """What a doctor must not create: the namespace's objects, and the target pod's
    ephemeral containers."""
    out = kubectl("-n", namespace, "get", "pods,jobs,secrets,rolebindings", "-o", "name")
    ephemeral = len(_pod(namespace)["spec"].get("ephemeralContainers", []))
    return sorted(out.split()), ephemeral


def _in_the_targets_context(target: list[str], namespace: str, progress: str = "") -> str:
    """Run a local program in the target's context: its environment, its DNS, its files and
    outgoing connections from its network; return the pod's hostname it read."""
    script = (
        "import os, socket, urllib.request;"
        f"print(os.environ['API_MODE'], socket.gethostbyname('api.{namespace}'),"
        " open('/etc/hostname').read().strip(),"
        " urllib.request.urlopen('http://backend.shop/', timeout=10).status)"
    )
    proc = tether("exec", *target, "-v", "--", sys.executable, "-c", script)
    assert proc.returncode == 0, proc.stderr
    mode, address, hostname, status = proc.stdout.split()
    assert (mode, status) == ("restricted", "200")
    assert address == get("service", "api", namespace)["spec"]["clusterIP"]
    assert hostname == _pod(namespace)["metadata"]["name"]
    assert progress in proc.stderr
    return hostname


def _developer(namespace: str, path: Path) -> Path:
    """A kubeconfig for a developer of `namespace`: the README's Role, the ephemeral Role,
    and `create pods` for the doctor's dry-run. A service account of that namespace, so that
    PodSecurityPolicy judges the developer by it (the devcluster's admin may use every
    policy: its dry-run would be admitted wherever the controllers' pods are refused)."""
    ephemeral = {"apiGroups": [""], "resources": ["pods/ephemeralcontainers"], "verbs": ["patch"]}
    create = {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]}
    kubeconfig_for_role(namespace, [*readme_role(), ephemeral, create], path)
    return path


def test_doctor_names_the_refusal_and_what_stands_in(restricted: str, tmp_path: Path) -> None:
    kubeconfig = ["--kubeconfig", str(_developer(restricted, tmp_path / "dev.kubeconfig"))]
    before = _objects(restricted)

    job = tether("doctor", *_target(restricted), *kubeconfig, "--agent-mode", "job", "-o", "json")
    assert job.returncode == 1, job.stdout + job.stderr
    found = json.loads(job.stdout)
    assert found["session_would_start"] is False
    assert sum(found["counts"].values()) == len(found["checks"])
    for check in found["checks"]:
        assert set(check) == {"area", "name", "status", "detail", "fix"}, check
    (admission,) = [c for c in found["checks"] if c["name"] == "admission"]
    assert admission["status"] == "failing"
    assert PSP in admission["detail"] and "Host PID" in admission["detail"]
    assert "agent.namespace" in admission["fix"]

    # auto (the default): the ephemeral agent stands in, and doctor says what it costs.
    auto = tether("doctor", *_target(restricted), *kubeconfig)
    assert auto.returncode == 0, auto.stdout + auto.stderr
    assert "warn agent: admission: the agent pod is refused" in auto.stdout
    assert "uses an ephemeral container" in auto.stdout
    assert "no mirror or steal" in auto.stdout

    # With the agent in a namespace that allows it, the Job is admitted.
    other = tether("doctor", *_target(restricted), "--agent-namespace", "shop", "--agent-mode",
                   "job")  # fmt: skip
    assert other.returncode == 0, other.stdout
    assert _objects(restricted) == before  # nothing created, no ephemeral container added


def test_a_refused_job_stops_the_session_at_once_and_leaves_nothing(restricted: str) -> None:
    started = time.monotonic()
    proc = tether("env", *_target(restricted), "--agent-mode", "job", timeout=60)
    took = time.monotonic() - started
    error = one_line_error(proc, "agent.namespace")
    assert "pod security policy" in error or PSP in error
    assert took < 30, f"{took:.1f} s: the startup timeout, not the refusal"
    assert wait_no_agent_objects(restricted) == (0, 0)


def test_an_agent_in_an_allowed_namespace_serves_the_restricted_target(
    restricted: str, tmp_path: Path
) -> None:
    target = [*_target(restricted), "--agent-namespace", "shop", "--agent-mode", "job"]
    hostname = _in_the_targets_context(target, restricted)

    service = get("service", "api", restricted)["spec"]["clusterIP"]
    with (
        LocalApp("alice") as app,
        running("port-forward", *target, "-R", f"8080:{app.port}",
                "--http-header-filter", "^x-dev: alice$"),
    ):  # fmt: skip
        assert agent_objects("shop") == (1, 1) and agent_objects(restricted) == (0, 0)
        conn = http.client.HTTPConnection(service, 80, timeout=10)
        try:
            mine = request(conn, "/r/a", {"X-Dev": "alice"})
            theirs = request(conn, "/r/b")
        finally:
            conn.close()
    assert mine == {"service": "local", "name": "alice"}
    assert theirs == {"service": "api", "pod": hostname}
    assert wait_no_agent_objects("shop") == (0, 0)


def test_an_ephemeral_agent_serves_the_target_without_privileges(
    restricted: str, tmp_path: Path
) -> None:
    target = [*_target(restricted), "--agent-mode", "ephemeral"]
    before = len(_pod(restricted)["spec"].get("ephemeralContainers", []))
    _in_the_targets_context(target, restricted, "created ephemeral container tether-agent-")

    # It cannot be removed: it stays in the spec, terminated, and its Secret is gone.
    pod = _pod(restricted)
    added = pod["spec"]["ephemeralContainers"][before:]
    assert [c["targetContainerName"] for c in added] == ["api"]
    assert "securityContext" not in added[0]  # no privilege asked for
    assert all(e["name"] != "TETHER_SECRET" for e in added[0].get("env", []))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        states = {s["name"]: s["state"] for s in _pod(restricted)["status"].get(
            "ephemeralContainerStatuses", [])}  # fmt: skip
        if "terminated" in states.get(added[0]["name"], {}):
            break
        time.sleep(0.5)
    assert states[added[0]["name"]]["terminated"]["exitCode"] == 0, states
    assert wait_no_agent_objects(restricted) == (0, 0)

    # Steal is refused before anything is made, naming what is missing.
    steal = tether("port-forward", *target, "-R", "8080:1")
    one_line_error(steal, "NET_ADMIN", "agent.mode = job")
    assert len(_pod(restricted)["spec"]["ephemeralContainers"]) == before + 1


def test_auto_falls_back_on_an_ephemeral_agent_and_says_so(restricted: str) -> None:
    proc = tether("env", *_target(restricted), timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert "API_MODE=restricted" in proc.stdout.splitlines()
    warned = [line for line in proc.stderr.splitlines() if "ephemeral container" in line]
    assert warned and ("pod security policy" in warned[0] or PSP in warned[0]), proc.stderr
    assert wait_no_agent_objects(restricted) == (0, 0)


@pytest.fixture
def refusing() -> Iterator[str]:
    """A namespace whose policy allows the agent's pod, but whose ResourceQuota admits no
    pod at all."""
    name = f"tether-e2e-refusing-{secrets.token_hex(3)}"
    create_namespace(name)
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


FRONTEND = ["--target", "deployment/frontend", "-n", "shop", *AGENT, "--agent-mode", "job"]


def test_a_quota_refusal_is_reported_the_same_way(refusing: str) -> None:
    proc = tether("doctor", *FRONTEND, "--agent-namespace", refusing, "-o", "json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    (admission,) = [c for c in found["checks"] if c["name"] == "admission"]
    assert admission["status"] == "failing"
    assert "exceeded quota" in admission["detail"]
    assert "agent.namespace" in admission["fix"]
    assert agent_objects(refusing) == (0, 0)  # a dry-run creates nothing
    assert tether("doctor", *FRONTEND).returncode == 0  # in shop it passes

    proc = tether("env", *FRONTEND, "--agent-namespace", refusing, timeout=60)
    error = one_line_error(proc, "exceeded quota", "ResourceQuota")
    assert "Traceback" not in proc.stderr and error
    assert agent_objects(refusing) == (0, 0)
