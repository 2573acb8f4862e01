"""File access inside a container's root filesystem that never escapes it.

The root is usually /proc/PID/root, opened once as an O_PATH fd. The kernel resolves every path
under it with openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): absolute symlinks restart at the
container's root, `..` stops there, /proc magic links are refused, and a symlink the container
renames over a directory mid-lookup cannot lead onto the node (a user-space walk followed by a
path-based syscall always could: the kernel walks that path again from the node's root).
Operations on a final name (mkdir, unlink, rename, ...) resolve its parent directory that way
and act on the bare name with the *at syscalls, which never follow it. Errors are OSError with
the errno a process in the container would see, naming the in-container path, never the host's.
Needs Linux 5.6 (openat2; 5.8 for access, faccessat2); older kernels get ENOSYS, no fallback.
`RootFS.resolve`, the old user-space walk, is the one exception, left for resolver.py only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat as stat_mod
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tether.agent.openat2 import (
    AT_EMPTY_PATH,
    RESOLVE_IN_ROOT,
    RESOLVE_NO_MAGICLINKS,
    faccessat2,
    open_how,
    openat2,
)

MAX_HANDLES = 1024
MAX_READ = 4 << 20

_RESOLVE: Final = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS

# What the kernel answers when the final component is not a plain name: the root ("/"), "."
# or "..". These calls never act on such a component, and neither do we.
_NOT_A_NAME: Final[dict[str, tuple[int, int, int]]] = {
    "unlink": (errno.EISDIR, errno.EISDIR, errno.EISDIR),
    "rmdir": (errno.EBUSY, errno.EINVAL, errno.ENOTEMPTY),
    "mkdir": (errno.EEXIST, errno.EEXIST, errno.EEXIST),
    "rename": (errno.EBUSY, errno.EBUSY, errno.EBUSY),
}

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


def split_final(path: str) -> tuple[str, str]:
    """`path` as (its parent directory, its final component), for the *at syscalls.

    The parent is "/" when the path has none (relative paths start at the root too). A
    trailing slash stays on the final component as a single "/": the *at calls then insist on
    a directory, as they would for the whole path, without following a symlink there. The
    final component of the root itself is "".
    """
    trimmed = path.rstrip("/")
    head, _, name = trimmed.rpartition("/")
    return head or "/", name + "/" if name and trimmed != path else name


def final_name_error(op: str, name: str) -> int | None:
    """The errno `op` fails with on final component `name`; None for a name it may act on.

    `op` is "mkdir", "unlink", "rmdir" or "rename"; the errors are the kernel's own for a
    path ending in "/", "." or "..".
    """
    bare = name.removesuffix("/")
    if "/" in bare or "\0" in bare:
        return errno.EINVAL  # split_final never makes one: the *at call must not walk
    specials = ("", ".", "..")
    return _NOT_A_NAME[op][specials.index(bare)] if bare in specials else None


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


@contextlib.contextmanager
def _closing(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


@dataclass
class _Handle:
    fd: int
    append: bool


class RootFS:
    """File operations on absolute in-container paths (relative ones start at the root too).

    The root is opened when the RootFS is made and kept until it is garbage collected, so it
    stays the same directory even if its path (a PID's) comes to mean another one; if it
    cannot be opened, every operation fails with that error. Calls block on the filesystem:
    run them off the event loop. Open files are tracked as handle ids (at most `max_handles`,
    then EMFILE); `close_all()` releases them.
    """

    def __init__(self, root: Path, max_handles: int = MAX_HANDLES) -> None:
        self.root = root
        self.max_handles = max_handles
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1
        self._lock = threading.Lock()
        self._root_fd: int | None = None
        self._root_errno = 0
        try:
            # Following /proc/PID/root (a magic link) here is the point: it leads to the
            # container's root, in its mount namespace.
            self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self._root_errno = e.errno or errno.ENOENT
        else:
            weakref.finalize(self, os.close, self._root_fd)

    def _lookup(self, path: str, flags: int, mode: int = 0, shown: str | None = None) -> int:
        """A new fd for `path` resolved inside the root; errors name `shown` (or `path`)."""
        shown = path if shown is None else shown
        if self._root_fd is None:
            code = self._root_errno
            raise OSError(code, f"{os.strerror(code)} (the root {self.root})", shown)
        with _in_container(shown):
            return openat2(self._root_fd, path or "/", flags | os.O_CLOEXEC, mode, _RESOLVE)

    def _parent(self, path: str, op: str) -> tuple[int, str]:
        """An O_PATH fd of `path`'s parent (the caller closes it) and the name to act on."""
        parent, name = split_final(path)
        # The parent first, as the kernel does: "/missing/.." is ENOENT, not EEXIST.
        fd = self._lookup(parent, os.O_PATH | os.O_DIRECTORY, shown=path)
        code = final_name_error(op, name)
        if code is not None:
            os.close(fd)
            raise _error(code, path)
        return fd, name

    def open_fd(self, path: str, flags: int, mode: int = 0o666) -> int:
        """open(2) of `path` inside the root: a raw close-on-exec fd the caller must close."""
        # O_NOCTTY: a terminal the container leaves at the path must not become the agent's.
        how_flags, how_mode = open_how(flags | os.O_CLOEXEC | os.O_NOCTTY, mode)
        return self._lookup(path, how_flags, how_mode)

    def read_file(self, path: str, limit: int = MAX_READ) -> bytes:
        """Up to `limit` bytes of the regular file at `path` (EINVAL for anything else).

        O_NONBLOCK and the check keep a FIFO or device the container put there from blocking
        or feeding the agent forever.
        """
        with _closing(self.open_fd(path, os.O_RDONLY | os.O_NONBLOCK)) as fd:
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                raise _error(errno.EINVAL, path)
            return os.pread(fd, limit, 0)

    def stat(self, path: str, follow: bool = True) -> dict[str, int]:
        """stat(2) (lstat(2) with `follow=False`) as a dict of `os.stat_result` fields."""
        # O_PATH|O_NOFOLLOW gives the symlink itself (a trailing slash still follows it).
        flags = os.O_PATH | (0 if follow else os.O_NOFOLLOW)
        with _closing(self._lookup(path, flags)) as fd:
            return stat_dict(os.fstat(fd))

    def listdir(self, path: str) -> list[tuple[str, int, int]]:
        """(name, file type as in dirent's d_type, inode) per entry, without "." and ".."."""
        entries: list[tuple[str, int, int]] = []
        with (
            _closing(self._lookup(path, os.O_RDONLY | os.O_DIRECTORY)) as fd,
            _in_container(path),
            os.scandir(fd) as it,  # entries are then stat'ed relative to the fd
        ):
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
        with _closing(self._lookup(path, os.O_PATH | os.O_NOFOLLOW)) as fd, _in_container(path):
            # readlinkat(fd, "") reads the link an O_PATH fd holds, but says ENOENT, not
            # readlink(2)'s EINVAL, for anything else.
            if not stat_mod.S_ISLNK(os.fstat(fd).st_mode):
                raise _error(errno.EINVAL, path)
            return os.readlink("", dir_fd=fd)

    def open(self, path: str, flags: int, mode: int = 0o666) -> int:
        """open(2) with `flags`/`mode`; returns a handle id for read/write/fstat/close."""
        with self._lock:
            if len(self._handles) >= self.max_handles:
                raise _error(errno.EMFILE, path)
        fd = self.open_fd(path, flags, mode)
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
        fd, name = self._parent(path, "unlink")
        with _closing(fd), _in_container(path):
            os.unlink(name, dir_fd=fd)

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        """Create a directory (EEXIST if anything, even a dangling symlink, is there)."""
        fd, name = self._parent(path, "mkdir")
        with _closing(fd), _in_container(path):
            os.mkdir(name, mode, dir_fd=fd)

    def rmdir(self, path: str) -> None:
        """Remove an empty directory."""
        fd, name = self._parent(path, "rmdir")
        with _closing(fd), _in_container(path):
            os.rmdir(name, dir_fd=fd)

    def rename(self, old: str, new: str) -> None:
        """rename(2) within the root; neither final component is followed."""
        old_fd, old_name = self._parent(old, "rename")
        with _closing(old_fd):
            new_fd, new_name = self._parent(new, "rename")
            with _closing(new_fd), _in_container(old, new):
                os.rename(old_name, new_name, src_dir_fd=old_fd, dst_dir_fd=new_fd)

    def access(self, path: str, mode: int) -> None:
        """access(2) with the agent's credentials: ENOENT if missing, EACCES if denied."""
        with _closing(self._lookup(path, os.O_PATH)) as fd:
            try:
                # The kernel's own check, with access(2)'s real ids, on the inode just
                # resolved: no second lookup by name.
                faccessat2(fd, "", mode, AT_EMPTY_PATH)
            except OSError as e:
                if e.errno == errno.ENOSYS:
                    raise OSError(e.errno, e.strerror, path) from None
                raise _error(errno.EACCES, path) from None
