"""Tests for tether.agent.guard: the agent's chains go away however its serving
process ends (root only: namespaces and iptables).

run_guarded forks, which the test process (with its threads) must not do: each test runs it
in a fresh Python process.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.agent.incoming.throwaway_netns import Netns, need_root, throwaway_netns
from tether.agent.guard import run_guarded
from tether.agent.iptables import Redirector
from tether.agent.netns import NetnsExecutor

pytestmark = pytest.mark.root

TIMEOUT = 10.0

GUARDED = """
import asyncio, signal, sys
from pathlib import Path
from tether.agent.guard import run_guarded
from tether.agent.iptables import Redirector
from tether.agent.netns import NetnsExecutor

netns, mode = Path(sys.argv[1]), sys.argv[2]

async def main() -> int:
    executor = NetnsExecutor(netns)
    redirector = Redirector(executor)
    await redirector.setup()
    await redirector.add(8080, 9090)
    stop = asyncio.Event()
    # Like the agent: SIGTERM ends serving, but here without a teardown of our own, so that
    # the chains are left for the guard.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    return 7

def serve() -> int:
    if mode == "raise":
        raise ValueError("boom\\nsecond line")
    return asyncio.run(main())

sys.exit(run_guarded(serve, netns))
"""


@pytest.fixture
def ns() -> Iterator[Netns]:
    need_root()
    with throwaway_netns() as n:
        yield n


def _start(ns: Netns, mode: str = "serve") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", GUARDED, str(ns.path), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[4],
    )


def _wait_ready(guard: subprocess.Popen[str]) -> None:
    assert guard.stdout is not None
    ready, _, _ = select.select([guard.stdout], [], [], TIMEOUT)
    line = guard.stdout.readline() if ready else ""
    if line != "ready\n":
        guard.kill()
        _, err = guard.communicate()
        pytest.fail(f"guarded agent did not get ready: {line!r} {err}")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def _sleeper() -> subprocess.Popen[bytes]:
    """A live process to name as another agent."""
    return subprocess.Popen(["sleep", "60"])


@pytest.fixture
def guards() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for guard in started:
            # Its child first: with the guard gone it would only get a SIGTERM.
            for child in _children(guard.pid):
                os.kill(child, signal.SIGKILL)
            guard.kill()
            guard.communicate()


def test_sigkill_of_the_server_still_removes_the_chains(
    ns: Netns, guards: list[subprocess.Popen[str]]
) -> None:
    guard = _start(ns)
    guards.append(guard)
    _wait_ready(guard)
    assert "--dport 8080" in ns.iptables_save()
    (child,) = _children(guard.pid)
    os.kill(child, signal.SIGKILL)
    assert guard.wait(TIMEOUT) == 128 + signal.SIGKILL
    assert "TETHER" not in ns.iptables_save()


def test_sigterm_is_forwarded_and_the_chains_removed(
    ns: Netns, guards: list[subprocess.Popen[str]]
) -> None:
    guard = _start(ns)
    guards.append(guard)
    _wait_ready(guard)
    (child,) = _children(guard.pid)
    guard.send_signal(signal.SIGTERM)
    assert guard.wait(TIMEOUT) == 7  # the child's own status: it handled the SIGTERM
    assert not Path(f"/proc/{child}").exists()
    assert "TETHER" not in ns.iptables_save()


def test_the_server_dies_with_the_guard(ns: Netns, guards: list[subprocess.Popen[str]]) -> None:
    guard = _start(ns)
    guards.append(guard)
    _wait_ready(guard)
    (child,) = _children(guard.pid)
    guard.kill()
    guard.wait(TIMEOUT)
    deadline = time.monotonic() + TIMEOUT
    while Path(f"/proc/{child}/stat").exists():
        # Reparented and exited (PR_SET_PDEATHSIG): a zombie until its new parent reaps it.
        if Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()[0] == "Z":
            break
        assert time.monotonic() < deadline, "the server outlived its guard"
        time.sleep(0.01)


def test_an_exception_in_serve_is_one_line(ns: Netns) -> None:
    guard = _start(ns, "raise")
    _, err = guard.communicate(timeout=TIMEOUT)
    assert guard.returncode == 1
    assert err == "tether-agent: ValueError: boom second line\n"


async def test_chains_of_another_live_agent_stay(
    ns: Netns, guards: list[subprocess.Popen[str]]
) -> None:
    owner = _sleeper()
    try:
        with NetnsExecutor(ns.path, max_workers=1) as ex:
            theirs = Redirector(ex, owner_pid=owner.pid)
            await theirs.setup()
            await theirs.add(8443, 9443)
            guard = _start(ns)
            guards.append(guard)
            _, err = guard.communicate(timeout=TIMEOUT)
            assert guard.returncode == 1
            assert f"tether-agent: another tether agent (pid {owner.pid})" in err
            assert "--dport 8443" in ns.iptables_save()
            await theirs.teardown()
    finally:
        owner.kill()
        owner.wait()


def test_targetless_runs_in_process() -> None:
    assert run_guarded(lambda: os.getpid(), None) == os.getpid()
