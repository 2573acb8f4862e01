"""The exec supervisor against a real supervised child: every trapped call gets an answer.

Each case forks a real child under the production filter (`TRAPPED`), serves it with a real
`Supervisor` on this test's event loop, and makes one of the supervisor's collaborators raise
while the child's call is being handled. The child prints the errno each call ended with; a
call that is never answered would block the child until the timeout below fails the test.
Nothing leaves the machine: the connect case targets TEST-NET-2, and every answer is an errno.
"""

from __future__ import annotations

import asyncio
import errno
import io
import json
import os
import sys
from typing import Any, cast

import pytest

from tests.unit.intercept.supervise import REMOTE, kill_and_reap
from tether.config.models import FsConfig, NetworkConfig
from tether.intercept.launcher import spawn
from tether.intercept.seccomp import Syscall
from tether.local.exec.dispatcher import failure_answer
from tether.local.exec.supervisor import Supervisor
from tether.local.exec.syscalls import ALLOW_IF, TRAPPED, WRITE_TRAPPED
from tether.local.exec.views import view_source
from tether.local.policy.rules import FileAction, FileRules, NetRules
from tether.local.proxies.outgoing import OutgoingProxy, UdpProxy
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel

TIMEOUT = 10.0
TRIGGER = "/tether-test-trigger/file"  # no such file here; the pod's in read mode
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}

# Each call twice: the second failure must not print a second warning.
CHILD = f"""
import json, os, socket
def attempt(call):
    try:
        call()
        return 0
    except OSError as exc:
        return exc.errno
def connect():
    with socket.socket() as s:
        s.settimeout(5)
        s.connect({REMOTE!r})
calls = {{
    "open": lambda: open({TRIGGER!r}).close(),
    "stat": lambda: os.stat({TRIGGER!r}),
    "connect": connect,
}}
print(json.dumps({{name: [attempt(call), attempt(call)] for name, call in calls.items()
                   if name in os.environ["CALLS"].split(",")}}))
"""


class FailingFiles(FileRules):
    """File rules whose decision for TRIGGER raises `error` (a bug in a handler)."""

    def __init__(self, error: Exception | None) -> None:
        # Local mode with only TRIGGER the pod's: the interpreter starts on local files.
        config = FsConfig(mode="local", read_only=[TRIGGER])
        super().__init__(config, cwd="/", home="/", executable=sys.executable)
        self.error = error

    def decide(self, path: str, **kwargs: Any) -> FileAction:
        if self.error is not None and path == TRIGGER:
            raise self.error
        return super().decide(path, **kwargs)


class FailingNet(NetRules):
    """Outgoing rules whose decision for REMOTE raises `error`."""

    def __init__(self, error: Exception | None) -> None:
        super().__init__(NetworkConfig())
        self.error = error

    def decide(self, host_ip: str, port: int, **kwargs: Any) -> Any:
        if self.error is not None and (host_ip, port) == REMOTE:
            raise self.error
        return super().decide(host_ip, port, **kwargs)


class FailingTunnel:
    """A tunnel whose every request raises `error` (a bug on the event loop's side)."""

    def __init__(self, error: Exception | None) -> None:
        self.error = error or RuntimeError("no tunnel in this test")

    async def request(self, op: str, args: dict[str, Any]) -> Any:
        raise self.error

    async def call(self, request: Any, timeout: float | None = 30) -> Any:
        raise self.error

    async def open_stream(self, kind: str, args: dict[str, Any]) -> Any:
        raise self.error


async def _wait_exit(pid: int, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    pidfd = os.pidfd_open(pid)
    exited = asyncio.Event()
    loop.add_reader(pidfd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    # The pidfd said it exited: this waitpid does not block.
    return os.waitpid(pid, 0)[1]  # noqa: ASYNC222


async def run_child(
    calls: str,
    *,
    files: Exception | None = None,
    net: Exception | None = None,
    tunnel: Exception | None = None,
) -> tuple[dict[str, list[int]], str]:
    """Run CHILD with `calls` under a Supervisor whose collaborators raise as given; return
    what each call ended with and what tether printed. Each call runs twice, and both
    failures must have been counted."""
    out = io.StringIO()
    progress = Progress(1, out)
    read_end, write_end = os.pipe()
    launch = spawn([sys.executable, "-c", CHILD], {**ENV, "CALLS": calls}, TRAPPED,
                   stdout=write_end, stderr=write_end, allow_if=ALLOW_IF)  # fmt: skip
    os.close(write_end)
    output = os.fdopen(read_end, "rb")
    supervisor = Supervisor(
        launch.listener,
        cast(Tunnel, FailingTunnel(tunnel)),
        FailingFiles(files),
        FailingNet(net),
        OutgoingProxy(progress),
        UdpProxy(progress),
        progress,
        hostname="pod-name",
        served={},
    )
    loop = asyncio.get_running_loop()
    supervisor.attach(loop)
    try:
        try:
            status = await _wait_exit(launch.pid, TIMEOUT)
        except TimeoutError:
            pytest.fail(f"{calls}: the child is still blocked in a trapped call")
        printed = output.read().decode()
        assert os.waitstatus_to_exitcode(status) == 0, printed
    finally:
        supervisor.detach(loop)
        kill_and_reap(launch.pid)
        launch.close()
        supervisor.cleanup()
        output.close()
    # detach() joined the thread, so whatever it handed to the loop is queued: one turn of
    # the loop runs it.
    await asyncio.sleep(0)
    assert supervisor.internal_errors == 2
    return json.loads(printed), out.getvalue()


FAILURES: list[tuple[str, dict[str, Exception], int]] = [
    # A bug in the supervisor thread's quick path (the rules), then on the event loop's side
    # (a remote open whose tunnel request fails with something other than a remote error).
    ("open", {"files": KeyError(TRIGGER)}, errno.EIO),
    ("open", {"files": RuntimeError("boom")}, errno.EIO),
    ("stat", {"files": KeyError(TRIGGER)}, errno.EIO),
    ("stat", {"files": RuntimeError("boom")}, errno.EIO),
    ("connect", {"net": RuntimeError("boom")}, errno.ENETUNREACH),
    ("connect", {"net": KeyError("peer")}, errno.ENETUNREACH),
    ("open", {"tunnel": KeyError("handle")}, errno.EIO),
    ("stat", {"tunnel": RuntimeError("boom")}, errno.EIO),
]


@pytest.mark.parametrize(
    ("call", "failure", "expected"),
    FAILURES,
    ids=[f"{c}-{next(iter(f))}-{type(next(iter(f.values()))).__name__}" for c, f, _ in FAILURES],
)
async def test_a_failing_handler_still_answers_the_call(
    call: str, failure: dict[str, Exception], expected: int
) -> None:
    got, printed = await run_child(call, **failure)
    assert got == {call: [expected, expected]}
    warnings = [line for line in printed.splitlines() if line.startswith("tether: warning:")]
    assert len(warnings) == 1, printed
    assert call in warnings[0] and type(next(iter(failure.values()))).__name__ in warnings[0]


ANSWERS: dict[int, int | None] = {
    Syscall.open: errno.EIO,
    Syscall.openat: errno.EIO,
    Syscall.openat2: errno.EIO,
    Syscall.stat: errno.EIO,
    Syscall.lstat: errno.EIO,
    Syscall.newfstatat: errno.EIO,
    Syscall.statx: errno.EIO,
    Syscall.access: errno.EIO,
    Syscall.faccessat: errno.EIO,
    Syscall.faccessat2: errno.EIO,
    Syscall.readlink: errno.EIO,
    Syscall.readlinkat: errno.EIO,
    Syscall.unlink: errno.EIO,
    Syscall.unlinkat: errno.EIO,
    Syscall.mkdir: errno.EIO,
    Syscall.mkdirat: errno.EIO,
    Syscall.rmdir: errno.EIO,
    # Never a local connection behind the user's back.
    Syscall.connect: errno.ENETUNREACH,
    # Running these natively is harmless.
    Syscall.close: None,
    Syscall.getpeername: None,
    Syscall.getsockname: None,
    Syscall.uname: None,
    Syscall.listen: None,
}


def test_every_trapped_call_has_a_failure_answer() -> None:
    assert set(ANSWERS) == {*TRAPPED, *WRITE_TRAPPED}
    for nr, expected in ANSWERS.items():
        assert failure_answer(nr) == expected, Syscall(nr).name
    assert failure_answer(9999) == errno.EIO


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v/3/etc/shop", "/etc/shop"),
        ("/v/3/etc/shop/config.yaml", "/etc/shop/config.yaml"),
        ("/v/12", "/"),
        ("/v/12/", "/"),
        ("/v", None),
        ("/vx/3/etc", None),
        ("/etc/shop", None),
    ],
)
def test_view_source(path: str, expected: str | None) -> None:
    assert view_source(path, "/v") == expected
