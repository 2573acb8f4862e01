"""Shared set-up for the benchmarks: the bench server pod, raw and tether paths, RSS probes.

Benchmarks run against the devcluster (`devcluster up` first) and print ratios measured side
by side in one run; they are not tests and assert nothing.
"""

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from devcluster import policy
from tether.kube.client import KubeClient, connect
from tether.kube.portforward import PortForward, open_portforward

HERE = Path(__file__).resolve().parent
KUBECONFIG = os.environ.get("KUBECONFIG", "/var/lib/tether-devcluster/admin.kubeconfig")
KUBECTL = "/var/cache/tether-devcluster/kubernetes/v1.20.2/bin/kubectl"
NAMESPACE = "tether-bench"
AGENT_IMAGE = os.environ.get("TETHER_BENCH_AGENT_IMAGE", "docker.io/tether/agent:dev")
PYTHON_IMAGE = "docker.io/tether-devcluster/python:3.11"
PORT = 9000


def kubectl(*args: str, input: str | None = None) -> str:
    """kubectl against the bench cluster."""
    return subprocess.run(
        [KUBECTL, *args],
        input=input,
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
    ).stdout


def namespace_objects() -> list[dict[str, object]]:
    """The bench namespace, and the RoleBinding that lets its pods be privileged: the
    devcluster runs PodSecurityPolicy admission, and the agent Jobs the benchmarks start here
    (hostPID, added capabilities) are refused in a namespace not granted privileged pods. The
    benchmarks are project-internal and only ever run on the devcluster, so they grant it
    themselves, as an admin of such a cluster would (see devcluster.policy)."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        policy.privileged_rolebinding(NAMESPACE),
    ]


def deploy_script(name: str, script: Path, extra: list[dict[str, object]] | None = None) -> str:
    """Deploy `script` as Deployment NAME on the python image (plus `extra` objects) in the
    bench namespace, idempotently; wait for it and return its ready pod's name."""
    labels = {"app": name}
    items: list[dict[str, object]] = [
        *namespace_objects(),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "data": {script.name: script.read_text()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "terminationGracePeriodSeconds": 1,
                        "containers": [
                            {
                                "name": name,
                                "image": PYTHON_IMAGE,
                                "imagePullPolicy": "Never",
                                "command": ["python3", "-u", f"/bench/{script.name}"],
                                "volumeMounts": [{"name": "code", "mountPath": "/bench"}],
                            }
                        ],
                        "volumes": [{"name": "code", "configMap": {"name": name}}],
                    },
                },
            },
        },
        *(extra or []),
    ]
    kubectl(
        "apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
    )
    kubectl("-n", NAMESPACE, "rollout", "status", f"deployment/{name}", "--timeout=120s")
    pods = json.loads(kubectl("-n", NAMESPACE, "get", "pods", "-l", f"app={name}", "-o", "json"))
    for pod in pods["items"]:
        statuses = pod["status"].get("containerStatuses", [])
        if not pod["metadata"].get("deletionTimestamp") and statuses and statuses[0]["ready"]:
            return str(pod["metadata"]["name"])
    raise RuntimeError(f"{name} pod not ready")


def ensure_bench_server() -> str:
    """Deploy the bench server (idempotent); return its ready pod's name."""
    return deploy_script("bench", HERE / "server.py")


async def kube() -> KubeClient:
    """An API client for the devcluster."""
    return await connect(KUBECONFIG, None)


async def raw_stream(kc: KubeClient, pod: str) -> PortForward:
    """A raw API-server port-forward to the bench server (one WebSocket)."""
    return await open_portforward(kc, NAMESPACE, pod, PORT)


class Conn:
    """Uniform async read/write over a raw port-forward or a local TCP connection."""

    def __init__(
        self,
        pf: PortForward | None = None,
        tcp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None,
    ):
        self.pf = pf
        self.tcp = tcp
        self.buf = bytearray()

    @classmethod
    async def local(cls, port: int) -> "Conn":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(tcp=(reader, writer))

    async def _more(self) -> bytes:
        if self.pf is not None:
            return await self.pf.read()
        assert self.tcp is not None
        return await self.tcp[0].read(262144)

    async def write(self, data: bytes) -> None:
        if self.pf is not None:
            await self.pf.write(data)
        else:
            assert self.tcp is not None
            self.tcp[1].write(data)
            await self.tcp[1].drain()

    async def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = await self._more()
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        line, _, rest = bytes(self.buf).partition(b"\n")
        self.buf = bytearray(rest)
        return line

    async def readexactly(self, n: int) -> None:
        got = len(self.buf)
        self.buf.clear()
        while got < n:
            chunk = await self._more()
            if not chunk:
                raise ConnectionError(f"closed after {got} of {n} bytes")
            got += len(chunk)

    async def close(self) -> None:
        if self.pf is not None:
            await self.pf.close()
        elif self.tcp is not None:
            self.tcp[1].close()


def free_port() -> int:
    """A free local port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tether_forward(
    pod: str, local_port: int, host: str = "127.0.0.1"
) -> Iterator[subprocess.Popen[bytes]]:
    """`tether port-forward` to the bench pod, ready when the local port answers."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tether", "port-forward", "-q",
            "--target", f"pod/{pod}", "-n", NAMESPACE, "--agent-image", AGENT_IMAGE,
            "-L", f"{local_port}:{host}:{PORT}",
        ],
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
    )  # fmt: skip
    try:
        wait_port(local_port, proc)
        # The port is bound before the agent is up; the banner proves the whole path works.
        with socket.create_connection(("127.0.0.1", local_port), timeout=60) as s:
            assert s.recv(3) == b"hi\n"
        yield proc
    finally:
        stop(proc)


def stop(proc: "subprocess.Popen[Any]", within: float = 30) -> None:
    """End a background tether as Ctrl-C would (its cleanup runs), or kill it if it hangs."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, within: float = 60) -> None:
    """Wait until 127.0.0.1:port accepts."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"tether exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise RuntimeError(f"port {port} never opened")


def rss_mb(pid: int) -> float:
    """Resident set size of `pid` in MB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def container_pid(namespace: str, pod: str) -> int:
    """The host PID of a pod's first container (the devcluster's node is this machine)."""
    status = json.loads(kubectl("-n", namespace, "get", "pod", pod, "-o", "json"))["status"]
    cid = status["containerStatuses"][0]["containerID"].split("://", 1)[1]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if cid in (entry / "cgroup").read_text():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return min(pids)


def agent_pods(namespace: str = NAMESPACE) -> list[str]:
    """Running tether agent pods in `namespace`."""
    pods = json.loads(
        kubectl(
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=tether-agent",
            "-o",
            "json",
        )
    )
    return [p["metadata"]["name"] for p in pods["items"] if p["status"].get("phase") == "Running"]


def pct(values: list[float], q: float) -> float:
    """The q-th percentile (0-100)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    """The median."""
    return statistics.median(values)
