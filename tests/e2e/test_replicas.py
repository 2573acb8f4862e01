"""Incoming traffic on every replica of a workload, on the devcluster: a Service spreads
requests over all the pods, and a filtered steal must take the matching ones wherever they
land."""

import http.client
import json
import os
import signal
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cleanup import remove_tether_chains_of, sweep, tether_chains_of
from tests.e2e.cli import AGENT, agent_objects
from tests.e2e.kube import get, kubectl
from tests.e2e.test_incoming import LocalApp, Tether, request, wait_until
from tether.agent.target import find_container_pid

WEB = ["--target", "deployment/web", "-n", "shop", *AGENT]


def web_manifest(replicas: int) -> dict[str, Any]:
    """Deployment and Service "web" in shop: the shop app's backend role (it answers with
    its pod's name) on `replicas` pods."""
    labels = {"app": "web"}
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "shop", "labels": labels},
                "spec": {
                    "replicas": replicas,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [
                                {
                                    "name": "web",
                                    "image": "docker.io/tether-devcluster/python:3.11",
                                    "imagePullPolicy": "Never",
                                    "command": ["python3", "-u", "/app/shop.py", "backend"],
                                    "ports": [{"name": "http", "containerPort": 8080}],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/healthz", "port": "http"},
                                        "periodSeconds": 1,
                                    },
                                    "volumeMounts": [{"name": "app", "mountPath": "/app"}],
                                }
                            ],
                            "volumes": [{"name": "app", "configMap": {"name": "shop-app"}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop"},
                "spec": {
                    "selector": labels,
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                },
            },
        ],
    }


def ready_web_pods() -> list[str]:
    pods = json.loads(kubectl("-n", "shop", "get", "pods", "-l", "app=web", "-o", "json"))
    out = []
    for pod in pods["items"]:
        status = pod.get("status", {})
        statuses = status.get("containerStatuses", [])
        ready = status.get("phase") == "Running" and statuses and all(s["ready"] for s in statuses)
        if ready and not pod["metadata"].get("deletionTimestamp"):
            out.append(str(pod["metadata"]["name"]))
    return sorted(out)


def scale(replicas: int) -> None:
    kubectl("-n", "shop", "scale", "deployment/web", f"--replicas={replicas}")
    wait_until(lambda: len(ready_web_pods()) == replicas, 120, f"{replicas} web pods Ready")


@pytest.fixture(scope="module")
def web() -> Iterator[str]:
    """The 3-replica web workload; yields its Service IP."""
    kubectl("apply", "-f", "-", input=json.dumps(web_manifest(3)))
    try:
        kubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
        wait_until(lambda: len(ready_web_pods()) == 3, 120, "3 web pods Ready")
        yield str(get("service", "web", "shop")["spec"]["clusterIP"])
    finally:
        kubectl("-n", "shop", "delete", "deployment/web", "service/web", "--wait=false")


@pytest.fixture(autouse=True)
def clean(web: str) -> Iterator[None]:
    yield
    try:
        wait_until(lambda: not tether_chains_of("shop", "web"), 30, "no tether rules on web")
        wait_until(lambda: agent_objects("shop") == (0, 0), 90, "agent Jobs and pods gone")
    except AssertionError as exc:
        left = tether_chains_of("shop", "web")
        remove_tether_chains_of("shop", "web")
        raise AssertionError(f"{exc}; cleaned up: chains {left!r}, objects {sweep()}") from None
    scale(3)


def ask(ip: str, path: str, dev: str | None) -> dict[str, Any]:
    """One request through the Service, on a connection of its own (kube-proxy picks a pod
    for each)."""
    conn = http.client.HTTPConnection(ip, 80, timeout=10)
    try:
        return request(conn, path, {"X-Dev": dev} if dev else {})
    finally:
        conn.close()


def covered(t: Tether, pods: int) -> None:
    """Wait until the session's incoming holds on `pods` pods (its own and the others)."""
    wait_until(
        lambda: sum("incoming: also on pod" in line for line in list(t.lines)) >= pods - 1,
        90,
        f"incoming on {pods} pods:\n{t.stderr}",
    )


def test_a_filtered_steal_takes_matching_requests_on_every_replica(web: str) -> None:
    with LocalApp("alice") as app:
        t = Tether(
            "port-forward", "-v", *WEB, "-R", f"8080:{app.port}",
            "--http-header-filter", "^x-dev: alice$",
        )  # fmt: skip
        try:
            t.wait_for("incoming:")
            covered(t, 3)
            mine = [ask(web, f"/a/{i}", "alice") for i in range(30)]
            assert [m["service"] for m in mine] == ["local"] * 30
            others = [ask(web, f"/o/{i}", "bob") for i in range(30)]
            assert all(o["service"] == "backend" for o in others)
            assert len({o["pod"] for o in others}) > 1, "the Service spread the requests"
            # A fourth pod joins during the session: it is covered within a few seconds.
            scale(4)
            covered(t, 4)
            mine = [ask(web, f"/b/{i}", "alice") for i in range(30)]
            assert [m["service"] for m in mine] == ["local"] * 30
        finally:
            t.stop(signal.SIGTERM)
    assert app.seen("/o/") == 0


def test_two_developers_filters_on_three_replicas_each_get_their_own(web: str) -> None:
    with LocalApp("alice") as alice_app, LocalApp("bob") as bob_app:
        alice = Tether(
            "port-forward", "-v", *WEB, "-R", f"8080:{alice_app.port}",
            "--http-header-filter", "^x-dev: alice$",
        )  # fmt: skip
        bob = Tether(
            "port-forward", "-v", *WEB, "-R", f"8080:{bob_app.port}",
            "--http-header-filter", "^x-dev: bob$",
        )  # fmt: skip
        try:
            for t in (alice, bob):
                t.wait_for("incoming:")
                covered(t, 3)
            for i in range(20):
                assert ask(web, f"/a/{i}", "alice")["name"] == "alice"
                assert ask(web, f"/b/{i}", "bob")["name"] == "bob"
                assert ask(web, f"/n/{i}", None)["service"] == "backend"
        finally:
            for t in (alice, bob):
                t.stop(signal.SIGTERM)
    assert (alice_app.seen("/a/"), alice_app.seen("/b/")) == (20, 0)
    assert (bob_app.seen("/b/"), bob_app.seen("/a/")) == (20, 0)


def test_kill_9_during_a_steal_on_three_replicas_gives_every_pod_back(
    web: str, tmp_path: Path
) -> None:
    config = tmp_path / "tether.toml"
    config.write_text(
        "[agent]\nidle_timeout = 3\nttl_seconds_after_finished = 0\nreconnect_timeout = 3\n"
    )
    with LocalApp("doomed") as app:
        t = Tether(
            "port-forward", "-v", *WEB, "-f", str(config), "-R", f"8080:{app.port}", "--steal"
        )
        try:
            t.wait_for("incoming:")
            covered(t, 3)
            assert all(ask(web, f"/k/{i}", None)["service"] == "local" for i in range(10))
        finally:
            t.stop(signal.SIGKILL)
        killed = time.monotonic()

        def every_pod_serves() -> bool:
            try:
                return all(ask(web, f"/p/{i}", None)["service"] == "backend" for i in range(9))
            except (OSError, AssertionError, http.client.HTTPException, ValueError):
                return False

        wait_until(every_pod_serves, 5, "every replica serves")
        assert time.monotonic() - killed <= 5
    # The agents held the vanished session for reconnect_timeout; then their rules went.
    wait_until(lambda: not tether_chains_of("shop", "web"), 3 + 10, "no rules on any replica")


# Two requests a second to another Service for a while; every outcome recorded with its time.
CLIENT_LOOP = textwrap.dedent(
    """
    import json, os, sys, time, urllib.request
    seconds = float(sys.argv[1])
    results = []
    end = time.monotonic() + seconds
    print("pid", os.getpid(), flush=True)
    while time.monotonic() < end:
        at = time.time()
        try:
            body = json.loads(urllib.request.urlopen("http://backend/loop", timeout=5).read())
            results.append([at, body["service"]])
        except Exception as exc:
            results.append([at, repr(exc)])
        print("tick", len(results), flush=True)
        time.sleep(0.5)
    print(json.dumps(results), flush=True)
    """
)


def rollout_restart() -> float:
    """Restart the web rollout; the wall-clock time its new pods were all Ready."""
    kubectl("-n", "shop", "rollout", "restart", "deployment/web")
    kubectl("-n", "shop", "rollout", "status", "deployment/web", "--timeout=180s")
    wait_until(lambda: len(ready_web_pods()) == 3, 60, "3 web pods Ready after the rollout")
    return time.time()


def run_loop(seconds: int, meanwhile: Callable[[], object]) -> tuple[Tether, list[Any]]:
    """`tether exec` of CLIENT_LOOP for `seconds` on web; `meanwhile()` once it runs. Returns
    tether and the loop's results, having checked that one program ran it all, exit 0."""
    t = Tether("exec", "-v", *WEB, "--", sys.executable, "-c", CLIENT_LOOP, str(seconds))
    out: list[str] = []

    def read() -> None:
        assert t.proc.stdout is not None
        out.extend(line.rstrip("\n") for line in t.proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_until(lambda: any(line.startswith("tick 4") for line in out), 90, "the loop runs")
        meanwhile()
        code = t.proc.wait(120)
        reader.join(10)
    finally:
        t.stop(signal.SIGKILL)
    assert code == 0, t.stderr
    assert sum(line.startswith("pid ") for line in out) == 1  # one program, never restarted
    return t, list(json.loads(out[-1]))


def test_exec_follows_a_rollout_and_the_program_never_restarts(web: str) -> None:
    readies: list[float] = []
    t, results = run_loop(45, lambda: readies.append(rollout_restart()))
    moved = t.first_at("went away; now on")
    assert moved is not None, t.stderr
    # A request in flight while the session moves fails (ECONNRESET: what lived on the old
    # pod cannot move); every one after, on the same program, works. The move comes when
    # the session's own pod ends, which can be after the rollout reports Ready.
    after = [r for r in results if r[0] > max(readies[0] + 2, moved)]
    assert after and all(r[1] == "backend" for r in after), (after, t.stderr)


def test_a_filtered_steal_follows_a_rollout(web: str) -> None:
    with LocalApp("alice") as app:
        t = Tether(
            "port-forward", "-v", *WEB, "-R", f"8080:{app.port}",
            "--http-header-filter", "^x-dev: alice$",
        )  # fmt: skip
        answers: list[tuple[float, str]] = []
        stop = threading.Event()

        def client() -> None:
            i = 0
            while not stop.is_set():
                try:
                    got = ask(web, f"/r/{i}", "alice")
                    answers.append((time.time(), f"{got['service']} {got.get('pod', '')}".strip()))
                except Exception as exc:
                    answers.append((time.time(), repr(exc)))
                i += 1
                time.sleep(0.1)

        thread = threading.Thread(target=client, daemon=True)
        try:
            t.wait_for("incoming:")
            covered(t, 3)
            thread.start()
            ready = rollout_restart()
            time.sleep(6)
        finally:
            stop.set()
            thread.join(15)
            t.stop(signal.SIGTERM)
    after = [a for a in answers if a[0] > ready + 2]
    assert after and all(s == "local" for _, s in after), (
        [(round(at - ready, 2), s) for at, s in answers if s != "local" and at > ready],
        "\n".join(line for line in t.lines if "pod" in line or "warning" in line),
    )
    assert "went away; now on" in t.stderr, t.stderr


def test_exec_follows_a_container_restart_in_its_pod(web: str) -> None:
    scale(1)
    (pod,) = ready_web_pods()

    def crash() -> None:
        status = get("pod", pod, "shop")["status"]["containerStatuses"][0]
        os.kill(find_container_pid(status["containerID"]), signal.SIGKILL)

    t, results = run_loop(30, crash)
    assert "restarted; now on the new one" in t.stderr, t.stderr
    assert all(r[1] == "backend" for r in results[-10:]), (results, t.stderr)
