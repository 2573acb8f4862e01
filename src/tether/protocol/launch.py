"""How the agent is started and how it says it is ready: the one definition both ends use.

The CLI (tether.kube) writes the agent container's command, arguments and environment from
here, and the agent (tether.agent) parses them with the same names and defaults, so the two
cannot drift apart.
"""

import argparse
import re
from collections.abc import Sequence
from dataclasses import dataclass

COMMAND = ("python3", "-m", "tether.agent")
DEFAULT_PORT = 47047
DEFAULT_IDLE_TIMEOUT = 30.0
# The session secret, hex-encoded, as an environment variable (from a Secret: secretKeyRef).
SECRET_ENV = "TETHER_SECRET"
# Instead of the secret, its SHA-256 (hex): an ephemeral agent's environment is in the pod's
# spec, where anyone who may get pods would read the secret itself.
SECRET_DIGEST_ENV = "TETHER_SECRET_SHA256"
MIN_SECRET_BYTES = 16

_READY = "tether-agent ready port={port} version={version}"
READY_RE = re.compile(r"^tether-agent ready port=(\d+) version=(\S+)$", re.MULTILINE)


@dataclass(frozen=True)
class AgentArgs:
    """The agent's command-line arguments."""

    port: int = DEFAULT_PORT
    """Port to listen on (0: any free port)."""
    listen: str = "127.0.0.1"
    """Address to listen on: loopback, reachable only through port-forward."""
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    """Seconds to keep running after the last session left."""
    container_id: str | None = None
    """The target container ("containerd://ID"); None for a targetless agent."""
    pod_uid: str | None = None
    """Without a container: the target pod, whose sandbox (network namespace) the agent
    waits for (an agent for incoming traffic only, started before the pod's app runs)."""
    in_pod: bool = False
    """An ephemeral container in the target's pod, sharing its container's process namespace
    (`targetContainerName`): the target is PID 1, the network namespace the agent's own."""

    def to_argv(self) -> list[str]:
        """The arguments that `parse_agent_args` reads back as this."""
        argv = ["--port", str(self.port), "--idle-timeout", format(self.idle_timeout, "g")]
        if self.listen != AgentArgs.listen:
            argv += ["--listen", self.listen]
        if self.container_id is not None:
            argv += ["--container-id", self.container_id]
        if self.pod_uid is not None:
            argv += ["--pod-uid", self.pod_uid]
        if self.in_pod:
            argv.append("--in-pod")
        return argv


def parse_agent_args(argv: Sequence[str] | None = None) -> AgentArgs:
    """Parse the agent's arguments; argparse's usage error (exit status 2) on bad input."""
    parser = argparse.ArgumentParser(prog="tether-agent")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--listen", default=AgentArgs.listen)
    parser.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT)
    parser.add_argument("--container-id", default=None, help="the target (omit for targetless)")
    parser.add_argument("--pod-uid", default=None, help="without a container: the pod")
    parser.add_argument(
        "--in-pod", action="store_true", help="an ephemeral container: the target is PID 1"
    )
    ns = parser.parse_args(None if argv is None else list(argv))
    return AgentArgs(ns.port, ns.listen, ns.idle_timeout, ns.container_id, ns.pod_uid, ns.in_pod)


def ready_line(port: int, version: str) -> str:
    """The line the agent prints once it listens; the CLI waits for it in the pod's log."""
    return _READY.format(port=port, version=version)


def parse_ready(log: str) -> tuple[int, str] | None:
    """(port, version) of the first ready line in `log`, or None."""
    match = READY_RE.search(log)
    return (int(match.group(1)), match.group(2)) if match else None
