"""Helpers for the e2e tests: kubectl against the devcluster, pods that run a script."""

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from devcluster import policy

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("DEVCLUSTER_STATE", "/var/lib/tether-devcluster"))
KUBECONFIG = STATE / "admin.kubeconfig"
KUBECTL = Path("/var/cache/tether-devcluster/kubernetes/v1.20.2/bin/kubectl")
PYTHON_IMAGE = "docker.io/tether-devcluster/python:3.11"
BUSYBOX_IMAGE = "docker.io/tether-devcluster/busybox:1"
AGENT_IMAGE = "docker.io/tether/agent:dev"


def devcluster(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """Run `devcluster ARGS` with this interpreter; fail the test with its output on error."""
    proc = subprocess.run(
        [sys.executable, "-m", "devcluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
    )
    assert proc.returncode == 0, f"devcluster {' '.join(args)}: {proc.stderr[-3000:]}"
    return proc


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 180) -> str:
    """Run kubectl (the cluster's own v1.20 build) as the admin; return stdout."""
    proc = subprocess.run(
        [str(KUBECTL), *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        check=False,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
    )
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr.strip()}"
    return proc.stdout


def create_namespace(name: str, privileged: bool = True) -> None:
    """Create namespace `name`; with `privileged`, its pods may be privileged (hostPID, added
    capabilities: the tether agent's Job), as an admin of a PodSecurityPolicy cluster grants a
    namespace: a RoleBinding of the devcluster's `devcluster:psp:privileged` ClusterRole to the
    namespace's service accounts (see devcluster.policy). Without it, the devcluster refuses
    every privileged pod its controllers create there (baseline only)."""
    kubectl("create", "namespace", name)
    if privileged:
        kubectl("apply", "-f", "-", input=json.dumps(policy.privileged_rolebinding(name)))


def get(kind: str, name: str, namespace: str) -> dict[str, Any]:
    """One object as a dict."""
    return dict(json.loads(kubectl("-n", namespace, "get", kind, name, "-o", "json")))


def one_container(image: str, command: list[str], **extra: Any) -> dict[str, Any]:
    """A pod spec with one container of a local image running `command`."""
    container = {"name": "c", "image": image, "imagePullPolicy": "Never", "command": command}
    return {"containers": [{**container, **extra}]}


def run_pod(
    name: str, namespace: str, spec: dict[str, Any], timeout: float = 120
) -> tuple[str, str]:
    """Create a pod from `spec`, wait for it to finish; return (phase, logs). Always deletes it."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0, **spec},
    }
    kubectl("delete", "pod", "-n", namespace, name, "--ignore-not-found", "--wait=true")
    kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        deadline = time.monotonic() + timeout
        phase = ""
        while time.monotonic() < deadline:
            phase = get("pod", name, namespace).get("status", {}).get("phase", "")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(0.5)
        logs = kubectl("logs", "-n", namespace, name, check=False)
        return phase, logs
    finally:
        kubectl("delete", "pod", "-n", namespace, name, "--ignore-not-found", "--wait=false")


def ready_pod(namespace: str, app: str) -> dict[str, Any]:
    """A Running pod of `app` whose containers are all ready."""
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-l", f"app={app}", "-o", "json"))
    for pod in pods["items"]:
        status = pod.get("status", {})
        statuses = status.get("containerStatuses", [])
        if status.get("phase") == "Running" and statuses and all(s["ready"] for s in statuses):
            return dict(pod)
    raise AssertionError(f"no ready pod for app={app} in {namespace}")


def deploy_shop() -> None:
    """Apply examples/shop and wait until both Deployments are rolled out."""
    kubectl("apply", "-k", str(REPO / "examples" / "shop"))
    for dep in ("backend", "frontend"):
        kubectl(
            "-n", "shop", "rollout", "status", f"deployment/{dep}", "--timeout=180s", timeout=200
        )


def kubeconfig_for_role(namespace: str, rules: list[dict[str, Any]], path: Path) -> None:
    """Write a kubeconfig for a new service account bound to a Role of exactly `rules`."""
    name = f"limited-{secrets.token_hex(3)}"
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    }
    kubectl("apply", "-f", "-", input=json.dumps(role))
    kubectl("-n", namespace, "create", "serviceaccount", name)
    kubectl(
        "-n", namespace, "create", "rolebinding", name, f"--role={name}",
        f"--serviceaccount={namespace}:{name}",
    )  # fmt: skip
    token = ""
    deadline = time.monotonic() + 30
    while not token and time.monotonic() < deadline:
        secret_name = kubectl(
            "-n", namespace, "get", "sa", name, "-o", "jsonpath={.secrets[0].name}"
        )  # fmt: skip
        if secret_name:
            token = kubectl(
                "-n", namespace, "get", "secret", secret_name, "-o", "jsonpath={.data.token}"
            )  # fmt: skip
        time.sleep(0.3)

    admin = KUBECONFIG.read_text()

    conf = yaml.safe_load(admin)
    conf["users"] = [{"name": name, "user": {"token": base64.b64decode(token).decode()}}]
    conf["contexts"][0]["context"]["user"] = name
    path.write_text(yaml.safe_dump(conf))


def readme_role() -> list[dict[str, Any]]:
    """The rules of the README's minimal Role (examples/rbac/tether-user.yaml)."""
    role = yaml.safe_load((REPO / "examples" / "rbac" / "tether-user.yaml").read_text())
    return list(role["rules"])
