"""Redirect a target port's TCP connections to an agent listener with iptables `nat` rules in
the target's network namespace.

Layout (table `nat`, IPv4 only):

    PREROUTING (first rule)  -j TETHER-PREROUTING
    OUTPUT     (first rule)  -j TETHER-OUTPUT
    TETHER-PREROUTING        -p tcp --dport P -j REDIRECT --to-ports A     (clients from outside)
    TETHER-OUTPUT            -m mark --mark BYPASS_MARK -j RETURN          (the agent itself)
                             -o lo -p tcp --dport P -j REDIRECT --to-ports A  (in-pod clients)

Every rule and jump carries the comment "tether agent pid=<pid> start=<starttime>" naming the
agent process that owns them, so a later agent can tell a live owner (refuse) from a dead one
(remove its leftovers). PIDs are the agent's, which runs with hostPID, so every agent on the
node sees the same PID namespace.

IPv6 is not redirected: clients that reach the port over IPv6 still reach the application.
(ip6tables would need its own chains and the agent a second, IPv6 listener.)

The functions that run commands are synchronous and act on the network namespace of the
calling thread; `Redirector` runs them in a `NetnsExecutor` worker, the exit guard in a
process that has entered the target's namespace.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from tether.agent.netns import NetnsExecutor
from tether.agent.programs import (
    IPTABLES_BACKENDS,
    ToolError,
    find_tool,
    iptables_restore,
    iptables_save,
    run_tool,
)

# An iptables (or ss) command failed, or another live agent owns the redirection.
RedirectError = ToolError

log = logging.getLogger(__name__)

#: SO_MARK the agent sets on its own connections to the original application, so that
#: TETHER-OUTPUT lets them through instead of redirecting them back to the agent.
BYPASS_MARK = 0x7E7E

CHAIN_PREFIX = "TETHER-"
PREROUTING_CHAIN = "TETHER-PREROUTING"
OUTPUT_CHAIN = "TETHER-OUTPUT"
_OUR_CHAINS = (PREROUTING_CHAIN, OUTPUT_CHAIN)
_JUMPS = (("PREROUTING", PREROUTING_CHAIN), ("OUTPUT", OUTPUT_CHAIN))

#: iptables backends, in the order of preference when nothing else decides (Debian's default
#: first).
BACKENDS = IPTABLES_BACKENDS

_BUILTIN_CHAINS = frozenset({"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"})
_OWNER_RE = re.compile(r"tether agent pid=(\d+) start=(\d+)")
_TARGET_RE = re.compile(r"(?:^|\s)-[jg]\s+(\S+)")


Owner = tuple[int, int]  # (pid, start time in clock ticks after boot)


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot), or None if there is no such process.

    Together with the PID it names a process for good: PIDs are reused, (PID, start) is not.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # The command name (field 2) may contain spaces and parentheses: split after the last ")".
        return int(stat.rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _comment(owner: Owner) -> str:
    return f"tether agent pid={owner[0]} start={owner[1]}"


def _alive(owner: Owner) -> bool:
    return process_start_time(owner[0]) == owner[1]


# -- running iptables ------------------------------------------------------------------------


def available_backends() -> list[str]:
    """The backends whose `iptables-<backend>-save` and `-restore` are installed."""
    return [
        b
        for b in BACKENDS
        if find_tool(iptables_save(b)) is not None and find_tool(iptables_restore(b)) is not None
    ]


def _save(backend: str) -> str:
    # Without -t: legacy iptables would instantiate a table it is asked to dump, which would
    # make it look "in use" to the next agent (and to the target's own tooling).
    exe = find_tool(iptables_save(backend)) or iptables_save(backend)
    return run_tool([exe], what=f"reading the {backend} iptables rules")


def _restore(backend: str, script: str, what: str) -> None:
    exe = find_tool(iptables_restore(backend)) or iptables_restore(backend)
    run_tool([exe, "-w", "5", "--noflush"], stdin=script, what=what)


# -- parsing iptables-save -------------------------------------------------------------------


@dataclass
class _Ruleset:
    """What one backend's `iptables-save` says about a network namespace."""

    in_use: bool = False  # any rule or user-defined chain, in any table
    chains: list[str] = field(default_factory=list)  # tether's chains in `nat`
    jumps: list[str] = field(default_factory=list)  # "-A X ... -j TETHER-..." outside them
    owners: set[Owner] = field(default_factory=set)

    @property
    def has_tether(self) -> bool:
        return bool(self.chains or self.jumps)


def _parse(save: str) -> _Ruleset:
    rs = _Ruleset()
    table = ""
    for raw in save.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if chain not in _BUILTIN_CHAINS:
                rs.in_use = True
            if table == "nat" and chain.startswith(CHAIN_PREFIX):
                rs.chains.append(chain)
        elif line.startswith("-A "):
            rs.in_use = True
            if table != "nat":
                continue
            chain = line.split()[1]
            target = _TARGET_RE.search(line)
            if chain.startswith(CHAIN_PREFIX):
                pass
            elif target is not None and target.group(1).startswith(CHAIN_PREFIX):
                rs.jumps.append(line)
            else:
                continue
            rs.owners.update((int(p), int(s)) for p, s in _OWNER_RE.findall(line))
    return rs


def _inspect(backend: str) -> _Ruleset:
    return _parse(_save(backend))


def _choose_backend(rulesets: dict[str, _Ruleset]) -> str:
    """The backend the namespace already uses (the rules are in `Redirector.setup`'s docs)."""
    if len(rulesets) == 1:
        return next(iter(rulesets))
    used = [b for b in BACKENDS if b in rulesets and rulesets[b].in_use]
    if len(used) == 1:
        return used[0]
    if len(used) > 1:
        with_tether = [b for b in used if rulesets[b].has_tether]
        if len(with_tether) == 1:
            return with_tether[0]
    return BACKENDS[0]


# -- iptables-restore scripts ----------------------------------------------------------------


def _removal_lines(rs: _Ruleset, keep: tuple[str, ...] = ()) -> list[str]:
    """Commands deleting the jumps and chains in `rs`; the chains in `keep` stay (flushed by
    their re-declaration in the same script)."""
    lines = ["-D " + jump[3:] for jump in rs.jumps]
    extra = [c for c in rs.chains if c not in keep]
    # Flush all first: tether's chains may jump to one another.
    lines += [f"-F {c}" for c in extra]
    lines += [f"-X {c}" for c in extra]
    return lines


def _chain_rules(comment: str, ports: dict[int, int]) -> list[str]:
    cm = f'-m comment --comment "{comment}"'
    lines = [f"-A {OUTPUT_CHAIN} -m mark --mark {BYPASS_MARK:#x} {cm} -j RETURN"]
    # Only SYNs: a pod netns usually tracks no connections until our nat table appears, so
    # conntrack then picks up the app's open connections mid-stream as "new" ones and, without
    # --syn, would redirect their next packet to our listener, which resets them. With it,
    # they keep going to the app (resetting them stays a choice: reset_connections).
    for port, to_port in sorted(ports.items()):
        match = f"-p tcp --syn --dport {port} {cm}"
        lines.append(f"-A {PREROUTING_CHAIN} {match} -j REDIRECT --to-ports {to_port}")
        lines.append(f"-A {OUTPUT_CHAIN} -o lo {match} -j REDIRECT --to-ports {to_port}")
    return lines


def _script(lines: list[str]) -> str:
    return "\n".join(["*nat", *lines, "COMMIT", ""])


def _declare_ours() -> list[str]:
    # With --noflush, declaring a user-defined chain creates it or, if it exists, flushes it:
    # both backends, so a chain's contents are replaced atomically with the whole script.
    return [f":{chain} - [0:0]" for chain in _OUR_CHAINS]


def _setup_script(old: _Ruleset, comment: str, ports: dict[int, int]) -> str:
    cm = f'-m comment --comment "{comment}"'
    lines = _declare_ours()
    lines += _removal_lines(old, keep=_OUR_CHAINS)
    lines += _chain_rules(comment, ports)
    lines += [f"-I {builtin} 1 {cm} -j {chain}" for builtin, chain in _JUMPS]
    return _script(lines)


def _teardown_script(comment: str) -> str:
    cm = f'-m comment --comment "{comment}"'
    lines = [f"-D {builtin} {cm} -j {chain}" for builtin, chain in _JUMPS]
    lines += [f"-F {chain}" for chain in _OUR_CHAINS]
    lines += [f"-X {chain}" for chain in _OUR_CHAINS]
    return _script(lines)


def _remove_chains(backend: str, stale_only: bool, me: Owner | None) -> bool:
    """Remove tether's jumps and chains of `backend` from the calling thread's namespace.

    With `stale_only`, chains that a live process other than `me` owns stay. True if
    something was removed. Retries once: the rules may change between reading and deleting.
    """
    for attempt in (1, 2):
        rs = _inspect(backend)
        if not rs.has_tether:
            return False
        live = {owner for owner in rs.owners if owner != me and _alive(owner)}
        if stale_only and live:
            pids = ", ".join(str(pid) for pid, _ in sorted(live))
            log.info("leaving the tether chains (%s) of live agent pid %s alone", backend, pids)
            return False
        try:
            _restore(
                backend,
                _script(_removal_lines(rs)),
                f"removing the tether chains ({backend})",
            )
        except RedirectError:
            if attempt == 2:
                raise
            continue
        return True
    return False  # pragma: no cover (the loop returns or raises)


def remove_tether_chains(backend: str | None = None, *, stale_only: bool = False) -> None:
    """Remove tether's jumps and chains from the CURRENT network namespace.

    `backend` is "nft" or "legacy"; None means each installed one. Idempotent: nothing to
    remove is fine. With `stale_only`, chains that a live process owns (per their comment)
    are kept: the exit guard uses it so that it never removes another agent's redirection
    (say, the one that made our agent's setup fail). Raises RedirectError if a removal failed
    (after trying every backend).
    """
    backends = [backend] if backend is not None else available_backends()
    errors: list[str] = []
    for b in backends:
        try:
            if _remove_chains(b, stale_only, None):
                log.info("removed the tether chains (%s)", b)
        except RedirectError as e:
            errors.append(str(e))
    if errors:
        raise RedirectError("; ".join(errors))


def _inspect_safely(backend: str) -> _Ruleset | str:
    try:
        return _inspect(backend)
    except RedirectError as e:
        return str(e)


# -- the redirector --------------------------------------------------------------------------


class Redirector:
    """Owns tether's chains in the network namespace of `executor`.

    `owner_pid` (default: this process) is the PID written into the rule comments: the
    process whose death makes the chains stale; None means this process, looked up when the
    Redirector is made (not at import: the agent imports this before it forks). The async
    methods serialize on an internal lock.
    """

    def __init__(self, executor: NetnsExecutor, owner_pid: int | None = None) -> None:
        self._executor = executor
        pid = os.getpid() if owner_pid is None else owner_pid
        start = process_start_time(pid)
        if start is None:
            raise RedirectError(f"no process {pid} to own the port redirection")
        self._owner: Owner = (pid, start)
        self._comment = _comment(self._owner)
        self._backend: str | None = None
        self._ports: dict[int, int] = {}
        self._lock = asyncio.Lock()

    @property
    def backend(self) -> str | None:
        """The backend in use, "nft" or "legacy", once set up; else None."""
        return self._backend

    @property
    def ports(self) -> dict[int, int]:
        """The redirected ports: target port -> agent listener port (a copy)."""
        return dict(self._ports)

    @property
    def comment(self) -> str:
        """The comment on every rule of ours."""
        return self._comment

    async def setup(self) -> None:
        """Pick the backend the namespace already uses, clear stale tether chains, and create
        ours (empty but for the bypass rule) with their jumps.

        Backend: the one of `iptables-legacy-save` / `iptables-nft-save` that shows any rule
        or user-defined chain; if both do, the one holding tether chains, else nft; if
        neither, nft. Raises RedirectError if a live agent other than the owner already has
        chains there, or if iptables fails. Does nothing if already set up.
        """
        async with self._lock:
            if self._backend is not None:
                return
            backends = available_backends()
            if not backends:
                raise RedirectError("cannot redirect ports: iptables is not installed")
            found = await asyncio.gather(
                *(self._executor.run(_inspect_safely, b) for b in backends)
            )
            rulesets = {
                b: rs for b, rs in zip(backends, found, strict=True) if not isinstance(rs, str)
            }
            if not rulesets:
                raise RedirectError("; ".join(str(rs) for rs in found))
            self._check_owners(rulesets)
            backend = _choose_backend(rulesets)
            for other, rs in rulesets.items():
                if other != backend and rs.has_tether:
                    self._log_stale(other, rs)
                    await self._executor.run(_remove_chains, other, True, self._owner)
            rs = rulesets[backend]
            if rs.has_tether:
                self._log_stale(backend, rs)
            try:
                await self._executor.run(
                    _restore,
                    backend,
                    _setup_script(rs, self._comment, {}),
                    f"creating the tether chains ({backend})",
                )
            except RedirectError:
                # The rules changed between reading and writing them (another agent?): once
                # more from a fresh read, which also re-checks the owner.
                rs = await self._executor.run(_inspect, backend)
                self._check_owners({backend: rs})
                await self._executor.run(
                    _restore,
                    backend,
                    _setup_script(rs, self._comment, {}),
                    f"creating the tether chains ({backend})",
                )
            self._backend = backend
            self._ports = {}
            log.info("port redirection set up (iptables-%s)", backend)

    def _check_owners(self, rulesets: dict[str, _Ruleset]) -> None:
        for backend, rs in rulesets.items():
            live = sorted(o for o in rs.owners if o != self._owner and _alive(o))
            if live:
                pids = ", ".join(str(pid) for pid, _ in live)
                raise RedirectError(
                    f"another tether agent (pid {pids}) is redirecting ports of this pod "
                    f"(iptables-{backend} chains {', '.join(rs.chains) or '?'})"
                )

    def _log_stale(self, backend: str, rs: _Ruleset) -> None:
        if rs.owners and rs.owners <= {self._owner}:
            return  # our own, from an earlier setup without teardown: just replaced
        who = ", ".join(f"pid {pid}" for pid, _ in sorted(rs.owners)) or "an unknown agent"
        log.warning(
            "removing stale tether chains (iptables-%s) left by %s, which is gone",
            backend,
            who,
        )

    async def _sync(self, ports: dict[int, int], what: str) -> None:
        if self._backend is None:
            raise RedirectError(f"{what}: port redirection is not set up")
        script = _script(_declare_ours() + _chain_rules(self._comment, ports))
        await self._executor.run(_restore, self._backend, script, what)
        self._ports = ports

    async def add(self, port: int, to_port: int) -> None:
        """Redirect TCP connections to `port` (from outside the pod, and in-pod ones over
        loopback) to `to_port` in the same namespace; replaces an earlier redirect of `port`.
        Atomic: one iptables-restore rewrites both chains."""
        for p in (port, to_port):
            if not 0 < p < 65536:
                raise ValueError(f"not a TCP port: {p}")
        async with self._lock:
            if self._ports.get(port) == to_port:
                return
            await self._sync(
                {**self._ports, port: to_port}, f"redirecting port {port} to {to_port}"
            )

    async def remove(self, port: int) -> None:
        """Stop redirecting `port` (nothing to do if it is not redirected)."""
        async with self._lock:
            if port not in self._ports or self._backend is None:
                return
            ports = {p: a for p, a in self._ports.items() if p != port}
            await self._sync(ports, f"ending the redirect of port {port}")

    async def teardown(self) -> None:
        """Remove our jumps and chains. Idempotent; chains already gone are fine, and chains
        that a live other agent took over stay. Raises RedirectError only if iptables fails
        to remove what is there."""
        async with self._lock:
            backend = self._backend
            if backend is None:
                return
            try:
                # The common case in one process: everything is as we left it.
                await self._executor.run(
                    _restore,
                    backend,
                    _teardown_script(self._comment),
                    f"removing the tether chains ({backend})",
                )
            except RedirectError:
                await self._executor.run(_remove_chains, backend, True, self._owner)
            self._backend = None
            self._ports = {}
            log.info("port redirection torn down (iptables-%s)", backend)
