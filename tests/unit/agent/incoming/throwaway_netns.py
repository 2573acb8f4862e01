"""Throwaway network namespaces for the redirect, guard and sockopts tests (root only).

Each is held by an `unshare --net sleep infinity` process: killing it (and closing every
file and socket that refers to the namespace) makes the kernel drop the namespace with its
interfaces and iptables rules.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# TEST-NET-1 (RFC 5737): only ever on a veth pair between two throwaway namespaces.
TARGET_ADDR = "192.0.2.1"
CLIENT_ADDR = "192.0.2.2"


def need_root() -> None:
    """Skip the calling test unless we can create namespaces and run iptables."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, iptables)")


@dataclass
class Netns:
    """A network namespace held by process `pid`."""

    pid: int

    @property
    def path(self) -> Path:
        """The namespace file, for NetnsExecutor and setns."""
        return Path(f"/proc/{self.pid}/ns/net")

    def run(
        self, *argv: str, check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside the namespace."""
        return subprocess.run(
            ["nsenter", f"--net={self.path}", *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def iptables_save(self) -> str:
        """Both backends' `iptables-save` output, concatenated."""
        return "".join(self.run(f"iptables-{b}-save").stdout for b in ("nft", "legacy"))


@contextlib.contextmanager
def throwaway_netns() -> Iterator[Netns]:
    """A fresh network namespace with `lo` up; gone (with its rules) afterwards."""
    proc = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
    try:
        ours = Path("/proc/self/ns/net").readlink()
        deadline = time.monotonic() + 10
        # Until unshare has run, the process is still in our namespace: anything done to
        # "its" namespace then would change the host's.
        while Path(f"/proc/{proc.pid}/ns/net").readlink() == ours:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("unshare --net did not create a namespace")
            time.sleep(0.005)
        ns = Netns(proc.pid)
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def netns_pair() -> Iterator[tuple[Netns, Netns]]:
    """(target, client) namespaces joined by a veth pair: TARGET_ADDR/24 in the target,
    CLIENT_ADDR/24 in the client."""
    with throwaway_netns() as target, throwaway_netns() as client:
        subprocess.run(
            [
                *("ip", "link", "add", "v0", "netns", str(target.pid), "type", "veth"),
                *("peer", "name", "v1", "netns", str(client.pid)),
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        for ns, dev, addr in ((target, "v0", TARGET_ADDR), (client, "v1", CLIENT_ADDR)):
            ns.run("ip", "addr", "add", f"{addr}/24", "dev", dev)
            ns.run("ip", "link", "set", dev, "up")
        yield target, client


def start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rpartition(")")[2].split()[19])
