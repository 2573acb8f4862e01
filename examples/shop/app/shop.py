"""The shop demo's two services in one stdlib-only file (runs on the devcluster's Python image).

`python3 shop.py backend` answers GET / with its pod name and the request's headers;
`python3 shop.py frontend` answers GET / by calling BACKEND_URL and returning both answers,
plus its SHOP_MODE and the config file mounted at /etc/shop/config.yaml.
"""

import json
import os
import socket
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG = "/etc/shop/config.yaml"


def backend_answer(handler: BaseHTTPRequestHandler) -> dict[str, object]:
    """What the backend says about itself and the request."""
    return {
        "service": "backend",
        "pod": socket.gethostname(),
        "path": handler.path,
        "headers": dict(handler.headers.items()),
    }


def frontend_answer(handler: BaseHTTPRequestHandler) -> dict[str, object]:
    """The frontend's answer: its own facts plus the backend's answer."""
    url = os.environ.get("BACKEND_URL", "http://backend")
    forward = {k: v for k, v in handler.headers.items() if k.lower().startswith("x-")}
    req = urllib.request.Request(url + "/", headers=forward)
    with urllib.request.urlopen(req, timeout=5) as resp:
        backend = json.loads(resp.read())
    try:
        with open(CONFIG) as f:
            config = f.read()
    except OSError as exc:
        config = f"unreadable: {exc}"
    return {
        "service": "frontend",
        "pod": socket.gethostname(),
        "mode": os.environ.get("SHOP_MODE", ""),
        "config": config,
        "backend": backend,
    }


class Handler(BaseHTTPRequestHandler):
    """Serves / and /healthz for either role."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without this, Nagle and delayed ACKs add
    # 40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    role = "backend"

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._send(200, {"ok": True})
            return
        try:
            body = backend_answer(self) if self.role == "backend" else frontend_answer(self)
        except OSError as exc:
            self._send(502, {"error": f"backend unreachable: {exc}"})
            return
        self._send(200, body)

    def _send(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body, indent=2).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        if self.path != "/healthz":
            sys.stderr.write(f"{self.address_string()} {format % args}\n")


def main() -> None:
    """Run the role named on the command line on PORT (default 8080)."""
    Handler.role = sys.argv[1] if len(sys.argv) > 1 else "backend"
    port = int(os.environ.get("PORT", "8080"))
    server = ThreadingHTTPServer(("", port), Handler)
    print(f"shop {Handler.role} listening on :{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
