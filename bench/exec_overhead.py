"""`tether exec` overhead, side by side in one run (target, issue 4: python start <= 1.2x).

- `python3 -c "import json, http.client, email"` under tether exec (fs mode `read`) vs plain;
- µs per trapped syscall from 10k local opens under tether vs plain;
- requests/s of an HTTP keep-alive client under exec (to http://backend/ through the tunnel)
  vs the same client through a raw port-forward (`kubectl port-forward`, the API server's).

Run: .venv/bin/python -m bench.exec_overhead  (devcluster up, shop deployed)
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from bench.common import AGENT_IMAGE, KUBECONFIG, KUBECTL, free_port, kubectl

INNER = [sys.executable, "-m", "bench.exec_inner"]


def backend_pod() -> str:
    pods = json.loads(kubectl("-n", "shop", "get", "pods", "-l", "app=backend", "-o", "json"))
    return str(pods["items"][0]["metadata"]["name"])


def main() -> None:
    env = {**os.environ, "KUBECONFIG": KUBECONFIG}
    port = free_port()
    forward = subprocess.Popen(
        [KUBECTL, "-n", "shop", "port-forward", f"pod/{backend_pod()}", f"{port}:8080"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("kubectl port-forward did not come up")
            time.sleep(0.1)
        plain = json.loads(
            subprocess.run(
                [*INNER, f"http://127.0.0.1:{port}/"], env=env, capture_output=True, text=True,
                check=True,
            ).stdout
        )  # fmt: skip
    finally:
        forward.send_signal(signal.SIGINT)
        forward.wait(10)
    under = subprocess.run(
        [
            sys.executable, "-m", "tether", "exec", "-q", "--target", "deployment/frontend",
            "-n", "shop", "--agent-image", AGENT_IMAGE, "--", *INNER, "http://backend/",
        ],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    tether = json.loads(under.stdout.strip().splitlines()[-1])
    per_call = (tether["opens_s"] - plain["opens_s"]) / 10000 * 1e6
    print("tether exec overhead (fs mode read):")
    print(
        f"  python3 -c '{'import json, http.client, email'}': plain {plain['python_ms']:.1f} ms,"
        f" under tether {tether['python_ms']:.1f} ms, ratio "
        f"{tether['python_ms'] / plain['python_ms']:.2f}x (target <= 1.2x)"
    )
    print(
        f"  10k local opens: plain {plain['opens_s'] * 1000:.0f} ms, under tether "
        f"{tether['opens_s'] * 1000:.0f} ms -> {per_call:.1f} us per trapped syscall"
    )
    print(
        f"  HTTP keep-alive client: raw port-forward {plain['rps']:.0f} req/s, under tether "
        f"exec {tether['rps']:.0f} req/s, ratio {tether['rps'] / plain['rps']:.2f}x"
    )


if __name__ == "__main__":
    main()
