"""Resilience benchmark: a `tether port-forward -L` session to the bench pod across API-server
restarts (`devcluster restart apiserver`, which cuts every port-forward as real restarts do).

One keep-alive ECHO connection through the session sends a numbered line every 50 ms the
whole time; each cut is timed from the API server answering again to the first echo that
comes back after it. Prints, over N cuts: the resume time (p50, max), echo requests failed
(the connection broke or an answer was wrong) and bytes lost or duplicated (every line is
checked against what was sent). Targets (issue 12): resume p50 <= 2 s, 0 failed, 0 lost.

Its tunnel cost (sequence numbers, acknowledgements, retransmit buffers) is `bench.tunnel`'s
to show, run against the agent image before and after.

Run: .venv/bin/python -m bench.resilience [--cuts 5]   (devcluster up first)
"""

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import Conn, ensure_bench_server, free_port, median, tether_forward

DEVCLUSTER = Path(sys.executable).with_name("devcluster")
INTERVAL = 0.05


class Echoer:
    """Numbered lines on one connection, each answer checked; records when answers came."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.sent = 0
        self.ok = 0
        self.failed = 0
        self.wrong = 0
        self.answered_at: list[float] = []
        self.answered = asyncio.Event()
        self.stopped = False

    async def run(self) -> None:
        assert await self.conn.readline() == b"hi"
        await self.conn.write(b"ECHO\n")
        while not self.stopped:
            line = b"line %08d\n" % self.sent
            self.sent += 1
            try:
                await self.conn.write(line)
                answer = await asyncio.wait_for(self.conn.readline(), 180)
            except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError):
                self.failed += 1
                self.answered.set()
                return
            if answer + b"\n" != line:
                self.wrong += 1
            else:
                self.ok += 1
            self.answered_at.append(time.monotonic())
            self.answered.set()
            await asyncio.sleep(INTERVAL)
        self.answered.set()


def restart_apiserver() -> float:
    """Restart the API server; the time it answered again (monotonic)."""
    subprocess.run(
        [str(DEVCLUSTER), "restart", "apiserver", "--grace", "1"], check=True, capture_output=True
    )
    return time.monotonic()


async def measure(cuts: int) -> None:
    pod = ensure_bench_server()
    port = free_port()
    with tether_forward(pod, port):
        echo = Echoer(await Conn.local(port))
        task = asyncio.ensure_future(echo.run())
        await asyncio.sleep(2)
        resumes: list[float] = []
        for cut in range(cuts):
            back = await asyncio.to_thread(restart_apiserver)
            while not [t for t in echo.answered_at if t > back] and not task.done():
                echo.answered.clear()
                await echo.answered.wait()
            if task.done():
                print(f"cut {cut + 1}: the echo connection broke", flush=True)
                break
            first = next(t for t in echo.answered_at if t > back)
            resumes.append(first - back)
            print(f"cut {cut + 1}: resumed {first - back:.2f} s after the API server", flush=True)
            await asyncio.sleep(3)
        echo.stopped = True
        await asyncio.wait_for(task, 10)
        await echo.conn.close()
    lost = echo.sent - echo.ok - echo.wrong - echo.failed
    print(f"cuts: {len(resumes)} of {cuts}")
    if resumes:
        print(
            f"resume after the API server answers: p50 {median(resumes):.2f} s, "
            f"max {max(resumes):.2f} s (target p50 <= 2 s)"
        )
    print(
        f"echo requests: {echo.sent} sent, {echo.ok} answered right, {echo.failed} failed, "
        f"{echo.wrong} wrong answers, {max(0, lost - 1)} unanswered (target 0 failed, 0 wrong)"
    )


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cuts", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    asyncio.run(measure(args.cuts))


if __name__ == "__main__":
    main()
