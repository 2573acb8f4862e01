"""Unit tests for tether.agent.environ: reading /proc/PID/environ and filtering it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.agent.environ import filter_env, read_environ


def test_reads_a_fake_environ(tmp_path: Path) -> None:
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "environ").write_bytes(
        b"PATH=/usr/bin\0EMPTY=\0EQ=a=b\0NOEQUALS\0=nameless\0DUP=first\0DUP=second\0RAW=\xff\xfe\0"
    )
    env = read_environ(7, tmp_path)
    assert env == {
        "PATH": "/usr/bin",
        "EMPTY": "",
        "EQ": "a=b",
        "DUP": "first",
        "RAW": os.fsdecode(b"\xff\xfe"),
    }
    assert os.fsencode(env["RAW"]) == b"\xff\xfe"


def test_reads_a_real_process_environ() -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "SHOP_MODE": "staging", "X": "1 2"}
    child = subprocess.Popen(
        [sys.executable, "-c", "print('up', flush=True); import sys; sys.stdin.read()"],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        # Until the child has exec'd, /proc/PID/environ is still the parent's.
        assert child.stdout is not None and child.stdout.readline() == b"up\n"
        got = read_environ(child.pid)
    finally:
        child.communicate()
    assert got["SHOP_MODE"] == "staging"
    assert got["X"] == "1 2"


def test_targetless_is_the_agents_own_environment() -> None:
    assert read_environ(None) == dict(os.environ)


def test_a_vanished_process_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_environ(99, tmp_path)


ENV = {"PATH": "/bin", "HOME": "/root", "AWS_KEY": "k", "AWS_REGION": "eu", "aws_lower": "x"}


@pytest.mark.parametrize(
    ("include", "exclude", "expected"),
    [
        ([], [], set(ENV)),
        (["*"], [], set(ENV)),
        (["AWS_*"], [], {"AWS_KEY", "AWS_REGION"}),
        ([], ["AWS_*"], {"PATH", "HOME", "aws_lower"}),
        (["AWS_*", "PATH"], ["AWS_KEY"], {"AWS_REGION", "PATH"}),
        (["AWS_*"], ["AWS_*"], set()),
        (["HOM?", "[PQ]ATH"], [], {"HOME", "PATH"}),
        (["NOPE"], [], set()),
    ],
)
def test_filter_env(include: list[str], exclude: list[str], expected: set[str]) -> None:
    got = filter_env(ENV, include, exclude)
    assert set(got) == expected
    assert all(got[k] == ENV[k] for k in got)
