"""Measurements taken inside (or outside) `tether exec`; prints one JSON line.

Run by bench/exec_overhead.py both plainly and under `tether exec`, so the same code measures
both sides (children inherit the interception).
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.parse

IMPORTS = "import json, http.client, email"


def python_start_ms(runs: int) -> float:
    """Median wall time of `python3 -c IMPORTS`, in ms."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", IMPORTS], check=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def local_opens_s(count: int) -> float:
    """Seconds for `count` open+close of a local file."""
    path = sys.executable
    t0 = time.perf_counter()
    for _ in range(count):
        os.close(os.open(path, os.O_RDONLY))
    return time.perf_counter() - t0


def requests_per_s(url: str, seconds: float) -> float:
    """Sequential keep-alive GETs per second against `url`."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port or 80, timeout=10)
    done = 0
    deadline = time.perf_counter() + seconds
    t0 = time.perf_counter()
    while time.perf_counter() < deadline:
        conn.request("GET", parts.path or "/")
        conn.getresponse().read()
        done += 1
    return done / (time.perf_counter() - t0)


def main() -> None:
    url = sys.argv[1]
    print(
        json.dumps(
            {
                "python_ms": python_start_ms(9),
                "opens_s": local_opens_s(10000),
                "rps": requests_per_s(url, 3.0),
            }
        )
    )


if __name__ == "__main__":
    main()
