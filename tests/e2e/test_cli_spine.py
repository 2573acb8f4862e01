"""The spine's user-facing commands on the devcluster: env, port-forward -L, ls, schema,
and the error contract (one line, non-zero exit, nothing left in the cluster)."""

import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.cli import (
    AGENT,
    agent_objects,
    background,
    free_port,
    http_get,
    one_line_error,
    tether,
    tether_env,
    wait_no_agent_objects,
    wait_port,
)
from tests.e2e.kube import (
    BUSYBOX_IMAGE,
    create_namespace,
    kubeconfig_for_role,
    kubectl,
    readme_role,
    ready_pod,
)

ABSENT = "docker.io/tether/absent:0"
FRONTEND = ["--target", "deployment/frontend", "-n", "shop", *AGENT]


def test_env_shows_the_targets_variables() -> None:
    before = agent_objects("shop")
    proc = tether("env", *FRONTEND)
    assert proc.returncode == 0, proc.stderr
    assert "BACKEND_URL=http://backend" in proc.stdout.splitlines()
    assert "SHOP_MODE=staging" in proc.stdout.splitlines()
    assert "target: deployment/frontend -> pod frontend-" in proc.stderr
    as_json = json.loads(tether("env", *FRONTEND, "--format", "json", "-q").stdout)
    assert as_json["SHOP_MODE"] == "staging"
    assert as_json["HOSTNAME"] == ready_pod("shop", "frontend")["metadata"]["name"]
    sh = tether("env", *FRONTEND, "--format", "sh", "--include", "SHOP_*", "-q")
    assert sh.stdout == "export SHOP_MODE=staging\n"
    assert wait_no_agent_objects("shop") == before


def test_readme_commands_work_after_devcluster_env_without_flags(tmp_path: Path) -> None:
    # As the README says: `eval "$(devcluster env)"`, then plain commands (no --agent-image:
    # TETHER_AGENT_IMAGE names the locally built image, which is never pulled).
    exports = subprocess.run(
        [sys.executable, "-m", "devcluster", "env"], capture_output=True, text=True, check=True
    ).stdout
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    env |= {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    for line in exports.splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        env[name] = value.replace("$PATH", env.get("PATH", ""))
    assert env["TETHER_AGENT_IMAGE"] == "docker.io/tether/agent:dev"
    proc = subprocess.run(
        [sys.executable, "-m", "tether", "env", "-t", "deployment/frontend", "-n", "shop"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "SHOP_MODE=staging" in proc.stdout.splitlines()


def test_port_forward_reaches_backend_by_short_name() -> None:
    port = free_port()
    with background("port-forward", *FRONTEND, "-L", f"{port}:backend:80") as proc:
        wait_port(port)
        answer = http_get(port, "/via-tether")
        assert answer["service"] == "backend"
        assert answer["path"] == "/via-tether"
        # Several connections over the same tunnel, concurrently.
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: http_get(port, f"/{i}"), range(32)))
        assert sorted(str(a["path"]) for a in answers) == sorted(f"/{i}" for i in range(32))
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
    assert wait_no_agent_objects("shop") == (0, 0)


def test_the_session_secret_is_only_in_a_secret_owned_by_the_job() -> None:
    port = free_port()
    with background("port-forward", *FRONTEND, "-L", f"{port}:backend:80"):
        wait_port(port)
        assert http_get(port)["service"] == "backend"
        selector = "app.kubernetes.io/name=tether-agent"
        listed = kubectl("-n", "shop", "get", "jobs", "-l", selector, "-o", "json")
        (job,) = json.loads(listed)["items"]
        name = job["metadata"]["name"]
        pods = kubectl("-n", "shop", "get", "pods", "-l", f"job-name={name}", "-o", "json")
        secret = json.loads(kubectl("-n", "shop", "get", "secret", name, "-o", "json"))
        value = base64.b64decode(secret["data"]["secret"]).decode()
        assert len(value) >= 32
        for spec in (json.dumps(job), pods):
            assert value not in spec
            assert secret["data"]["secret"] not in spec
        (owner,) = secret["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Job", name, job["metadata"]["uid"])
    # The Secret went with its Job.
    assert wait_no_agent_objects("shop") == (0, 0)


def test_port_forward_targetless_with_fqdn() -> None:
    port = free_port()
    target = ["--target", "targetless", "-n", "shop", *AGENT]
    with background("port-forward", *target, "-L", f"{port}:backend.shop.svc.cluster.local:80"):
        wait_port(port)
        assert http_get(port)["service"] == "backend"
    assert wait_no_agent_objects("shop") == (0, 0)


def test_ls_and_schema() -> None:
    proc = tether("ls", "-n", "shop")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "deployment/frontend" in lines and "deployment/backend" in lines
    assert json.loads(tether("ls", "-n", "shop", "-o", "json").stdout) == lines
    schema = json.loads(tether("schema").stdout)
    assert "agent" in schema["properties"]


@pytest.fixture
def scratch_ns() -> Iterator[str]:
    ns = f"tether-e2e-cli-{secrets.token_hex(3)}"
    create_namespace(ns)
    try:
        yield ns
    finally:
        kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false")


def test_errors_are_one_line_and_leave_nothing(scratch_ns: str, tmp_path: Path) -> None:
    before = agent_objects("shop")
    cases = [
        (["env", "--target", "deployment/nope", "-n", "shop", *AGENT], ["deployment", "nope"]),
        (["env", "--target", "deployment/frontend", "-n", "no-such-ns", *AGENT], ["no-such-ns"]),
        (["env", "--target", "bogus/x", "-n", "shop", *AGENT], ["targetless"]),
        (
            ["env", "-t", "deployment/frontend", "-n", "shop", "--agent-image", ABSENT],
            [ABSENT, "agent.image"],
        ),
    ]
    for args, needles in cases:
        one_line_error(tether(*args), *needles)

    config = tmp_path / "tether.toml"
    config.write_text('[agent]\nport = "many"\n')
    one_line_error(tether("env", *FRONTEND, cwd=str(tmp_path)), "tether.toml", "agent.port")
    config.write_text("[agent]\nstartup_timeout = 0.05\n")
    one_line_error(tether("env", *FRONTEND, cwd=str(tmp_path)), "startup_timeout")

    kubectl(
        "-n", scratch_ns, "create", "deployment", "idle", f"--image={BUSYBOX_IMAGE}",
        "--replicas=0",
    )  # fmt: skip
    one_line_error(tether("env", "--target", "deployment/idle", "-n", scratch_ns), "idle")

    port = free_port()
    with background("port-forward", *FRONTEND, "-L", f"{port}:backend:80"):
        wait_port(port)
        busy = tether("port-forward", *FRONTEND, "-L", f"{port}:backend:80")
        one_line_error(busy, f"local port {port} is already in use")
    assert wait_no_agent_objects("shop") == before
    assert agent_objects(scratch_ns) == (0, 0)


def _limited_kubeconfig(namespace: str, path: Path) -> None:
    """A kubeconfig for a service account that may read pods and deployments, nothing else."""
    kubeconfig_for_role(
        namespace,
        [
            {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments", "replicasets"],
             "verbs": ["get", "list"]},
        ],
        path,
    )  # fmt: skip


README_ROLE = readme_role()


def _app_deployment(namespace: str) -> None:
    kubectl(
        "-n", namespace, "create", "deployment", "app", f"--image={BUSYBOX_IMAGE}",
        "--", "sleep", "3600",
    )  # fmt: skip
    kubectl("-n", namespace, "patch", "deployment", "app", "--type=json", "-p",
            '[{"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy",'
            ' "value": "Never"}]')  # fmt: skip
    kubectl("-n", namespace, "rollout", "status", "deployment/app", "--timeout=90s", timeout=100)


def test_a_session_works_with_exactly_the_readme_role(scratch_ns: str, tmp_path: Path) -> None:
    _app_deployment(scratch_ns)
    kubeconfig = tmp_path / "role.kubeconfig"
    kubeconfig_for_role(scratch_ns, README_ROLE, kubeconfig)
    target = ["-t", "deployment/app", "-n", scratch_ns, "--kubeconfig", str(kubeconfig), *AGENT]
    assert tether("ls", "-n", scratch_ns, "--kubeconfig", str(kubeconfig)).returncode == 0
    proc = tether("env", *target)
    assert proc.returncode == 0, proc.stderr
    assert "HOSTNAME=app-" in proc.stdout
    # A second session joins the first one's agent: it reads the Secret, never the Job spec.
    port = free_port()
    with background("port-forward", *target, "-L", f"{port}:backend.shop:80"):
        wait_port(port)
        joined = tether("env", *target, "-v")
        assert joined.returncode == 0, joined.stderr
        assert "joined job" in joined.stderr
        assert http_get(port)["service"] == "backend"
    assert wait_no_agent_objects(scratch_ns) == (0, 0)


def _cluster_objects(namespace: str) -> list[str]:
    out = kubectl("-n", namespace, "get", "all,secrets,events", "-o", "name")
    return sorted(line for line in out.splitlines() if not line.startswith("event"))


def test_doctor_passes_with_the_readme_role_and_names_a_missing_verb(
    scratch_ns: str, tmp_path: Path
) -> None:
    _app_deployment(scratch_ns)
    full = tmp_path / "role.kubeconfig"
    kubeconfig_for_role(scratch_ns, README_ROLE, full)
    target = ["-t", "deployment/app", "-n", scratch_ns, *AGENT]
    before = _cluster_objects(scratch_ns)
    proc = tether("doctor", *target, "--kubeconfig", str(full), "-o", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    found = json.loads(proc.stdout)
    assert found["session_would_start"] is True
    areas = {c["area"] for c in found["checks"]}
    assert {"machine", "cluster", "rbac", "target", "agent"} <= areas
    assert all(c["status"] != "failing" for c in found["checks"])
    # It creates nothing.
    assert _cluster_objects(scratch_ns) == before

    rules = [dict(rule) for rule in README_ROLE]
    for rule in rules:
        if rule["resources"] == ["jobs"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "delete"]
    less = tmp_path / "less.kubeconfig"
    kubeconfig_for_role(scratch_ns, rules, less)
    proc = tether("doctor", *target, "--kubeconfig", str(less))
    assert proc.returncode == 1, proc.stdout
    assert f"FAIL rbac: namespace {scratch_ns}: cannot delete jobs.batch" in proc.stdout
    assert "a session would fail" in proc.stdout


def test_without_a_verb_of_the_role_the_error_names_it(scratch_ns: str, tmp_path: Path) -> None:
    _app_deployment(scratch_ns)
    rules = [dict(rule) for rule in README_ROLE]
    for rule in rules:
        if rule["resources"] == ["secrets"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "patch"]
    kubeconfig = tmp_path / "less.kubeconfig"
    kubeconfig_for_role(scratch_ns, rules, kubeconfig)
    proc = tether(
        "env", "-t", "deployment/app", "-n", scratch_ns, "--kubeconfig", str(kubeconfig), *AGENT
    )
    one_line_error(proc, "forbidden", "patch secrets")
    # The Job and the Secret made before the refusal are gone again.
    assert wait_no_agent_objects(scratch_ns) == (0, 0)


def test_rbac_forbidden_is_one_line_and_leaves_nothing(scratch_ns: str, tmp_path: Path) -> None:
    _app_deployment(scratch_ns)
    kubeconfig = tmp_path / "limited.kubeconfig"
    _limited_kubeconfig(scratch_ns, kubeconfig)
    proc = tether(
        "env", "--target", "deployment/app", "-n", scratch_ns, "--kubeconfig", str(kubeconfig),
        *AGENT,
    )  # fmt: skip
    one_line_error(proc, "forbidden", "jobs")
    assert agent_objects(scratch_ns) == (0, 0)


def _agent_jobs() -> set[str]:
    out = kubectl(
        "-n", "shop", "get", "jobs", "-l", "app.kubernetes.io/name=tether-agent", "-o", "name"
    )  # fmt: skip
    return set(out.split())


def test_sigkilled_client_leaves_an_agent_that_exits_by_itself(tmp_path: Path) -> None:
    # The agent holds a vanished client's session for its reconnect_timeout, then idles.
    (tmp_path / "tether.toml").write_text("[agent]\nidle_timeout = 3\nreconnect_timeout = 3\n")
    port = free_port()
    jobs_before = _agent_jobs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "port-forward", *FRONTEND, "-L", f"{port}:backend:80"],
        cwd=tmp_path,
        env=tether_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ours: set[str] = set()
    try:
        wait_port(port)
        # The port is bound before the agent exists; a served request proves the session is up.
        assert http_get(port, within=60)["service"] == "backend"
        ours = _agent_jobs() - jobs_before
        assert len(ours) == 1, ours
        job = next(iter(ours)).split("/", 1)[1]
        # By the Job's uid: a shared agent Job's name is reused by the next session's Job.
        uid = json.loads(kubectl("-n", "shop", "get", "job", job, "-o", "json"))["metadata"]["uid"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The Job stays (nobody deleted it) but its agent notices the lost client and exits.
        deadline = time.monotonic() + 30
        phases: list[str] = []
        while time.monotonic() < deadline:
            out = kubectl("-n", "shop", "get", "pods", "-l", f"controller-uid={uid}", "-o", "json")
            phases = [p["status"].get("phase", "") for p in json.loads(out)["items"]]
            if phases and all(p == "Succeeded" for p in phases):
                break
            time.sleep(0.5)
        assert phases == ["Succeeded"], phases
    finally:
        if proc.poll() is None:
            proc.kill()
        for name in ours:
            kubectl("-n", "shop", "delete", name, "--wait=false")
