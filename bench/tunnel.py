"""Tunnel benchmark: `tether port-forward -L` against a raw API-server port-forward to the same
pod, side by side in one run. Prints small-request latency (p50/p99), bulk throughput both
ways, and the agent's and CLI's RSS while relaying 100 concurrent streams.

Targets (issue 3): throughput >= 0.8x raw, added p50 <= 0.3 ms, agent RSS <= 40 MB,
CLI RSS <= 80 MB.   Run: .venv/bin/python bench/tunnel.py  (devcluster up first)
"""

import argparse
import asyncio
import time

from bench.common import (
    Conn,
    agent_pods,
    container_pid,
    ensure_bench_server,
    free_port,
    kube,
    median,
    pct,
    raw_stream,
    rss_mb,
    tether_forward,
)


async def latency(conn: Conn, rounds: int) -> list[float]:
    """Round-trip times (ms) of small echoed lines on one open connection."""
    assert await conn.readline() == b"hi"
    await conn.write(b"ECHO\n")
    times = []
    for i in range(rounds):
        t0 = time.perf_counter()
        await conn.write(b"ping %d\n" % i)
        await conn.readline()
        times.append((time.perf_counter() - t0) * 1000)
    return times


async def download(conn: Conn, size: int) -> float:
    """MB/s receiving `size` bytes."""
    assert await conn.readline() == b"hi"
    t0 = time.perf_counter()
    await conn.write(b"BULK %d\n" % size)
    await conn.readexactly(size)
    return size / (time.perf_counter() - t0) / 1e6


async def upload(conn: Conn, size: int) -> float:
    """MB/s sending `size` bytes."""
    assert await conn.readline() == b"hi"
    chunk = b"u" * 65536
    t0 = time.perf_counter()
    await conn.write(b"SINK %d\n" % size)
    sent = 0
    while sent < size:
        part = chunk[: min(len(chunk), size - sent)]
        await conn.write(part)
        sent += len(part)
    assert await conn.readline() == b"ok"
    return size / (time.perf_counter() - t0) / 1e6


async def concurrent_streams(port: int, count: int, seconds: float) -> int:
    """Keep `count` connections echoing for `seconds`; return the round trips done."""
    conns = [await Conn.local(port) for _ in range(count)]
    done = 0

    async def one(conn: Conn) -> None:
        nonlocal done
        assert await conn.readline() == b"hi"
        await conn.write(b"ECHO\n")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await conn.write(b"x" * 1000 + b"\n")
            await conn.readline()
            done += 1

    await asyncio.gather(*(one(c) for c in conns))
    for c in conns:
        await c.close()
    return done


async def main(rounds: int, size_mb: int, repeats: int) -> None:
    pod = ensure_bench_server()
    port = free_port()
    size = size_mb * 1024 * 1024
    kc = await kube()
    with tether_forward(pod, port) as proc:

        async def connect(path: str) -> Conn:
            return Conn(pf=await raw_stream(kc, pod)) if path == "raw" else await Conn.local(port)

        lat: dict[str, list[float]] = {"raw": [], "tether": []}
        down: dict[str, list[float]] = {"raw": [], "tether": []}
        up: dict[str, list[float]] = {"raw": [], "tether": []}
        for _ in range(repeats):
            # Interleave the two paths so machine noise hits both alike.
            for path in ("raw", "tether"):
                conn = await connect(path)
                lat[path].extend(await latency(conn, rounds))
                await conn.close()
                conn = await connect(path)
                down[path].append(await download(conn, size))
                await conn.close()
                conn = await connect(path)
                up[path].append(await upload(conn, size))
                await conn.close()
        raw_lat, tet_lat = lat["raw"], lat["tether"]
        raw_down, tet_down, raw_up, tet_up = down["raw"], down["tether"], up["raw"], up["tether"]

        agent = agent_pods()[0]
        agent_pid = container_pid("tether-bench", agent)
        rss_before = rss_mb(agent_pid)
        task = asyncio.create_task(concurrent_streams(port, 100, 3.0))
        peak_agent, peak_cli = 0.0, 0.0
        while not task.done():
            peak_agent = max(peak_agent, rss_mb(agent_pid))
            peak_cli = max(peak_cli, rss_mb(proc.pid))
            await asyncio.sleep(0.1)
        trips = await task
    await kc.close()

    p50r, p50t = median(raw_lat), median(tet_lat)
    print(f"small request latency over {len(raw_lat)} round trips per path:")
    print(f"  raw port-forward   p50 {p50r:.3f} ms  p99 {pct(raw_lat, 99):.3f} ms")
    print(f"  tether -L          p50 {p50t:.3f} ms  p99 {pct(tet_lat, 99):.3f} ms")
    print(f"  added p50 {p50t - p50r:+.3f} ms (target <= 0.3 ms)")
    print(f"bulk {size_mb} MiB, median of {repeats}:")
    print(
        f"  download raw {median(raw_down):.0f} MB/s  tether {median(tet_down):.0f} MB/s  "
        f"ratio {median(tet_down) / median(raw_down):.2f}x (target >= 0.8x)"
    )
    print(
        f"  upload   raw {median(raw_up):.0f} MB/s  tether {median(tet_up):.0f} MB/s  "
        f"ratio {median(tet_up) / median(raw_up):.2f}x (target >= 0.8x)"
    )
    print(f"memory while relaying 100 concurrent streams ({trips} round trips in 3 s):")
    print(f"  agent RSS {rss_before:.1f} MB idle, peak {peak_agent:.1f} MB (target <= 40 MB)")
    print(f"  CLI RSS peak {peak_cli:.1f} MB (target <= 80 MB)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("--size-mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    asyncio.run(main(a.rounds, a.size_mb, a.repeats))
