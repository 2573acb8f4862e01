"""Remove the agent's iptables chains however the agent exits, even by SIGKILL.

The agent forks before it starts any thread: the child serves, the parent (the guard) only
waits for it and then, from inside the target's network namespace, removes tether's chains.
A SIGKILL of the serving process thus still ends with a cleanup; only killing the guard
itself as well (say, the whole container at the end of its grace period) leaves the chains
behind, and the next agent removes them as stale (their owner is dead).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import NoReturn

from tether.agent.iptables import RedirectError, remove_tether_chains
from tether.agent.netns import enter_netns
from tether.agent.programs import ToolError

PR_SET_PDEATHSIG = 1
_FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def _set_parent_death_signal(sig: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ctypes.c_ulong(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def _exit_code(code: object) -> int:
    """The status `sys.exit(code)` would give."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _serve_child(serve: Callable[[], int], guard_pid: int) -> NoReturn:
    status = 1
    try:
        # If the guard dies, so do we (gracefully: the agent handles SIGTERM and tears down).
        _set_parent_death_signal(signal.SIGTERM)
        if os.getppid() != guard_pid:
            # The guard died before prctl: nobody would clean up after us, and no SIGTERM
            # is coming. Don't start.
            print("tether-agent: the exit guard is gone; not serving", file=sys.stderr)
        else:
            status = _exit_code(serve())
    except SystemExit as e:
        status = _exit_code(e.code)
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    except BaseException as e:
        # A tool's failure says what failed already; anything else is unexpected: its type too.
        what = str(e) if isinstance(e, ToolError) else f"{type(e).__name__}: {e}"
        print(f"tether-agent: {what}".replace("\n", " "), file=sys.stderr)
        status = 1
    _flush_stdio()
    os._exit(status)


def _wait(pid: int) -> int:
    """waitpid(pid) until it exits; its status as a shell would report it (128+signal)."""
    while True:
        try:
            _, status = os.waitpid(pid, 0)
        except InterruptedError:  # only if a signal handler raised; PEP 475 retries otherwise
            continue
        if os.WIFSTOPPED(status) or os.WIFCONTINUED(status):
            continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


def run_guarded(serve: Callable[[], int], netns_path: Path | None) -> int:
    """Run `serve()` in a child process; when it has exited, remove tether's chains from the
    network namespace at `netns_path` and return its exit status (128+N if killed by signal
    N).

    Must be called before any thread or event loop exists: it forks, and the guard enters
    the namespace with setns(2), which applies to a whole process only if it has one thread.
    SIGTERM, SIGINT and SIGHUP sent to the guard are forwarded to the child; if the guard
    dies, the child gets SIGTERM. An exception in `serve` prints one line to stderr and exits
    1. Chains a live process (another agent) owns are not removed. With `netns_path=None`
    (targetless: nothing to redirect) `serve()` runs in this process.

    Raises OSError if the namespace file cannot be opened (the target is gone).
    """
    if netns_path is None:
        return serve()
    # Opened before the fork: it keeps the namespace reachable for the cleanup even when the
    # target (whose /proc entry the path is) has exited meanwhile.
    netns_fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _flush_stdio()  # or the buffered output would be written twice
        guard_pid = os.getpid()
        # Blocked across the fork: a signal arriving meanwhile is forwarded once the guard's
        # handlers are in place, rather than killing the guard without a cleanup.
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
        child = os.fork()
        if child == 0:
            os.close(netns_fd)
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            _serve_child(serve, guard_pid)
        return _guard(child, netns_fd, old_mask)
    finally:
        os.close(netns_fd)


def _guard(child: int, netns_fd: int, old_mask: Iterable[int]) -> int:
    reaped = False

    def forward(signum: int, frame: FrameType | None) -> None:
        # Once reaped, the PID may belong to someone else; and a second SIGTERM during the
        # cleanup must not cut it short.
        if not reaped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    old_handlers = {sig: signal.signal(sig, forward) for sig in _FORWARDED}
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        status = _wait(child)
        reaped = True
        try:
            enter_netns(netns_fd)
            # stale_only: our child is dead (so its chains are stale); chains of another live
            # agent (the reason our child may have failed) stay.
            remove_tether_chains(stale_only=True)
        except (OSError, RedirectError) as e:
            print(f"tether-agent: cleanup after exit failed: {e}", file=sys.stderr)
            if status == 0:
                status = 1
        _flush_stdio()
        return status
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
