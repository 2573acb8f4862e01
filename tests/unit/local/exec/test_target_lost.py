"""When the session loses its target, the program is stopped (or, if asked, kept)."""

import asyncio
import io
import signal
import sys
from typing import Any, cast

import pytest

from tether.local.exec.execute import TargetLost
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel


class ClosedTunnel:
    """A tunnel that ends (as when the agent ended every session) once `close()` is called."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    async def wait_closed(self) -> BaseException | None:
        await self.closed.wait()
        return ConnectionResetError("the target container exited")


# A program that ignores SIGTERM exercises the SIGKILL after the grace period. Each says
# "ready" once its signal disposition is set.
PROGRAMS = {
    "polite": "import time; print('ready', flush=True); time.sleep(60)",
    "stubborn": (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"
    ),
}


async def _start(program: str) -> asyncio.subprocess.Process:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", PROGRAMS[program], stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    assert await asyncio.wait_for(child.stdout.readline(), 10) == b"ready\n"
    return child


@pytest.mark.parametrize("program", PROGRAMS)
async def test_a_lost_target_stops_the_program(program: str) -> None:
    child = await _start(program)
    out = io.StringIO()
    lost = TargetLost(child.pid, keep=False, grace=0.2, progress=Progress(1, out))
    tunnel = ClosedTunnel()
    watch = asyncio.ensure_future(lost.watch(cast(Tunnel, tunnel)))
    try:
        assert lost.error() is None  # nothing lost yet
        tunnel.closed.set()
        code = await asyncio.wait_for(child.wait(), 10)
        assert code == (-signal.SIGTERM if program == "polite" else -signal.SIGKILL)
        error = lost.error()
        assert error is not None
        assert str(error) == (
            "lost the target (the target container exited); the program was stopped"
            " (--on-target-lost keep lets it run on)"
        )
        assert "warning: lost the agent (the target container exited); stopping" in out.getvalue()
    finally:
        watch.cancel()
        if child.returncode is None:
            child.kill()
            await child.wait()


async def test_kept_the_program_runs_on_with_a_warning() -> None:
    child = await _start("polite")
    out = io.StringIO()
    lost = TargetLost(child.pid, keep=True, grace=0.2, progress=Progress(1, out))
    tunnel: Any = ClosedTunnel()
    try:
        tunnel.closed.set()
        await asyncio.wait_for(lost.watch(tunnel), 5)
        assert child.returncode is None
        assert lost.error() is None
        assert "the program runs on without the target" in out.getvalue()
    finally:
        child.kill()
        await child.wait()
