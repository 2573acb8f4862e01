"""Follow benchmark: a filtered steal on a 3-replica Deployment through rollouts
(`kubectl rollout restart`), with an in-cluster-like client sending 50 matching requests/s
through the Service on fresh connections.

Prints, over N rollouts:
- how long after each new pod became Ready its matching requests were still answered by the
  pod itself, i.e. from Ready to the first request served through it (0 when it was covered
  before it was Ready). Target (issue 13): p50 <= 1 s.
- requests that failed (no answer, an error) during the rollouts, and those after the new
  pods were Ready. Target: none after.

The app is Ready as soon as it answers (a readiness probe every second, no initial delay):
the hardest case, since a new pod's agent starts beside its sandbox at the same time.

Run: .venv/bin/python -m bench.follow [--rollouts 3]   (devcluster up first)
"""

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.common import (
    AGENT_IMAGE,
    HERE,
    KUBECONFIG,
    NAMESPACE,
    kubectl,
    median,
    namespace_objects,
    stop,
)

NAME = "follow"
RATE = 50.0


def manifest() -> dict[str, object]:
    labels = {"app": NAME}
    probe = {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1}
    container = {
        "name": NAME,
        "image": "docker.io/tether-devcluster/python:3.11",
        "imagePullPolicy": "Never",
        "command": ["python3", "-u", "/app/follow_server.py"],
        "readinessProbe": probe,
        "volumeMounts": [{"name": "app", "mountPath": "/app"}],
    }
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            # With the RoleBinding that lets its agents be privileged (see namespace_objects).
            *namespace_objects(),
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "data": {"follow_server.py": (HERE / "follow_server.py").read_text()},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {
                    "replicas": 3,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {
                            "terminationGracePeriodSeconds": 1,
                            "containers": [container],
                            "volumes": [{"name": "app", "configMap": {"name": NAME}}],
                        },
                    },
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
            },
        ],
    }


class Local(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:
        body = b'{"pod": "local"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class ReadyWatch(threading.Thread):
    """When each pod of the Deployment was first seen Ready (polled every 0.2 s)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.ready_at: dict[str, float] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            pods = json.loads(kubectl("-n", NAMESPACE, "get", "pods", "-l", f"app={NAME}",
                                      "-o", "json"))["items"]  # fmt: skip
            now = time.monotonic()
            for pod in pods:
                statuses = pod["status"].get("containerStatuses", [])
                if statuses and all(s["ready"] for s in statuses):
                    self.ready_at.setdefault(pod["metadata"]["name"], now)
            self.stopped.wait(0.2)


class Client(threading.Thread):
    """Matching requests at RATE per second, each on a new connection to the Service."""

    def __init__(self, ip: str) -> None:
        super().__init__(daemon=True)
        self.ip = ip
        self.results: list[tuple[float, str]] = []  # (when answered, pod or "error: ...")
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            started = time.monotonic()
            try:
                conn = http.client.HTTPConnection(self.ip, 80, timeout=5)
                conn.request("GET", "/", headers={"X-Dev": "bench"})
                resp = conn.getresponse()
                body = resp.read()
                conn.close()
                who = json.loads(body)["pod"] if resp.status == 200 else f"error: {resp.status}"
            except Exception as exc:
                who = f"error: {type(exc).__name__}"
            self.results.append((time.monotonic(), who))
            self.stopped.wait(max(0.0, 1 / RATE - (time.monotonic() - started)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rollouts", type=int, default=3)
    args = parser.parse_args()
    kubectl("apply", "-f", "-", input=json.dumps(manifest()))
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{NAME}", "--timeout=180s")
    ip = json.loads(kubectl("-n", NAMESPACE, "get", "service", NAME, "-o", "json"))["spec"][
        "clusterIP"
    ]
    local = ThreadingHTTPServer(("127.0.0.1", 0), Local)
    threading.Thread(target=local.serve_forever, daemon=True).start()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "port-forward", "-q",
         "--target", f"deployment/{NAME}", "-n", NAMESPACE, "--agent-image", AGENT_IMAGE,
         "-R", f"8080:{local.server_address[1]}", "--http-header-filter", "^x-dev: bench$"],
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
    )  # fmt: skip
    watch = ReadyWatch()
    client = Client(ip)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # every replica covered: 20 answers in a row local
            answers = []
            for _ in range(20):
                conn = http.client.HTTPConnection(ip, 80, timeout=5)
                try:
                    conn.request("GET", "/", headers={"X-Dev": "bench"})
                    answers.append(json.loads(conn.getresponse().read())["pod"])
                except (OSError, http.client.HTTPException, ValueError):
                    answers.append("error")
                finally:
                    conn.close()
            if all(a == "local" for a in answers):
                break
            time.sleep(1)
        watch.start()
        time.sleep(1)
        before = set(watch.ready_at)
        client.start()
        windows: list[tuple[float, float]] = []
        for _ in range(args.rollouts):
            began = time.monotonic()
            kubectl("-n", NAMESPACE, "rollout", "restart", f"deployment/{NAME}")
            kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{NAME}", "--timeout=180s")
            time.sleep(5)
            windows.append((began, time.monotonic()))
        client.stopped.set()
        client.join(10)
    finally:
        watch.stopped.set()
        stop(proc)
        local.shutdown()
    new_pods = {p: t for p, t in watch.ready_at.items() if p not in before}
    lags = []
    for pod, ready in sorted(new_pods.items(), key=lambda kv: kv[1]):
        own = [at for at, who in client.results if who == pod and at >= ready]
        lags.append(max(own) - ready if own else 0.0)
    failed = [at for at, who in client.results if who.startswith("error")]
    after_ready = 0
    for began, ended in windows:
        in_window = [t for t in new_pods.values() if began <= t <= ended]
        if in_window:
            all_ready = max(in_window)
            after_ready += sum(1 for at in failed if all_ready < at <= ended)
    print(f"rollouts: {len(windows)}; requests: {len(client.results)} at {RATE:.0f}/s")
    if lags:
        print(
            "new pod Ready -> its matching requests served through tether:"
            f" p50 {median(lags):.2f} s, max {max(lags):.2f} s over {len(lags)} pods"
            " (target p50 <= 1 s)"
        )
    print(
        f"failed requests: {len(failed)} during the rollouts,"
        f" {after_ready} after a rollout's new pods were all Ready (target: none after)"
    )
    kubectl("-n", NAMESPACE, "delete", f"deployment/{NAME}", f"service/{NAME}", "--wait=false")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(1))
    main()
