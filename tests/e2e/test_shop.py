"""The ground is real: the shop runs, Services and cluster DNS work from pods."""

import json

from tests.e2e.kube import BUSYBOX_IMAGE, PYTHON_IMAGE, get, one_container, ready_pod, run_pod


def test_shop_deployments_are_ready() -> None:
    for dep in ("backend", "frontend"):
        status = get("deployment", dep, "shop")["status"]
        assert status.get("readyReplicas") == 1, status


def test_frontend_answers_with_backend_through_services() -> None:
    phase, logs = run_pod(
        "t-client",
        "shop",
        one_container(
            BUSYBOX_IMAGE, ["wget", "-qO-", "--header", "X-Trace: e2e", "http://frontend/"]
        ),
    )
    assert phase == "Succeeded", logs
    answer = json.loads(logs)
    backend_pod = ready_pod("shop", "backend")["metadata"]["name"]
    assert answer["service"] == "frontend"
    assert answer["mode"] == "staging"
    assert "greeting: hello from the shop's staging config" in answer["config"]
    assert answer["backend"]["pod"] == backend_pod
    assert answer["backend"]["headers"]["X-Trace"] == "e2e"


RESOLVE = """
import json, socket
names = ["backend", "backend.shop", "backend.shop.svc.cluster.local", "kubernetes.default"]
out = {n: socket.gethostbyname(n) for n in names}
try:
    socket.gethostbyname("no-such-service")
    out["missing"] = "resolved"
except socket.gaierror:
    out["missing"] = "nxdomain"
print(json.dumps(out))
"""


def test_pod_resolves_services_by_short_and_long_names() -> None:
    phase, logs = run_pod(
        "t-resolve",
        "shop",
        one_container(PYTHON_IMAGE, ["python3", "-c", RESOLVE]),
    )
    assert phase == "Succeeded", logs
    got = json.loads(logs)
    backend_ip = get("service", "backend", "shop")["spec"]["clusterIP"]
    api_ip = get("service", "kubernetes", "default")["spec"]["clusterIP"]
    assert got["backend"] == backend_ip
    assert got["backend.shop"] == backend_ip
    assert got["backend.shop.svc.cluster.local"] == backend_ip
    assert got["kubernetes.default"] == api_ip
    assert got["missing"] == "nxdomain"
