"""The target process's environment, and the include/exclude filter applied to it."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Mapping
from pathlib import Path


def read_environ(pid: int | None, proc: Path = Path("/proc")) -> dict[str, str]:
    """The environment `pid` started with (the agent's own when `pid` is None).

    Names and values that are not UTF-8 are decoded like `os.environ` does (surrogateescape),
    so `os.fsencode` gives the original bytes back. Raises OSError if the process is gone.
    """
    if pid is None:
        return dict(os.environ)
    data = (proc / str(pid) / "environ").read_bytes()
    env: dict[str, str] = {}
    for entry in data.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and name:
            # getenv(3) returns the first of duplicate entries.
            env.setdefault(os.fsdecode(name), os.fsdecode(value))
    return env


def filter_env(env: Mapping[str, str], include: list[str], exclude: list[str]) -> dict[str, str]:
    """The variables whose names match an `include` glob and no `exclude` glob.

    Globs are fnmatch patterns matched case-sensitively; an empty `include` means all.
    """

    def matches(name: str, patterns: list[str]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    return {
        name: value
        for name, value in env.items()
        if (not include or matches(name, include)) and not matches(name, exclude)
    }
