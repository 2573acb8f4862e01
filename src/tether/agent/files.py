"""File access inside a container's root filesystem that never escapes it.

The root is usually /proc/PID/root. Walking a path through it with the kernel would resolve
absolute symlinks and `..` against the agent's root (the host), so paths are resolved here one
component at a time: absolute symlink targets restart at the container root and `..` stops there.
Errors are OSError with the errno a process in the container would see, naming the in-container
path, never the host path.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_SYMLINKS = 40  # Linux's limit on symlinks followed in one lookup
MAX_HANDLES = 1024
MAX_READ = 4 << 20

_STAT_FIELDS = (
    "st_mode",
    "st_ino",
    "st_dev",
    "st_nlink",
    "st_uid",
    "st_gid",
    "st_size",
    "st_atime_ns",
    "st_mtime_ns",
    "st_ctime_ns",
    "st_blksize",
    "st_blocks",
    "st_rdev",
)


def _error(code: int, path: str) -> OSError:
    return OSError(code, os.strerror(code), path)


def stat_dict(st: os.stat_result) -> dict[str, int]:
    """The integer fields of a stat result, keyed by their `os.stat_result` names."""
    return {name: int(getattr(st, name)) for name in _STAT_FIELDS}


@contextlib.contextmanager
def _in_container(path: str, path2: str | None = None) -> Iterator[None]:
    """Report errors with the in-container path(s) instead of the host's."""
    try:
        yield
    except OSError as e:
        if e.errno is None:
            raise
        if path2 is None:
            raise OSError(e.errno, e.strerror, path) from None
        raise OSError(e.errno, e.strerror, path, None, path2) from None


@dataclass
class _Handle:
    fd: int
    append: bool


class RootFS:
    """File operations on absolute in-container paths (relative ones start at the root too).

    Calls block on the filesystem: run them off the event loop. Open files are tracked as
    handle ids (at most `max_handles`, then EMFILE); `close_all()` releases them.
    """

    def __init__(self, root: Path, max_handles: int = MAX_HANDLES) -> None:
        self.root = root
        self.max_handles = max_handles
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._lock = threading.Lock()

    def resolve(self, path: str, follow_final: bool = True) -> Path:
        """The host-side path of in-container `path`, following symlinks inside the root.

        A missing final component is fine (the path may be about to be created); a missing
        directory on the way is ENOENT, a non-directory on the way ENOTDIR, more than 40
        symlinks ELOOP. A trailing slash makes the final component a directory to follow.
        """
        if "\0" in path:
            raise _error(errno.EINVAL, path)
        todo = path.split("/")[::-1]  # a stack: the next component is last
        done: list[str] = []
        links = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            host = self.root.joinpath(*done, name)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if any(todo):
                    raise _error(errno.ENOENT, path) from None
                return host
            except OSError as e:
                raise OSError(e.errno, e.strerror, path) from None
            if stat_mod.S_ISLNK(st.st_mode) and (todo or follow_final):
                links += 1
                if links > MAX_SYMLINKS:
                    raise _error(errno.ELOOP, path)
                with _in_container(path):
                    # Path.readlink() would normalise the target ("a/" or "a//b").
                    target = os.readlink(host)  # noqa: PTH115
                if not target:
                    raise _error(errno.ENOENT, path)
                if target.startswith("/"):
                    done = []
                todo.extend(reversed(target.split("/")))
                continue
            if todo and not stat_mod.S_ISDIR(st.st_mode):
                raise _error(errno.ENOTDIR, path)
            done.append(name)
        return self.root.joinpath(*done)

    def _follow_root(self, host: Path) -> bool:
        # Only the root itself may be a symlink we pass to the kernel: /proc/PID/root is one.
        return host == self.root

    def stat(self, path: str, follow: bool = True) -> dict[str, int]:
        """stat(2) (lstat(2) with `follow=False`) as a dict of `os.stat_result` fields."""
        host = self.resolve(path, follow)
        with _in_container(path):
            return stat_dict(host.stat(follow_symlinks=self._follow_root(host)))

    def listdir(self, path: str) -> list[tuple[str, int, int]]:
        """(name, file type as in dirent's d_type, inode) per entry, without "." and ".."."""
        host = self.resolve(path)
        entries: list[tuple[str, int, int]] = []
        with _in_container(path), os.scandir(host) as it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:  # removed while we listed
                    continue
                # S_IFMT >> 12 is exactly DT_REG, DT_DIR, DT_LNK, ...
                entries.append((entry.name, stat_mod.S_IFMT(st.st_mode) >> 12, st.st_ino))
        return entries

    def readlink(self, path: str) -> str:
        """The target of the symlink at `path`, as stored (EINVAL if not a symlink)."""
        host = self.resolve(path, follow_final=False)
        with _in_container(path):
            return os.readlink(host)  # noqa: PTH115 (the target as stored, not normalised)

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """open(2) with `flags`/`mode`; returns a handle id for read/write/fstat/close."""
        with self._lock:
            if len(self._handles) >= self.max_handles:
                raise _error(errno.EMFILE, path)
        creating_excl = flags & os.O_CREAT and flags & os.O_EXCL
        follow = not (flags & os.O_NOFOLLOW or creating_excl)
        host = self.resolve(path, follow)
        # The final component is resolved already: O_NOFOLLOW keeps a symlink swapped in
        # since then from leading out of the root.
        extra = os.O_CLOEXEC | os.O_NOCTTY | (0 if self._follow_root(host) else os.O_NOFOLLOW)
        with _in_container(path):
            fd = os.open(host, flags | extra, mode)
        with self._lock:
            if len(self._handles) >= self.max_handles:
                os.close(fd)
                raise _error(errno.EMFILE, path)
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = _Handle(fd, bool(flags & os.O_APPEND))
        return handle

    def _handle(self, handle: int) -> _Handle:
        with self._lock:
            h = self._handles.get(handle)
        if h is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        return h

    def read(self, handle: int, offset: int, size: int) -> bytes:
        """Up to `size` bytes (at most MAX_READ) at `offset`; b"" at end of file."""
        h = self._handle(handle)
        if size < 0:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return os.pread(h.fd, min(size, MAX_READ), offset)

    def write(self, handle: int, offset: int, data: bytes) -> int:
        """Write `data` at `offset` (-1: at the end); returns the number of bytes written."""
        h = self._handle(handle)
        if offset != -1:
            return os.pwrite(h.fd, data, offset)
        if h.append:
            return os.write(h.fd, data)  # atomic with O_APPEND
        return os.pwrite(h.fd, data, os.fstat(h.fd).st_size)

    def fstat(self, handle: int) -> dict[str, int]:
        """fstat(2) of an open handle."""
        return stat_dict(os.fstat(self._handle(handle).fd))

    def close(self, handle: int) -> None:
        """Close a handle (EBADF if it is not open)."""
        with self._lock:
            h = self._handles.pop(handle, None)
        if h is None:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        os.close(h.fd)

    def close_all(self) -> None:
        """Close every open handle."""
        with self._lock:
            handles, self._handles = self._handles, {}
        for h in handles.values():
            with contextlib.suppress(OSError):
                os.close(h.fd)

    @property
    def open_handles(self) -> int:
        """How many handles are open."""
        return len(self._handles)

    def unlink(self, path: str) -> None:
        """Remove a non-directory entry (a symlink itself, not its target)."""
        host = self.resolve(path, follow_final=False)
        if host == self.root:
            raise _error(errno.EISDIR, path)
        with _in_container(path):
            host.unlink()

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """Create a directory (EEXIST if anything, even a dangling symlink, is there)."""
        host = self.resolve(path, follow_final=False)
        if host == self.root:
            raise _error(errno.EEXIST, path)
        with _in_container(path):
            host.mkdir(mode)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        host = self.resolve(path, follow_final=False)
        if host == self.root:
            raise _error(errno.EBUSY, path)
        with _in_container(path):
            host.rmdir()

    def rename(self, old: str, new: str) -> None:
        """rename(2) within the root; neither final component is followed."""
        old_host = self.resolve(old, follow_final=False)
        new_host = self.resolve(new, follow_final=False)
        if self.root in (old_host, new_host):
            raise _error(errno.EBUSY, old)
        with _in_container(old, new):
            old_host.rename(new_host)

    def access(self, path: str, mode: int) -> None:
        """access(2) with the agent's credentials: ENOENT if missing, EACCES if denied."""
        host = self.resolve(path)
        follow = self._follow_root(host)
        with _in_container(path):
            host.stat(follow_symlinks=follow)
        if not os.access(host, mode, follow_symlinks=follow):
            raise _error(errno.EACCES, path)
