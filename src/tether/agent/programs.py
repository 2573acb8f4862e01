"""Every program the agent runs, in one place, and how it runs them.

The agent image must hold each of them (its Debian packages are declared in
agent-image/debian-packages.txt); tests/e2e/test_agent_image.py checks that the image the tests
deploy does, so a program added here without its package fails there, not on a user's cluster.
"""

import os
import shutil
import subprocess
from pathlib import Path

_TIMEOUT = 30.0
# Where iptables looks for extra binaries when PATH (e.g. a non-root user's) lacks sbin.
_SBIN = "/usr/local/sbin:/usr/sbin:/sbin"


class ToolError(Exception):
    """A program the agent runs is missing, timed out or failed (for iptables also: another
    live agent owns the redirection); one line, ending with the tail of its stderr if any."""


def find_tool(name: str) -> str | None:
    """The path of program `name` on PATH or in the sbin directories, or None."""
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{_SBIN}")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Legacy iptables refuses to run when it cannot open its lock file, /run/xtables.lock by
    # default, and the agent image has no /run. The lock only serializes iptables runs that
    # share our mount namespace (nobody else's), so a lock file elsewhere loses nothing.
    if "XTABLES_LOCKFILE" not in env and not Path("/run").is_dir():
        env["XTABLES_LOCKFILE"] = "/tmp/tether-xtables.lock"
    env["LC_ALL"] = "C"
    return env


def _stderr_tail(stderr: str, limit: int = 300) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # iptables ends its errors with a generic "Try `iptables -h'" hint: the cause is above it.
    lines = [line for line in lines if not line.startswith("Try `")]
    tail = "; ".join(lines[-2:])
    return tail if len(tail) <= limit else "..." + tail[-limit:]


def run_tool(argv: list[str], stdin: str | None = None, what: str | None = None) -> str:
    """Run `argv` (in the calling thread's network namespace) and return its stdout.

    Raises ToolError when the program is missing, times out or exits non-zero; `what`
    names the action in the message.
    """
    action = what or argv[0]
    try:
        proc = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_TIMEOUT,
            env=_env(),
        )
    except FileNotFoundError:
        raise ToolError(f"{action}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ToolError(f"{action}: {argv[0]} did not finish in {_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise ToolError(f"{action}: cannot run {argv[0]}: {e.strerror}") from None
    if proc.returncode != 0:
        tail = _stderr_tail(proc.stderr)
        raise ToolError(
            f"{action}: {Path(argv[0]).name} exited with status {proc.returncode}"
            + (f": {tail}" if tail else "")
        )
    return proc.stdout


# The agent writes its rules with the iptables backend its target already uses.
IPTABLES_BACKENDS = ("nft", "legacy")

# Resets the app's open connections to a port when a steal starts (`ss -K`).
SS = "ss"


def iptables_save(backend: str) -> str:
    """The `iptables-save` of one backend."""
    return f"iptables-{backend}-save"


def iptables_restore(backend: str) -> str:
    """The `iptables-restore` of one backend."""
    return f"iptables-{backend}-restore"


REQUIRED = (
    SS,
    *(tool(b) for b in IPTABLES_BACKENDS for tool in (iptables_save, iptables_restore)),
)
