"""Files open for writing on the pod: each one's content lives in a memfd of ours, which
the process writes natively and tether sends back (through `RemoteFiles`)."""

import fcntl
import os
from pathlib import PurePosixPath
from typing import Final

from tether.local.exec.remote_fs import RemoteFiles
from tether.local.session.progress import Progress
from tether.tunnel import RemoteOpError, TunnelClosedError

# The memfds of files open for writing on the pod carry this name prefix, so the supervisor
# thread can tell from /proc which closes need the loop (the others are just CONTINUEd).
_WRITE_MEMFD: Final = "tether-w:"
_MEMFD_NAME_MAX: Final = 249  # the kernel's limit on a memfd's name


def memfd_bytes(fd: int) -> bytes:
    """The whole content of one of our memfds (without moving its shared offset)."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _write_memfd_name(path: str) -> str:
    return (_WRITE_MEMFD + (PurePosixPath(path).name or "file"))[:_MEMFD_NAME_MAX]


def is_write_memfd(link: str) -> bool:
    """Whether an fd's /proc link names one of the store's memfds."""
    return link.startswith("/memfd:" + _WRITE_MEMFD)


class WriteBackStore:
    """Files open for writing on the pod. Each one's content lives in a memfd of ours, sent
    back when the process closes an fd it opened on it, and once more when the process tree
    exits (a process may exit, or dup2 and close, without a close of the fd it opened).
    Owned by the event loop."""

    def __init__(self, remote: RemoteFiles) -> None:
        self.remote = remote
        self._opened: dict[tuple[int, int], str] = {}  # (tgid, fd in the process) -> path
        self._copies: dict[str, tuple[int, int]] = {}  # path -> (our memfd, create mode)

    def copy(self, path: str) -> int | None:
        """Our memfd holding `path` as written in this session, if it was."""
        entry = self._copies.get(path)
        return None if entry is None else entry[0]

    async def open(self, path: str, flags: int, mode: int, *, exists: bool) -> int:
        """A writable memfd for `path` (empty if truncated or new), which becomes the path's
        copy; the caller installs it in the process and then calls `track`."""
        previous = self._copies.get(path)
        if previous is not None:
            # An earlier open of the file may hold writes not sent back yet (a dup2 closes
            # without a close call): send them first, or reading the pod's copy loses them.
            await self.remote.write_back(path, previous[0])
        name = _write_memfd_name(path)
        if exists and not flags & os.O_TRUNC:
            fd = await self.remote.read_into_memfd(path, memfd_name=name)
        else:
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
        if flags & os.O_APPEND:
            os.set_blocking(fd, True)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        previous = self._copies.pop(path, None)
        if previous is not None:
            os.close(previous[0])
        self._copies[path] = (fd, mode or 0o644)
        if not exists:
            await self.remote.write_back(path, fd)  # O_CREAT: the file exists from now on
        return fd

    def track(self, key: tuple[int, int], path: str) -> None:
        """Fd `key` = (tgid, fd) of the process is open for writing on `path`."""
        self._opened[key] = path

    async def close(self, key: tuple[int, int]) -> None:
        """The process closed fd `key`: send its file's content back, if it is one of ours."""
        path = self._opened.pop(key, None)
        fd = None if path is None else self.copy(path)
        if path is not None and fd is not None:
            await self.remote.write_back(path, fd)

    def forget(self, path: str) -> None:
        """`path` was removed on the pod: drop its copy."""
        entry = self._copies.pop(path, None)
        if entry is not None:
            os.close(entry[0])

    async def flush(self, progress: Progress) -> None:
        """Send every copy back once more and close it (the tree has exited)."""
        for path, (fd, _mode) in list(self._copies.items()):
            try:
                await self.remote.write_back(path, fd)
            except (RemoteOpError, TunnelClosedError) as exc:
                progress.warn(f"could not write {path} back to the pod: {exc}")
            finally:
                os.close(fd)
        self._copies.clear()
