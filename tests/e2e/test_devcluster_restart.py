"""`devcluster restart`: one component dies and comes back, cutting the port-forwards through it.

The resilience tests (a tether session reconnecting after a dropped port-forward) rely on
exactly this: after a restart the cluster works again, and a `kubectl port-forward` that was
open through the restarted component has lost its connection.
"""

import json
import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from devcluster import cluster
from devcluster.procs import Daemon
from tests.e2e.cli import free_port, wait_port
from tests.e2e.kube import KUBECONFIG, KUBECTL, devcluster, kubectl, ready_pod

SUMMARY = re.compile(
    r"devcluster: restarted (?P<name>\S+) "
    r"\(down (?P<down>\d+\.\d) s, ready after (?P<ready>\d+\.\d) s\)"
)


@dataclass
class Forward:
    """A running `kubectl port-forward` and one idle connection held open through it."""

    proc: subprocess.Popen[str]
    port: int
    idle: socket.socket


def _answers(port: int) -> bytes:
    """The first bytes of the frontend's answer to GET / through the forward on `port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: frontend\r\nConnection: close\r\n\r\n")
        return s.recv(64)


@contextmanager
def forward_to_frontend() -> Iterator[Forward]:
    """`kubectl port-forward` to a frontend pod, proven to work, with an idle connection open
    (a stream through the API server, the kubelet and containerd)."""
    pod = ready_pod("shop", "frontend")["metadata"]["name"]
    port = free_port()
    proc = subprocess.Popen(
        [str(KUBECTL), "-n", "shop", "port-forward", f"pod/{pod}", f"{port}:8080"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": str(KUBECONFIG)},
    )
    idle: socket.socket | None = None
    try:
        wait_port(port, within=30)
        assert _answers(port).startswith(b"HTTP/1.1 200"), "port-forward does not work"
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        yield Forward(proc, port, idle)
    finally:
        if idle is not None:
            idle.close()
        if proc.poll() is None:
            proc.terminate()
        proc.wait(10)


def _cut_within(fwd: Forward, seconds: float) -> str | None:
    """How the forward was cut (kubectl exited, or the idle connection closed), waiting up to
    `seconds`; None if it survived."""
    fwd.idle.settimeout(0.1)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if fwd.proc.poll() is not None:
            return f"kubectl exited ({fwd.proc.returncode})"
        try:
            if fwd.idle.recv(1) == b"":
                return "connection closed"
        except TimeoutError:
            pass
        except OSError as exc:
            return f"connection failed: {exc}"
    return None


def _restart(*args: str) -> tuple[float, float]:
    """Run `devcluster restart ARGS`; check its one line and return (down, ready) seconds."""
    lines = devcluster("restart", *args, timeout=300).stderr.strip().splitlines()
    assert len(lines) == 1, lines
    m = SUMMARY.fullmatch(lines[0])
    assert m, lines[0]
    print(lines[0])
    return float(m["down"]), float(m["ready"])


def _all_healthy() -> None:
    status = devcluster("status").stdout
    assert status.count("healthy") == len(cluster.ORDER), status


def test_restart_apiserver_cuts_port_forward_and_kubectl_works_after() -> None:
    old = Daemon("kube-apiserver").pid()
    assert old is not None
    with forward_to_frontend() as fwd:
        # A short grace: the 1.20 API server waits on open watches after SIGTERM until killed.
        down, ready = _restart("apiserver", "--grace", "1")
        how = _cut_within(fwd, 15)
        assert how is not None, "the port-forward through the restarted API server survived"
        print(f"port-forward cut: {how}")
    assert down < 5 and ready < 60

    new = Daemon("kube-apiserver").pid()
    assert new is not None and new != old, "PID file not updated"
    assert kubectl("get", "--raw", "/readyz").strip() == "ok"
    assert "frontend" in kubectl("-n", "shop", "get", "pods", "-l", "app=frontend", "-o", "name")
    # A new forward works: the API server reaches the kubelet again.
    with forward_to_frontend():
        pass
    _all_healthy()


def _containers(namespace: str) -> dict[str, tuple[int, str]]:
    """Each running container of `namespace`: (restart count, start time)."""
    pods = json.loads(kubectl("-n", namespace, "get", "pods", "-o", "json"))["items"]
    return {
        f"{p['metadata']['name']}/{cs['name']}": (
            cs["restartCount"],
            cs["state"]["running"]["startedAt"],
        )
        for p in pods
        for cs in p.get("status", {}).get("containerStatuses", [])
        if "running" in cs.get("state", {})
    }


def _settle(within: float = 60) -> None:
    """Wait (at most `within` s) until no pod on the node is finished or being deleted: the
    shim of such a pod's sandbox exits whenever the kubelet removes it, which is no sign of
    a restart. (An earlier test's agent pod is often still going.)"""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pods = json.loads(kubectl("get", "pods", "-A", "-o", "json"))["items"]
        if all(
            p.get("status", {}).get("phase") in ("Running", "Pending")
            and not p["metadata"].get("deletionTimestamp")
            for p in pods
        ):
            return
        time.sleep(0.5)


def test_restart_containerd_keeps_containers_and_cuts_port_forward() -> None:
    _settle()
    before = _containers("shop")
    shims = set(cluster._shim_pids())
    assert before and shims
    with forward_to_frontend() as fwd:
        _restart("containerd")
        how = _cut_within(fwd, 15)
        assert how is not None, "the port-forward through the restarted containerd survived"
        print(f"port-forward cut: {how}")
    # Same container processes: containerd's shims outlived it.
    assert shims <= set(cluster._shim_pids())
    assert _containers("shop") == before
    with forward_to_frontend():
        pass
    _all_healthy()
