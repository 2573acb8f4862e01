"""Running external commands with readable failures."""

import logging
import subprocess
from collections.abc import Mapping, Sequence

from devcluster.errors import DevclusterError

log = logging.getLogger("devcluster")


def run(
    cmd: Sequence[str],
    *,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run `cmd`, capturing output; raise DevclusterError with its stderr tail on failure."""
    log.debug("$ %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            list(cmd),
            capture_output=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            input=input,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError as exc:
        raise DevclusterError(f"{cmd[0]} is not installed") from exc
    except subprocess.TimeoutExpired as exc:
        raise DevclusterError(f"{' '.join(cmd[:3])} did not finish in {timeout} s") from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).decode(errors="replace").strip().splitlines()[-3:]
        raise DevclusterError(f"{' '.join(cmd[:4])} failed: {' / '.join(tail)}")
    return proc


def out(cmd: Sequence[str], *, check: bool = True) -> str:
    """Run `cmd` and return its stdout as text."""
    return run(cmd, check=check).stdout.decode()
