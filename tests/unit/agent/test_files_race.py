"""Race tests for tether.agent.files: a directory swapped for a symlink mid-lookup.

The container owns its filesystem and may rename a symlink over any directory at any time,
while the agent resolves a path through it. The symlink here points at the absolute *host*
path of a directory laid out like the real one, so a lookup that lets the kernel follow it from
the host's root finds `outside/b/...` under the same name as `root/a/b/...`. Inside the
container that target does not exist: a confined lookup gets ENOENT, never the host's file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tether.agent.files import RootFS

INSIDE = b"inside the container\n"
OUTSIDE = b"the node's secret\n"


@dataclass
class Arena:
    """root/a/b (the real directory, `a` swapped back and forth) and its host look-alike."""

    root: Path
    inside: int  # directory fds: stable whatever `a` is at the moment
    outside: int
    outside_ino: int
    stop: threading.Event = field(default_factory=threading.Event)
    swaps: int = 0


def _fill(dir_fd: int, content: bytes, link_target: str, exe_mode: int) -> None:
    for name, data in (("secret", content), ("exe", b"#!/bin/sh\n")):
        fd = os.open(name, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o644, dir_fd=dir_fd)
        os.write(fd, data)
        os.close(fd)
    os.chmod("exe", exe_mode, dir_fd=dir_fd)
    os.symlink(link_target, "link", dir_fd=dir_fd)


_libc = ctypes.CDLL(None, use_errno=True)
_RENAME_EXCHANGE = 2


def _swap(arena: Arena, root_fd: int) -> None:
    # renameat2(RENAME_EXCHANGE) swaps the two names atomically: `a` is always either the
    # directory or the symlink, never missing, so each lookup races one of the two.
    while not arena.stop.is_set():
        if _libc.renameat2(root_fd, b"a", root_fd, b"a.link", _RENAME_EXCHANGE) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        arena.swaps += 1


@contextlib.contextmanager
def swapping(base: Path) -> Iterator[Arena]:
    """The arena with `root/a` being swapped for a symlink to the host until the block ends.

    The thread is stopped and joined, and the tree removed, however the block ends.
    """
    root, outside = base / "root", base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    (outside / "b").mkdir(parents=True)
    (root / "a.link").symlink_to(outside)  # an absolute host path, meaningless inside
    fds = [os.open(p, os.O_RDONLY | os.O_DIRECTORY) for p in (root, root / "a/b", outside / "b")]
    thread: threading.Thread | None = None
    try:
        root_fd, inside, outside_fd = fds
        _fill(inside, INSIDE, "inside-target", 0o644)
        _fill(outside_fd, OUTSIDE, "outside-target", 0o755)
        os.close(os.open("outside-only", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=outside_fd))
        ino = os.stat("secret", dir_fd=outside_fd).st_ino
        arena = Arena(root, inside, outside_fd, ino)
        thread = threading.Thread(target=_swap, args=(arena, root_fd), daemon=True)
        thread.start()
        yield arena
    finally:
        if thread is not None:
            arena.stop.set()
            thread.join(10)  # one exchange takes microseconds
        for fd in fds:
            os.close(fd)
        # rmtree unlinks symlinks rather than following them, so `a` may be either.
        shutil.rmtree(base)
        assert thread is None or not thread.is_alive()


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _ensure_file(dir_fd: int, name: str) -> None:
    os.close(os.open(name, os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd))


def _ensure_dir(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, dir_fd=dir_fd)


def _read(fs: RootFS, path: str) -> bytes:
    h = fs.open(path, os.O_RDONLY)
    try:
        return fs.read(h, 0, 1 << 10)
    finally:
        fs.close(h)


# Each attempt returns (succeeded, escaped). Failures (ENOENT, ELOOP, ...) are neither: the
# container raced the agent and lost nothing. Attempts restore what they consumed, on both
# sides, through the directory fds (a path could itself go through the symlink).


def _attempt_read(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    data = _read(fs, "/a/b/secret")
    assert data in (INSIDE, OUTSIDE)
    return data == INSIDE, data == OUTSIDE


def _attempt_stat(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    ino = fs.stat("/a/b/secret")["st_ino"]
    return ino != a.outside_ino, ino == a.outside_ino


def _attempt_lstat(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    ino = fs.stat("/a/b/secret", follow=False)["st_ino"]
    return ino != a.outside_ino, ino == a.outside_ino


def _attempt_listdir(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    names = {name for name, _, _ in fs.listdir("/a/b")}
    return "secret" in names and "outside-only" not in names, "outside-only" in names


def _attempt_readlink(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    target = fs.readlink("/a/b/link")
    return target == "inside-target", target == "outside-target"


def _attempt_access(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    # Only the host's copy is executable.
    fs.access("/a/b/exe", os.R_OK)
    try:
        fs.access("/a/b/exe", os.X_OK)
    except PermissionError:
        return True, False
    return False, True


def _attempt_create(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    try:
        fs.close(fs.open("/a/b/created", os.O_CREAT | os.O_WRONLY, 0o600))
    finally:
        escaped = _exists(a.outside, "created")
        for fd in (a.inside, a.outside):
            with contextlib.suppress(FileNotFoundError):
                os.unlink("created", dir_fd=fd)
    return not escaped, escaped


def _attempt_write(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    h = fs.open("/a/b/secret", os.O_WRONLY)
    try:
        fs.write(h, 0, b"T")
    finally:
        fs.close(h)
    with open(os.open("secret", os.O_RDWR, dir_fd=a.outside), "r+b") as f:
        escaped = f.read() != OUTSIDE
        f.seek(0)
        f.write(OUTSIDE)
    return not escaped, escaped


def _attempt_unlink(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    for fd in (a.inside, a.outside):
        _ensure_file(fd, "victim")
    fs.unlink("/a/b/victim")
    escaped = not _exists(a.outside, "victim")
    return not escaped, escaped


def _attempt_mkdir(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    try:
        fs.mkdir("/a/b/made", 0o700)
    finally:
        escaped = _exists(a.outside, "made")
        for fd in (a.inside, a.outside):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir("made", dir_fd=fd)
    return not escaped, escaped


def _attempt_rmdir(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    for fd in (a.inside, a.outside):
        _ensure_dir(fd, "empty")
    fs.rmdir("/a/b/empty")
    escaped = not _exists(a.outside, "empty")
    return not escaped, escaped


def _attempt_rename(fs: RootFS, a: Arena) -> tuple[bool, bool]:
    for fd in (a.inside, a.outside):
        _ensure_file(fd, "victim")
    try:
        fs.rename("/a/b/victim", "/a/b/moved")
    finally:
        escaped = _exists(a.outside, "moved")
        for fd in (a.inside, a.outside):
            with contextlib.suppress(FileNotFoundError):
                os.unlink("moved", dir_fd=fd)
    return not escaped, escaped


Attempt = Callable[[RootFS, Arena], tuple[bool, bool]]


@dataclass
class Tally:
    attempts: int = 0
    successes: int = 0
    escapes: int = 0


def race(fs: RootFS, arena: Arena, attempt: Attempt, seconds: float, limit: int) -> Tally:
    """Run `attempt` until `seconds` have passed or `limit` attempts, whichever comes first."""
    tally = Tally()
    deadline = time.monotonic() + seconds
    while tally.attempts < limit and time.monotonic() < deadline:
        tally.attempts += 1
        try:
            ok, escaped = attempt(fs, arena)
        except OSError:
            continue
        tally.successes += ok
        tally.escapes += escaped
    return tally


def test_reads_never_leave_the_root_while_a_directory_is_swapped(tmp_path: Path) -> None:
    with swapping(tmp_path / "arena") as arena:
        fs = RootFS(arena.root)
        tally = race(fs, arena, _attempt_read, seconds=3.0, limit=20_000)
        fs.close_all()
    print(f"read race: {tally} over {arena.swaps} swaps")
    assert tally.escapes == 0, tally
    assert tally.successes > 0, tally  # the race ran with the directory in place too
    assert arena.swaps > 0


@pytest.mark.parametrize(
    "attempt",
    [
        _attempt_stat,
        _attempt_lstat,
        _attempt_listdir,
        _attempt_readlink,
        _attempt_access,
        _attempt_create,
        _attempt_write,
        _attempt_unlink,
        _attempt_mkdir,
        _attempt_rmdir,
        _attempt_rename,
    ],
    ids=lambda f: f.__name__.removeprefix("_attempt_"),
)
def test_operations_never_leave_the_root_while_a_directory_is_swapped(
    tmp_path: Path, attempt: Attempt
) -> None:
    with swapping(tmp_path / "arena") as arena:
        fs = RootFS(arena.root)
        tally = race(fs, arena, attempt, seconds=0.6, limit=10_000)
        fs.close_all()
    print(f"{attempt.__name__}: {tally} over {arena.swaps} swaps")
    assert tally.escapes == 0, tally
    assert tally.successes > 0, tally
    assert arena.swaps > 0


def test_the_arena_exposes_the_host_file_to_an_unconfined_lookup(tmp_path: Path) -> None:
    """The race above would detect an escape: the host's kernel lookup does find it."""
    with swapping(tmp_path / "arena") as arena:
        seen: set[bytes] = set()
        deadline = time.monotonic() + 5
        while OUTSIDE not in seen and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                seen.add((arena.root / "a" / "b" / "secret").read_bytes())
    assert OUTSIDE in seen
    assert not (tmp_path / "arena").exists()
