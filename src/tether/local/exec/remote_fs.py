"""Remote files for an intercepted process: content fetched from the agent into a memfd, so the
process reads, seeks, mmaps and fstats it natively; metadata calls answered from the agent."""

import os
from pathlib import PurePosixPath

from tether.protocol.messages import (
    FsAccess,
    FsClose,
    FsListdir,
    FsMkdir,
    FsOpen,
    FsRead,
    FsReadlink,
    FsRmdir,
    FsStat,
    FsUnlink,
    FsWrite,
)
from tether.tunnel import Tunnel

# Below the protocol's per-response cap.
CHUNK = 192 * 1024


class RemoteFiles:
    """File operations on the target's filesystem for the supervisor (every one it makes)."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel

    async def read_into_memfd(self, path: str, *, memfd_name: str | None = None) -> int:
        """A memfd (our fd) holding the remote file's bytes, read in chunks so a big file never
        sits in memory whole; named `memfd_name` (default: the file's name). Raises
        RemoteOpError (with errno) if the agent cannot open it."""
        handle = (await self.tunnel.call(FsOpen(path, os.O_RDONLY))).handle
        name = memfd_name or PurePosixPath(path).name or "tether"
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            offset = 0
            while True:
                data = (await self.tunnel.call(FsRead(handle, offset, CHUNK))).data
                if not data:
                    break
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                offset += len(data)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        finally:
            await self.tunnel.call(FsClose(handle))
        return fd

    async def read_text(self, path: str) -> str:
        """A small remote file as text."""
        fd = await self.read_into_memfd(path)
        try:
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read().decode(errors="replace")
        finally:
            os.close(fd)

    async def stat(self, path: str, follow: bool) -> dict[str, int]:
        """The remote stat result as a dict of st_* fields."""
        return (await self.tunnel.call(FsStat(path, follow))).stat

    async def access(self, path: str, mode: int) -> None:
        """Raise RemoteOpError unless `mode` access is allowed remotely."""
        await self.tunnel.call(FsAccess(path, mode))

    async def readlink(self, path: str) -> str:
        """A remote symlink's target."""
        return (await self.tunnel.call(FsReadlink(path))).target

    async def listdir(self, path: str) -> list[tuple[str, int, int]]:
        """A remote directory's entries: (name, d_type, inode) each."""
        return (await self.tunnel.call(FsListdir(path))).entries

    async def mkdir(self, path: str, mode: int) -> None:
        """mkdir(2) on the pod."""
        await self.tunnel.call(FsMkdir(path, mode))

    async def rmdir(self, path: str) -> None:
        """rmdir(2) on the pod."""
        await self.tunnel.call(FsRmdir(path))

    async def unlink(self, path: str) -> None:
        """unlink(2) on the pod."""
        await self.tunnel.call(FsUnlink(path))

    async def write_back(self, path: str, fd: int) -> None:
        """Replace the remote file's content with our fd's (write mode's close)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        handle = (await self.tunnel.call(FsOpen(path, flags, 0o644))).handle
        try:
            offset = 0
            while chunk := os.pread(fd, CHUNK, offset):
                await self.tunnel.call(FsWrite(handle, chunk, offset))
                offset += len(chunk)
        finally:
            await self.tunnel.call(FsClose(handle))
