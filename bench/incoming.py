"""Incoming-traffic benchmark, side by side in one run against one HTTP pod (`bench-http` in
the tether-bench namespace, keep-alive HTTP/1.1):

1. latency: a request stolen to a local app (client -> Service -> pod -> agent -> tunnel ->
   local app) against the same request over a raw API-server port-forward to the pod.
   Target (issue 5): stolen p50 <= raw p50 + 1 ms.
2. filtered steal under load: 500 req/s over keep-alive connections, half of them matching
   the filter; every answer says who served it. Target: 0 lost, 0 misrouted.
3. mirror: the real path's p50 with a mirroring session against without (measured before and
   after, averaged). Target: <= +0.5 ms.

Run: .venv/bin/python -m bench.incoming   (devcluster up first)
"""

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from bench.common import (
    AGENT_IMAGE,
    HERE,
    KUBECONFIG,
    NAMESPACE,
    deploy_script,
    free_port,
    kube,
    kubectl,
    median,
    pct,
    stop,
)
from tether.kube.portforward import PortForward, open_portforward

HTTP_PORT = 8080
TARGET = ["--target", "deployment/bench-http", "-n", NAMESPACE, "--agent-image", AGENT_IMAGE]
REQUEST = b"GET /%s HTTP/1.1\r\nHost: bench\r\n%s\r\n"


def ensure_http_server() -> tuple[str, str]:
    """Deploy the HTTP bench server and its Service; return (pod name, Service IP)."""
    service: dict[str, object] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "bench-http", "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": "bench-http"},
            "ports": [{"port": 80, "targetPort": HTTP_PORT}],
        },
    }
    pod = deploy_script("bench-http", HERE / "http_server.py", [service])
    got = json.loads(kubectl("-n", NAMESPACE, "get", "service", "bench-http", "-o", "json"))
    return pod, str(got["spec"]["clusterIP"])


class Http:
    """A keep-alive HTTP/1.1 client over an asyncio stream pair (answers carry Content-Length)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int) -> "Http":
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def get(self, path: str, headers: bytes = b"") -> bytes:
        """One request; the response body."""
        self.writer.write(REQUEST % (path.encode(), headers))
        await self.writer.drain()
        return await read_response(self.reader)

    def close(self) -> None:
        self.writer.close()


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """Read one Content-Length-framed response; return its body."""
    head = await reader.readuntil(b"\r\n\r\n")
    return await reader.readexactly(_content_length(head))


class PortForwardHttp(Http):
    """The same client over a raw API-server port-forward (no tether in the path)."""

    def __init__(self, pf: PortForward) -> None:
        self.pf = pf
        self.buf = b""

    async def get(self, path: str, headers: bytes = b"") -> bytes:
        await self.pf.write(REQUEST % (path.encode(), headers))
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end >= 0:
                length = _content_length(self.buf[:head_end])
                end = head_end + 4 + length
                if len(self.buf) >= end:
                    body, self.buf = self.buf[head_end + 4 : end], self.buf[end:]
                    return body
            chunk = await self.pf.read()
            if not chunk:
                raise ConnectionError("port-forward closed")
            self.buf += chunk

    def close(self) -> None:
        pass


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


async def local_app(name: bytes) -> tuple[asyncio.Server, int]:
    """The developer's local app: answers every request with `name`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(name), name))
                await writer.drain()
        writer.close()

    port = free_port()
    server = await asyncio.start_server(serve, "127.0.0.1", port)
    return server, port


@contextlib.contextmanager
def tether(*args: str) -> Iterator[subprocess.Popen[str]]:
    """A background `tether port-forward` session, ready once it reports its subscription."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "port-forward", *TARGET, *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": KUBECONFIG},
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "incoming:" in line:
                break
        else:
            raise RuntimeError(f"tether exited with {proc.wait()}")
        yield proc
    finally:
        stop(proc)


async def timed(client: Http, rounds: int, headers: bytes = b"") -> list[float]:
    """Round-trip times (ms) of `rounds` requests on one keep-alive connection."""
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        await client.get(f"t{i}", headers)
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def bench_latency(pod: str, service_ip: str, rounds: int) -> None:
    kc = await kube()
    try:
        pf = await open_portforward(kc, NAMESPACE, pod, HTTP_PORT)
        raw_client = PortForwardHttp(pf)
        await timed(raw_client, 20)
        raw = await timed(raw_client, rounds)
        await pf.close()
    finally:
        await kc.close()
    server, port = await local_app(b"local")
    try:
        with tether("-R", f"{HTTP_PORT}:{port}", "--steal"):
            client = await Http.connect(service_ip, 80)
            assert await client.get("warm") == b"local"
            await timed(client, 20)
            stolen = await timed(client, rounds)
            client.close()
    finally:
        server.close()
    print(f"latency ({rounds} keep-alive requests each)")
    print(f"  raw port-forward to the pod  p50 {median(raw):7.2f} ms  p99 {pct(raw, 99):7.2f} ms")
    print(
        f"  stolen to the local app      p50 {median(stolen):7.2f} ms"
        f"  p99 {pct(stolen, 99):7.2f} ms"
    )
    print(
        f"  stolen - raw: p50 {median(stolen) - median(raw):+.2f} ms (target <= +1 ms),"
        f" ratio {median(stolen) / median(raw):.2f}x"
    )


async def bench_filtered(service_ip: str, rate: int, seconds: float, conns: int) -> None:
    server, port = await local_app(b"local")
    sent = lost = misrouted = 0
    try:
        with tether("-R", f"{HTTP_PORT}:{port}", "--http-header-filter", "^x-dev: alice$"):
            clients = [await Http.connect(service_ip, 80) for _ in range(conns)]
            per_conn = rate / conns
            deadline = time.monotonic() + seconds

            async def drive(client: Http, offset: int) -> None:
                nonlocal sent, lost, misrouted
                i = offset
                next_at = time.monotonic()
                while time.monotonic() < deadline:
                    mine = i % 2 == 0
                    sent += 1
                    try:
                        body = await asyncio.wait_for(
                            client.get(f"f{i}", b"x-dev: alice\r\n" if mine else b""), 10
                        )
                    except (OSError, TimeoutError, asyncio.IncompleteReadError):
                        lost += 1
                        client = await Http.connect(service_ip, 80)
                    else:
                        if (body == b"local") != mine:
                            misrouted += 1
                    i += 1
                    next_at += 1 / per_conn
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))

            t0 = time.monotonic()
            await asyncio.gather(*(drive(c, k) for k, c in enumerate(clients)))
            elapsed = time.monotonic() - t0
            for c in clients:
                c.close()
    finally:
        server.close()
    print(f"filtered steal, {conns} keep-alive connections, half the requests matching")
    print(
        f"  {sent} requests in {elapsed:.1f} s ({sent / elapsed:.0f} req/s, asked {rate}):"
        f" {lost} lost, {misrouted} misrouted (target: 0 and 0)"
    )


async def bench_mirror(service_ip: str, rounds: int) -> None:
    async def direct() -> list[float]:
        client = await Http.connect(service_ip, 80)
        await timed(client, 20)
        times = await timed(client, rounds)
        client.close()
        return times

    before = await direct()
    server, port = await local_app(b"mirror")
    try:
        with tether("-R", f"{HTTP_PORT}:{port}", "--mirror"):
            mirrored = await direct()
    finally:
        server.close()
    after = await direct()
    base = (median(before) + median(after)) / 2
    print(f"mirror ({rounds} keep-alive requests each)")
    print(f"  without tether  p50 {median(before):.2f} / {median(after):.2f} ms (before/after)")
    print(f"  while mirrored  p50 {median(mirrored):.2f} ms  p99 {pct(mirrored, 99):.2f} ms")
    print(f"  added p50 {median(mirrored) - base:+.2f} ms (target <= +0.5 ms)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=10)
    args = parser.parse_args()
    pod, service_ip = ensure_http_server()
    await bench_latency(pod, service_ip, args.rounds)
    await bench_filtered(service_ip, args.rate, args.seconds, args.connections)
    await bench_mirror(service_ip, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
