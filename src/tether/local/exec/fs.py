"""The intercepted process's file calls: open, stat, access, readlink, close, and the calls
that change the directory tree, each served on the side `FileRules` picks.

A local path is CONTINUEd (the kernel does the call). A file tether serves (`served`) opens
as a memfd of its bytes. On the pod's side, a file opens as a memfd of its content, a
directory as a local mirror of empty entries (`DirViews`, so getdents works natively), a
file open for writing as a memfd the `WriteBackStore` sends back, and a metadata call is
answered with what the agent says. Every agent call goes through `RemoteFiles`.

Threads: the public methods run on the supervisor thread and decide only from state that
never changes (the rules, the served files, the views' root); anything that needs the agent,
the store or the views' counter is a coroutine the dispatcher runs on the event loop, which
owns that state.
"""

import errno
import os
import posixpath
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from tether.intercept.memory import pack_stat, pack_statx, tgid_of, write_bytes
from tether.intercept.seccomp import Notification
from tether.local.exec.dispatcher import Dispatcher
from tether.local.exec.remote_fs import RemoteFiles
from tether.local.exec.syscalls import (
    AT_FDCWD,
    Access,
    Close,
    Mkdir,
    Open,
    Readlink,
    Rmdir,
    Stat,
    Unlink,
)
from tether.local.exec.views import DirViews
from tether.local.exec.writeback import WriteBackStore, is_write_memfd, memfd_bytes
from tether.local.policy.rules import FileAction, FileRules
from tether.local.session.progress import Progress
from tether.tunnel import RemoteOpError

_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class FileCalls:
    """Serves the file calls of one process tree through `dispatcher`."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        remote: RemoteFiles,
        rules: FileRules,
        served: Mapping[str, bytes],
        progress: Progress,
    ) -> None:
        self.dispatcher = dispatcher
        self.listener = dispatcher.listener
        self.remote = remote
        self.rules = rules
        self.served = served
        self.progress = progress
        self.views = DirViews()
        self.writes = WriteBackStore(remote)

    # -- paths -------------------------------------------------------------------------------

    def _path(self, notif: Notification, dirfd: int, raw: str) -> str:
        """The absolute, normalised path a call names (dirfd-relative and cwd-relative too),
        with a path inside a view of a remote directory mapped back to the remote one."""
        if raw.startswith("/"):
            path = posixpath.normpath(raw)
        else:
            if dirfd == AT_FDCWD:
                base = str(Path(f"/proc/{notif.pid}/cwd").readlink())
            else:
                base = str(Path(f"/proc/{tgid_of(notif.pid)}/fd/{dirfd}").readlink())
            path = posixpath.normpath(posixpath.join(base, raw)) if raw else base
        return self.views.source(path) or path

    def _cwd_of(self, notif: Notification) -> str | None:
        """The calling thread's current directory, None if unknown or a remote directory's
        view (which is the pod's, not a local place)."""
        try:
            cwd = str(Path(f"/proc/{notif.pid}/cwd").readlink())
        except OSError:
            return None
        return None if self.views.source(cwd) is not None else posixpath.normpath(cwd)

    def _decide(self, notif: Notification, path: str, *, write: bool) -> FileAction:
        return self.rules.decide(path, write=write, cwd=lambda: self._cwd_of(notif))

    def _install(self, notif: Notification, fd: int, flags: int) -> None:
        """Answer with a copy of our `fd` in the process, and close ours."""
        try:
            self.listener.add_fd(notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)

    # -- open --------------------------------------------------------------------------------

    def open(self, notif: Notification, call: Open) -> None:
        """open, openat, openat2."""
        path = self._path(notif, call.dirfd, call.path)
        flags = call.flags
        write = bool(flags & _WRITE_FLAGS)
        served = self.served.get(path)
        if served is not None and not write:
            self._serve_bytes(notif, served, flags)
            return
        action = self._decide(notif, path, write=write)
        if action is FileAction.LOCAL:
            self.listener.respond_continue(notif.id)
        elif action is FileAction.NOT_FOUND:
            self.listener.respond_error(notif.id, errno.ENOENT)
        elif write and action is FileAction.REMOTE_READ:
            self.listener.respond_error(notif.id, errno.EROFS)
        elif write:
            self.dispatcher.spawn(notif, self._open_for_write(notif, path, flags, call.mode))
        elif flags & os.O_DIRECTORY:
            self.dispatcher.spawn(notif, self._open_remote_dir(notif, path, flags))
        else:
            self.dispatcher.spawn(notif, self._open_remote(notif, path, flags))

    def _serve_bytes(self, notif: Notification, data: bytes, flags: int) -> None:
        fd = os.memfd_create("tether", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
        except BaseException:
            os.close(fd)
            raise
        self._install(notif, fd, flags)

    async def _open_remote(self, notif: Notification, path: str, flags: int) -> None:
        written = self.writes.copy(path)
        if written is not None:
            # Written in this session and maybe not sent back yet (a dup2 closes without a
            # close call): read our copy, so the process sees its own writes.
            self._serve_bytes(notif, memfd_bytes(written), flags)
            return
        try:
            st = await self.remote.stat(path, follow=True)
        except RemoteOpError as exc:
            self.listener.respond_error(notif.id, exc.error.errno or errno.ENOENT)
            return
        if stat.S_ISDIR(st["st_mode"]):
            await self._open_remote_dir(notif, path, flags)
            return
        self._install(notif, await self.remote.read_into_memfd(path), flags)

    async def _open_for_write(self, notif: Notification, path: str, flags: int, mode: int) -> None:
        """A writable memfd holding the remote file (empty if truncated or new); its content
        goes back to the pod when the process closes it and when the process tree exits."""
        exists = True
        try:
            st = await self.remote.stat(path, follow=True)
            if stat.S_ISDIR(st["st_mode"]):
                self.listener.respond_error(notif.id, errno.EISDIR)
                return
        except RemoteOpError as exc:
            if exc.error.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            exists = False
        if exists and flags & os.O_CREAT and flags & os.O_EXCL:
            self.listener.respond_error(notif.id, errno.EEXIST)
            return
        fd = await self.writes.open(path, flags, mode, exists=exists)
        # Install the fd first and answer only once it is registered: answering at once
        # (ADDFD_FLAG_SEND) lets the process write and close it before the store knows it,
        # and that close would then skip the write-back.
        target_fd = self.listener.add_fd(
            notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC), send=False
        )
        if target_fd is not None:
            self.writes.track((tgid_of(notif.pid), target_fd), path)
            self.listener.respond_value(notif.id, target_fd)

    async def _open_remote_dir(self, notif: Notification, path: str, flags: int) -> None:
        view = self.views.mirror(path, await self.remote.listdir(path))
        self._install(notif, os.open(view, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), flags)

    # -- close and the tree ------------------------------------------------------------------

    def close(self, notif: Notification, call: Close) -> None:
        """close: only that of one of the store's memfds needs the loop (which owns the
        store); /proc tells which fds those are without asking it."""
        try:
            target = str(Path(f"/proc/{notif.pid}/fd/{call.fd}").readlink())
        except OSError:
            target = ""
        if not is_write_memfd(target):
            self.listener.respond_continue(notif.id)
            return
        self.dispatcher.spawn(notif, self._close_written(notif, (tgid_of(notif.pid), call.fd)))

    async def _close_written(self, notif: Notification, key: tuple[int, int]) -> None:
        await self.writes.close(key)
        self.listener.respond_continue(notif.id)

    def change(self, notif: Notification, call: Mkdir | Rmdir | Unlink) -> None:
        """mkdir, rmdir, unlink (and their *at forms): done on the pod for a read-write path."""
        path = self._path(notif, call.dirfd, call.path)
        if self._decide(notif, path, write=True) is not FileAction.REMOTE_RW:
            self.listener.respond_continue(notif.id)
            return

        async def remote_change() -> None:
            if isinstance(call, Mkdir):
                await self.remote.mkdir(path, call.mode)
            elif isinstance(call, Rmdir):
                await self.remote.rmdir(path)
            else:
                await self.remote.unlink(path)
                self.writes.forget(path)
            self.listener.respond_value(notif.id, 0)

        self.dispatcher.spawn(notif, remote_change())

    async def flush(self) -> None:
        """Send every file written on the pod back once more (the tree has exited)."""
        await self.writes.flush(self.progress)

    def cleanup(self) -> None:
        """Remove the local mirrors of remote directories."""
        self.views.cleanup()

    # -- stat, access, readlink --------------------------------------------------------------

    def _answered_here(self, notif: Notification, path: str) -> bool:
        """Answer a metadata call that needs no agent (ENOENT for `not_found`, CONTINUE for a
        local or served path); False when the path is the pod's."""
        action = self._decide(notif, path, write=False)
        if action is FileAction.NOT_FOUND:
            self.listener.respond_error(notif.id, errno.ENOENT)
        elif path in self.served or action is FileAction.LOCAL:
            self.listener.respond_continue(notif.id)
        else:
            return False
        return True

    def stat(self, notif: Notification, call: Stat) -> None:
        """stat, lstat, newfstatat, statx."""
        if call.path is None:
            self.listener.respond_continue(notif.id)  # fstat of an fd: native
            return
        path = self._path(notif, call.dirfd, call.path)
        if not self._answered_here(notif, path):
            self.dispatcher.spawn(notif, self._stat_remote(notif, path, call))

    async def _stat_remote(self, notif: Notification, path: str, call: Stat) -> None:
        st = await self.remote.stat(path, call.follow)
        mask = call.statx_mask
        packed = pack_stat(st) if mask is None else pack_statx(st, mask)
        if self.listener.id_valid(notif.id):
            write_bytes(notif.pid, call.buf, packed)
            self.listener.respond_value(notif.id, 0)

    def access(self, notif: Notification, call: Access) -> None:
        """access, faccessat, faccessat2."""
        path = self._path(notif, call.dirfd, call.path)
        if self._answered_here(notif, path):
            return

        async def remote_access() -> None:
            await self.remote.access(path, call.mode)
            self.listener.respond_value(notif.id, 0)

        self.dispatcher.spawn(notif, remote_access())

    def readlink(self, notif: Notification, call: Readlink) -> None:
        """readlink, readlinkat."""
        path = self._path(notif, call.dirfd, call.path)
        if self._answered_here(notif, path):
            return

        async def remote_readlink() -> None:
            target = (await self.remote.readlink(path)).encode(errors="surrogateescape")
            data = target[: call.size]
            if self.listener.id_valid(notif.id):
                write_bytes(notif.pid, call.buf, data)
                self.listener.respond_value(notif.id, len(data))

        self.dispatcher.spawn(notif, remote_readlink())
