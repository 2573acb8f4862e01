"""A command stopped by a signal exits 128 + the signal, as shells and kubectl report it."""

import asyncio
import os
import signal

import pytest

from tether.cli.main import run_async


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_cancels_the_command_with_its_exit_status(sig: int, status: int) -> None:
    cleaned: list[bool] = []

    async def command() -> int:
        os.kill(os.getpid(), sig)
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(True)  # the cleanup (the agent Job's removal) still runs
        return 0

    assert run_async(command()) == status
    assert cleaned == [True]
