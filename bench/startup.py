"""Startup benchmark: from `tether port-forward` starting to the first byte through it, against
the floor of doing the same by hand (create a trivial pod on that node, wait for it, first byte
through a raw API-server port-forward). Median of N runs, interleaved. Target (issue 3): <= 1.2x.
Each agent mode is measured (`--modes`): the Job, and the ephemeral container added to the
bench pod (each run leaves one, terminated, in that pod's spec: they cannot be removed).

Run: .venv/bin/python -m bench.startup  (devcluster up first)
"""

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import time

from bench.common import (
    AGENT_IMAGE,
    HERE,
    KUBECONFIG,
    NAMESPACE,
    PORT,
    PYTHON_IMAGE,
    Conn,
    ensure_bench_server,
    free_port,
    kube,
    kubectl,
    median,
    raw_stream,
)

POLL = 0.02


async def floor_run(node: str) -> float:
    """Seconds from creating a trivial pod to its first byte through a raw port-forward."""
    name = f"floor-{secrets.token_hex(3)}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "c",
                    "image": PYTHON_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", (HERE / "server.py").read_text()],
                }
            ],
        },
    }
    kc = await kube()
    try:
        t0 = time.perf_counter()
        await kc.core.create_namespaced_pod(NAMESPACE, pod)
        while True:
            p = await kc.core.read_namespaced_pod(name, NAMESPACE)
            if p.status.phase == "Running":
                break
            await asyncio.sleep(POLL)
        while True:
            # The port opens a moment after the container starts: retry like a user would.
            try:
                conn = Conn(pf=await raw_stream(kc, name))
                line = await asyncio.wait_for(conn.readline(), 2)
                await conn.close()
                if line == b"hi":
                    return time.perf_counter() - t0
            except Exception:
                await asyncio.sleep(POLL)
    finally:
        await kc.core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
        await kc.close()


def tether_run(pod: str, mode: str) -> float:
    """Seconds from starting `tether port-forward` (agent.mode `mode`) to the first byte
    through it."""
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "tether", "port-forward", "-q", "--target", f"pod/{pod}",
            "-n", NAMESPACE, "--agent-image", AGENT_IMAGE, "-L", f"{port}:127.0.0.1:{PORT}",
            # "job" passes no flag, so that a tether older than agent.mode (PYTHONPATH) runs
            # the same command; the default (auto) starts the Job wherever it is admitted.
            *([] if mode == "job" else ["--agent-mode", mode]),
        ],
        # Only what tether needs (and PYTHONPATH, to bench another checkout's tether).
        env={
            "KUBECONFIG": KUBECONFIG,
            "PATH": "/usr/bin:/bin",
            **{k: v for k, v in os.environ.items() if k == "PYTHONPATH"},
        },
    )  # fmt: skip
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"tether port-forward exited with status {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                    if s.recv(3) == b"hi\n":
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(POLL)
    finally:
        proc.terminate()
        proc.wait(30)


def main(runs: int, modes: list[str]) -> None:
    pod = ensure_bench_server()
    node = json.loads(kubectl("-n", NAMESPACE, "get", "pod", pod, "-o", "json"))["spec"]["nodeName"]
    floors: list[float] = []
    tethers: dict[str, list[float]] = {mode: [] for mode in modes}
    for _ in range(runs):
        floors.append(asyncio.run(floor_run(node)))
        for mode in modes:
            tethers[mode].append(tether_run(pod, mode))
    f = median(floors)
    print(f"startup to first byte, median of {runs}:")
    rows = [("floor (trivial pod + raw port-forward)", floors)]
    rows += [(f"tether port-forward, agent.mode {mode}", tethers[mode]) for mode in modes]
    for label, values in rows:
        print(f"  {label:<40} {median(values):.2f} s  runs {[round(x, 2) for x in values]}")
    for mode in modes:
        print(f"  ratio {mode} {median(tethers[mode]) / f:.2f}x (target <= 1.2x)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--modes", default="job,ephemeral", help="comma-separated agent modes")
    args = parser.parse_args()
    main(args.runs, args.modes.split(","))
