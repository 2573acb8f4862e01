"""Find the target container's main process and the paths that lead into its namespaces."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

# How each runtime names a container's cgroup directory (cgroupfs or systemd driver).
# "crio-conmon-<id>.scope" holds CRI-O's monitor, not the container, so it is not listed.
_CGROUP_PREFIXES = ("", "cri-containerd-", "crio-", "docker-", "libpod-", "containerd-")
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class TargetNotFound(LookupError):  # noqa: N818 (the agent protocol's name)
    """No process on this node belongs to the requested container."""


@dataclass(frozen=True)
class Target:
    """The process whose namespaces the agent borrows; `pid=None` means targetless."""

    pid: int | None
    in_pod: bool = False
    """The agent is an ephemeral container sharing the target container's process namespace:
    `pid` is 1 there, and the network namespace is the agent's own."""

    @property
    def root(self) -> Path:
        """The container's root filesystem as seen from the agent (`/` when targetless)."""
        return Path("/") if self.pid is None else Path(f"/proc/{self.pid}/root")

    @property
    def netns_path(self) -> Path | None:
        """The container's network namespace file, or None to stay in the agent's own."""
        return None if self.pid is None else Path(f"/proc/{self.pid}/ns/net")

    @classmethod
    def find(
        cls,
        container_id: str | None,
        proc: Path = Path("/proc"),
        pod_uid: str | None = None,
        *,
        in_pod: bool = False,
        own_pid: int | None = None,
    ) -> Target:
        """The target for `container_id`; else, with `pod_uid`, the pod's sandbox (its
        network namespace, before or without its app containers); else, `in_pod`, the init
        of the container whose process namespace the agent shares; else a targetless one."""
        if in_pod:
            return cls(find_shared_init(proc, os.getpid() if own_pid is None else own_pid), True)
        if container_id is not None:
            return cls(find_container_pid(container_id, proc))
        if pod_uid is not None:
            return cls(find_pod_pid(pod_uid, proc))
        return cls(None)


def find_shared_init(proc: Path, own_pid: int) -> int:
    """PID 1 of the agent's process namespace: the target container's init, when the
    runtime honoured `targetContainerName`. If the agent is PID 1 itself, it was given a
    namespace of its own, and there is no target process to read."""
    if own_pid == 1:
        raise TargetNotFound(
            "the agent got a process namespace of its own: the container runtime does not"
            " support targetContainerName for ephemeral containers (use agent.mode = job)"
        )
    if not (proc / "1").is_dir():
        raise TargetNotFound(f"no process 1 in {proc}: not in the target's process namespace")
    return 1


def same_netns(a: Target, b: Target) -> bool:
    """Whether two targets share a network namespace (the containers of one pod do)."""
    if a.netns_path is None or b.netns_path is None:
        return a.netns_path == b.netns_path
    try:
        return a.netns_path.stat().st_ino == b.netns_path.stat().st_ino
    except OSError:
        return False


def _netns_id(pid: int | str, proc: Path) -> str | None:
    try:
        return str((proc / str(pid) / "ns" / "net").readlink())  # e.g. "net:[4026531840]"
    except OSError:
        return None


def host_network_refusal(target: Target, proc: Path = Path("/proc")) -> str | None:
    """Why the agent must not redirect `target`'s ports, or None if it may.

    The agent runs with hostPID, so PID 1 is the node's init: a target in PID 1's network
    namespace is a hostNetwork pod (or a PID scan gone wrong, such as a runtime's monitor
    process), and rules there would redirect the node's own traffic.
    """
    if target.pid is None or target.in_pod:
        # In the pod, PID 1 is the target, not the node's init: the CLI refuses a
        # hostNetwork target from its pod spec instead.
        return None
    mine, host = _netns_id(target.pid, proc), _netns_id(1, proc)
    if mine is None:
        return f"cannot read the target process's network namespace ({proc}/{target.pid}/ns/net)"
    if mine == host:
        return (
            "the target shares the node's network namespace (a hostNetwork pod): tether does"
            " not redirect the node's own ports; mirror and steal need a pod network target"
        )
    return None


def _bare_id(container_id: str) -> str:
    bare = container_id.rpartition("://")[2]
    if not _ID_RE.fullmatch(bare):
        raise ValueError(f"not a container ID: {container_id!r}")
    return bare


def _matches(cgroup_text: str, names: frozenset[str]) -> bool:
    # One "ID:CONTROLLERS:PATH" line per hierarchy (cgroup(7)). Only "\n" ends a line: a
    # cgroup name may hold any other byte but "/", so a piece of one is no line of its own.
    for line in cgroup_text.split("\n"):
        fields = line.split(":", 2)
        if len(fields) == 3 and not names.isdisjoint(fields[2].split("/")):
            return True
    return False


_UID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def find_pod_pid(pod_uid: str, proc: Path = Path("/proc")) -> int:
    """PID of the pod's first process: its sandbox (the pause container), which holds the
    pod's network namespace from before its app containers start until the pod goes.

    The pod's cgroup is `pod<UID>` (cgroupfs driver) or `kubepods-<qos>-pod<UID with
    underscores>.slice` (systemd driver). Raises TargetNotFound when no process of the pod
    runs here yet, ValueError on a malformed UID."""
    if not _UID_RE.fullmatch(pod_uid):
        raise ValueError(f"not a pod UID: {pod_uid!r}")
    plain = f"pod{pod_uid}"
    slice_end = f"-pod{pod_uid.replace('-', '_')}.slice"
    return _first_process(proc, lambda text: _in_pod(text, plain, slice_end), f"pod {pod_uid}")


def _in_pod(cgroup_text: str, plain: str, slice_end: str) -> bool:
    for line in cgroup_text.split("\n"):
        fields = line.split(":", 2)
        if len(fields) == 3:
            for part in fields[2].split("/"):
                if part == plain or part.endswith(slice_end):
                    return True
    return False


def _start_time(pid_dir: Path) -> int:
    """Field 22 of /proc/PID/stat (clock ticks after boot); huge if unreadable."""
    try:
        # Names in /proc are bytes, not necessarily UTF-8 (a command name can be anything).
        stat = (pid_dir / "stat").read_text(encoding="utf-8", errors="surrogateescape")
        # The command name (field 2) may contain spaces and parentheses: split after the last ")".
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return sys.maxsize


def find_container_pid(container_id: str, proc: Path = Path("/proc")) -> int:
    """PID (in `proc`'s PID namespace) of the main process of the container `container_id`.

    `container_id` is "containerd://ID", "cri-o://ID", "docker://ID" or a bare ID. Every
    process whose /proc/PID/cgroup names the container (cgroup v1 or v2, cgroupfs or systemd
    driver) matches; the container's init is the one started first, lowest PID on a tie. Start
    time rather than PID alone, because PIDs wrap and `kubectl exec` processes join the cgroup.
    Raises TargetNotFound when no process matches, ValueError on a malformed ID.
    """
    bare = _bare_id(container_id)
    names = frozenset(
        name for prefix in _CGROUP_PREFIXES for name in (prefix + bare, f"{prefix}{bare}.scope")
    )
    return _first_process(proc, lambda text: _matches(text, names), f"container {bare}")


def _first_process(proc: Path, belongs: Callable[[str], bool], what: str) -> int:
    """The PID of the earliest started process whose /proc/PID/cgroup text `belongs`."""
    matches: list[tuple[int, int]] = []
    try:
        entries = [int(p.name) for p in proc.iterdir() if p.name.isdigit()]
    except OSError as e:
        raise TargetNotFound(f"cannot list {proc}: {e.strerror}") from e
    for pid in entries:
        pid_dir = proc / str(pid)
        try:
            # Bytes, not text mode: universal newlines would make a "\r" in a name a line end.
            text = (pid_dir / "cgroup").read_bytes().decode("utf-8", "surrogateescape")
        except OSError:  # the process exited while we scanned
            continue
        if belongs(text):
            matches.append((_start_time(pid_dir), pid))
    if not matches:
        raise TargetNotFound(f"no process of {what} on this node")
    return min(matches)[1]


CAP_NET_ADMIN = 12


def capability_refusal(status_text: str) -> str | None:
    """Why this agent cannot redirect the target's ports, from /proc/self/status (pure), or
    None: iptables needs CAP_NET_ADMIN, which an ephemeral agent has only when the cluster
    allows it capabilities (Kubernetes 1.22+ and the namespace's policy)."""
    for line in status_text.splitlines():
        name, _, value = line.partition(":")
        if name == "CapEff":
            try:
                effective = int(value.strip(), 16)
            except ValueError:
                break
            if effective >> CAP_NET_ADMIN & 1:
                return None
            return (
                "the agent has no NET_ADMIN capability, which mirror and steal need (an"
                " ephemeral agent gets it only on Kubernetes 1.22+ where the namespace's"
                " policy allows it: use agent.mode = job, with agent.namespace if needed)"
            )
    return "cannot read the agent's capabilities (CapEff in /proc/self/status)"


def incoming_refusal(target: Target, proc: Path = Path("/proc")) -> str | None:
    """Why mirror and steal cannot work for `target` with this agent, or None if they can."""
    refusal = host_network_refusal(target, proc)
    if refusal is not None:
        return refusal
    try:
        status = (proc / "self" / "status").read_text()
    except OSError:
        status = ""
    return capability_refusal(status)
