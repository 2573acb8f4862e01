"""Running the `tether` command in e2e tests, and counting what it leaves in the cluster."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.e2e.kube import AGENT_IMAGE, KUBECONFIG, kubectl

AGENT = ["--agent-image", AGENT_IMAGE]


def tether_env() -> dict[str, str]:
    """The environment a user would have: KUBECONFIG pointing at the devcluster."""
    return {**os.environ, "KUBECONFIG": str(KUBECONFIG)}


def tether(
    *args: str, timeout: float = 120, cwd: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `tether ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=tether_env(),
        cwd=cwd,
        check=False,
    )


def agent_objects(namespace: str) -> tuple[int, int]:
    """(Jobs, pods) that tether created in `namespace` and that are not being deleted; a Job's
    Secret counts as a Job (it goes with it)."""
    out = kubectl(
        "-n", namespace, "get", "jobs,pods,secrets", "-l", "app.kubernetes.io/name=tether-agent",
        "-o", "json",
    )  # fmt: skip
    items = [i for i in json.loads(out)["items"] if not i["metadata"].get("deletionTimestamp")]
    pods = sum(1 for i in items if i["kind"] == "Pod")
    jobs = sum(1 for i in items if i["kind"] == "Job")
    secrets = len(items) - pods - jobs
    return max(jobs, secrets), pods


def wait_no_agent_objects(namespace: str, within: float = 30) -> tuple[int, int]:
    """Wait until tether's Jobs and pods in `namespace` are gone; return what is left."""
    deadline = time.monotonic() + within
    left = agent_objects(namespace)
    while left != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.5)
        left = agent_objects(namespace)
    return left


def free_port() -> int:
    """A local TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, within: float = 60) -> None:
    """Wait until something accepts on 127.0.0.1:port."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {within} s")


@contextmanager
def background(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`tether ARGS` running in the background; interrupted (SIGINT) and reaped at the end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=tether_env(),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Assert `proc` failed with exactly one `tether: error:` line and no traceback."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tether: error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def http_get(port: int, path: str = "/", within: float = 30) -> dict[str, object]:
    """GET http://127.0.0.1:port/path and decode the JSON answer. The first request of a
    session waits in the listen backlog until the agent is up, hence the generous timeout."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=within) as resp:
        return dict(json.loads(resp.read()))
