"""Daemons devcluster starts: PID files that survive a crash, and ending only our own processes.

A PID file records the PID and the process's start time, so a PID that the kernel reused for
somebody else's process after a crash is never signalled.
"""

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from devcluster import layout

# Every component gets these so nothing probes cloud metadata (kubelet 1.20's AWS credential
# provider does at start-up) or reaches out through a proxy: the proxy is a closed loopback port.
_DEAD_PROXY = "http://127.0.0.1:9"
_NO_PROXY = ",".join(
    [
        "127.0.0.1",
        "localhost",
        str(layout.GUARD_NET),
        ".svc",
        ".cluster.local",
        layout.NODE_NAME,
        str(layout.NODE_IP),
    ]
)
SAFE_ENV = {
    "AWS_EC2_METADATA_DISABLED": "true",
    "HTTP_PROXY": _DEAD_PROXY,
    "HTTPS_PROXY": _DEAD_PROXY,
    "http_proxy": _DEAD_PROXY,
    "https_proxy": _DEAD_PROXY,
    "NO_PROXY": _NO_PROXY,
    "no_proxy": _NO_PROXY,
}


def component_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment every cluster component runs with."""
    env = {
        "PATH": f"{layout.K8S_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
    }
    env.update(SAFE_ENV)
    if extra:
        env.update(extra)
    return env


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces and parentheses: fields start after the last ')'.
    return stat.rsplit(")", 1)[1].split()[19]


@dataclass(frozen=True)
class Daemon:
    """One long-running component, identified by name."""

    name: str

    @property
    def pidfile(self) -> Path:
        return layout.PIDS / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return layout.LOGS / f"{self.name}.log"

    def pid(self) -> int | None:
        """The PID if our process is alive (not a zombie, not a reused PID), else None."""
        try:
            pid_s, started = self.pidfile.read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            return None
        if _start_time(pid) != started:
            return None
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return None
        return None if state in ("Z", "X") else pid

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
        """Start the daemon detached (own session, output to its log) and record its PID."""
        layout.LOGS.mkdir(parents=True, exist_ok=True)
        layout.PIDS.mkdir(parents=True, exist_ok=True)
        with open(self.logfile, "ab") as logf:
            logf.write(f"\n=== {time.strftime('%F %T')} {' '.join(argv)}\n".encode())
            logf.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=component_env(env),
                start_new_session=True,
            )
        started = _start_time(proc.pid)
        self.pidfile.write_text(f"{proc.pid} {started}\n")
        return proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; forget the PID file."""
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.pid() is not None and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if self.pid() is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while self.pid() is not None:
                    _reap(pid)
                    time.sleep(0.05)
        else:
            # Exited already: if it was started by this very process, reap the zombie.
            with contextlib.suppress(OSError, ValueError):
                _reap(int(self.pidfile.read_text().split()[0]))
        self.pidfile.unlink(missing_ok=True)

    def log_tail(self, lines: int = 5) -> str:
        """The last lines of the daemon's log, for error messages."""
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return " / ".join(text.strip().splitlines()[-lines:])


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reap(pid: int) -> None:
    # A daemon started by this very process must be reaped, or it lingers as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def pids_of_exe(exe: str) -> list[int]:
    """PIDs of processes running the binary `exe` (used for containerd's shims)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if str((entry / "exe").readlink()) == exe:
                found.append(int(entry.name))
        except OSError:
            continue
    return found
