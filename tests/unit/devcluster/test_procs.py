"""PID files: our live process is found, a dead or reused PID never is."""

from pathlib import Path

import pytest

from devcluster import layout
from devcluster.procs import Daemon


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(layout, "PIDS", tmp_path / "run")
    monkeypatch.setattr(layout, "LOGS", tmp_path / "logs")
    return tmp_path


def test_start_find_stop(state: Path) -> None:
    d = Daemon("sleeper")
    pid = d.start(["/bin/sh", "-c", "echo hello; exec sleep 60"])
    try:
        assert d.pid() == pid
    finally:
        d.stop(timeout=5)
    assert d.pid() is None
    assert not d.pidfile.exists()
    assert "hello" in d.logfile.read_text()


def test_reused_pid_is_not_ours(state: Path) -> None:
    d = Daemon("impostor")
    d.pidfile.parent.mkdir(parents=True)
    # PID 1 is alive but its start time is not the recorded one: never treat it as ours.
    d.pidfile.write_text("1 123456789\n")
    assert d.pid() is None
    d.stop(timeout=1)  # must not signal PID 1
    assert not d.pidfile.exists()


def test_garbage_pidfile(state: Path) -> None:
    d = Daemon("garbage")
    d.pidfile.parent.mkdir(parents=True)
    d.pidfile.write_text("not a pid")
    assert d.pid() is None


def test_daemon_that_exits_is_gone(state: Path) -> None:
    d = Daemon("quick")
    d.start(["/bin/true"])
    import time

    deadline = time.monotonic() + 5
    while d.pid() is not None and time.monotonic() < deadline:
        d.stop(timeout=0.1)
    assert d.pid() is None
