"""The seccomp supervisor: answers the intercepted process tree's trapped syscalls.

A dedicated thread receives the notifications. It decides at once whatever it can from
immutable configuration (CONTINUE for local files, an errno, a write-back of emulated
results) and hands everything else to tether's event loop as a task (remote files, outgoing
connects, anything that reads state the loop keeps). Replies may go out of order: each carries
its notification id.

Every notification gets an answer. A handler that fails on something other than an OSError
(a bug) answers with what `failure_answer` says fits the call, and the first such failure is
reported on stderr in one line. A dead supervisor would make every trapped syscall fail with
ENOSYS or hang, so if the thread itself fails the process tree is ended.

Ownership: the thread owns the receive buffer and the counters (`count`, `by_nr`, `fatal`,
`failure`), which the loop reads only after `detach` has joined it. The event loop owns
every other piece of mutable state (files open for writing, the peers of redirected sockets,
the listening ports, the error report, the tasks); the thread never touches it, and asks the
loop with `call_soon_threadsafe` instead.
"""

import asyncio
import collections
import errno
import fcntl
import logging
import os
import posixpath
import select
import shutil
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

from tether.intercept.memory import (
    dup_from,
    pack_sockaddr,
    pack_stat,
    pack_statx,
    parse_sockaddr,
    read_bytes,
    read_cstring,
    tgid_of,
    write_bytes,
)
from tether.intercept.seccomp import Listener, Notification, Syscall
from tether.local.dns_proxy import DnsProxy
from tether.local.names import NameCache, normalize_address
from tether.local.outgoing import OutgoingProxy, UdpProxy
from tether.local.progress import Progress
from tether.local.remote_fs import RemoteFiles
from tether.local.rules import FileAction, FileRules, NetRules, Side
from tether.protocol.messages import FsListdir, FsMkdir, FsRmdir, FsUnlink
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError

# unlinkat(2)'s flag: remove a directory.
AT_REMOVEDIR = 0x200
log = logging.getLogger("tether.supervisor")

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_UTSNAME_FIELD = 65
_DT_DIR = 4
_DT_LNK = 10
_DRAIN = 64

# Every syscall the filter traps. stat-like calls are trapped so remote paths exist for the
# process; uname so it sees the pod's hostname; listen so incoming traffic knows the ports.
TRAPPED = (
    Syscall.open, Syscall.openat, Syscall.openat2, Syscall.stat, Syscall.lstat,
    Syscall.newfstatat, Syscall.statx, Syscall.access, Syscall.faccessat, Syscall.faccessat2,
    Syscall.readlink, Syscall.readlinkat, Syscall.connect, Syscall.getpeername,
    Syscall.getsockname, Syscall.uname,
    Syscall.listen,
)  # fmt: skip
# With remote writes possible, close (to send a file's content back) and the calls that change
# the directory tree are trapped too.
WRITE_TRAPPED = (
    Syscall.close, Syscall.unlink, Syscall.unlinkat, Syscall.mkdir, Syscall.mkdirat,
    Syscall.rmdir,
)  # fmt: skip
# fstat-style calls (an fd, no path) are answered by the kernel without a round trip.
ALLOW_IF: dict[int, tuple[int, int]] = {
    Syscall.newfstatat: (3, AT_EMPTY_PATH),
    Syscall.statx: (2, AT_EMPTY_PATH),
}


# When handling a call fails inside tether (a bug, not the target's or the agent's error),
# the call still gets an answer. CONTINUE only where running it natively is harmless: a
# close (a pending write-back is sent again when the tree exits), the socket-name calls
# (the real loopback names), uname (the local host name), listen (incoming loses the port).
# A connect must not silently leave from this machine: ENETUNREACH. Anything else: EIO.
_CONTINUE_ON_FAILURE = frozenset(
    {Syscall.close, Syscall.getpeername, Syscall.getsockname, Syscall.uname, Syscall.listen}
)
_ERRNO_ON_FAILURE: dict[int, int] = {Syscall.connect: errno.ENETUNREACH}

# The memfds of files open for writing on the pod carry this name prefix, so the thread can
# tell from /proc which closes need the loop (the others are just CONTINUEd).
_WRITE_MEMFD: Final = "tether-w:"
_MEMFD_NAME_MAX = 249  # the kernel's limit on a memfd's name


def failure_answer(nr: int) -> int | None:
    """The errno that answers syscall `nr` when handling it failed inside tether, or None for
    CONTINUE (see `_CONTINUE_ON_FAILURE`)."""
    if nr in _CONTINUE_ON_FAILURE:
        return None
    return _ERRNO_ON_FAILURE.get(nr, errno.EIO)


def _call_name(nr: int) -> str:
    try:
        return Syscall(nr).name
    except ValueError:
        return f"syscall {nr}"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _i32(value: int) -> int:
    """A syscall argument (u64) as the C int it holds."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def view_source(path: str, views: str) -> str | None:
    """The remote directory (or path below it) that `path` mirrors, if it is inside the
    `views` directory: a view of remote directory D lives at `views/<serial>/D`."""
    if not path.startswith(views + "/"):
        return None
    _serial, slash, rest = path[len(views) + 1 :].partition("/")
    return "/" + rest if slash else "/"


def _mirror_listing(views: str, serial: int, path: str, entries: list[tuple[str, int, int]]) -> str:
    """A new local directory mirroring remote directory `path`: an empty entry of the right
    type per remote entry (getdents then works natively)."""
    view = posixpath.join(views, str(serial), path.lstrip("/"))
    Path(view).mkdir(parents=True)
    for name, dtype, _ino in entries:
        if "/" in name or name in (".", ".."):
            continue
        entry = Path(view, name)
        if dtype == _DT_DIR:
            entry.mkdir()
        elif dtype == _DT_LNK:
            entry.symlink_to(".")
        else:
            entry.touch()
    return view


def _memfd_bytes(fd: int) -> bytes:
    """The whole content of one of our memfds (without moving its shared offset)."""
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _write_memfd_name(path: str) -> str:
    return (_WRITE_MEMFD + (PurePosixPath(path).name or "file"))[:_MEMFD_NAME_MAX]


class Supervisor:
    """Serves one intercepted process tree."""

    def __init__(
        self,
        listener: Listener,
        tunnel: Tunnel,
        files: FileRules,
        net: NetRules,
        proxy: OutgoingProxy,
        udp: UdpProxy,
        progress: Progress,
        *,
        hostname: str,
        served: dict[str, bytes],
        dns_proxy: DnsProxy | None = None,
        nameservers: frozenset[str] = frozenset(),
        names: NameCache | None = None,
        pod_ip: str | None = None,
    ) -> None:
        # Set here and never changed: read by both threads (the rules' caches are lru_caches,
        # which stay coherent under concurrent use).
        self.listener = listener
        self.tunnel = tunnel
        self.files = files
        self.net = net
        self.proxy = proxy
        self.udp = udp
        self.progress = progress
        self.hostname = hostname
        self.served = served
        self.dns_proxy = dns_proxy
        self.pod_ip = pod_ip
        self.nameservers = frozenset(normalize_address(n) for n in nameservers)
        self.names = names
        self.remote = RemoteFiles(tunnel)
        # Remote directories opened for listing are mirrored under here as local directories
        # of empty entries; a path inside one maps back to the remote directory (view_source).
        self.views = tempfile.mkdtemp(prefix="tether-views-")
        # The loopback ports of our relays: a socket connected to one was redirected (set by
        # attach, before the thread starts).
        self._relay_ports: frozenset[int] = frozenset()
        self._handlers: dict[int, Callable[[Notification], None]] = {
            Syscall.open: self._open,
            Syscall.openat: self._open,
            Syscall.openat2: self._open,
            Syscall.stat: self._stat,
            Syscall.lstat: self._stat,
            Syscall.newfstatat: self._stat,
            Syscall.statx: self._stat,
            Syscall.access: self._access,
            Syscall.faccessat: self._access,
            Syscall.faccessat2: self._access,
            Syscall.readlink: self._readlink,
            Syscall.readlinkat: self._readlink,
            Syscall.connect: self._connect,
            Syscall.getpeername: self._getpeername,
            Syscall.getsockname: self._getsockname,
            Syscall.uname: self._uname,
            Syscall.listen: self._listen,
            Syscall.close: self._close,
            Syscall.unlink: self._tree_change,
            Syscall.unlinkat: self._tree_change,
            Syscall.mkdir: self._tree_change,
            Syscall.mkdirat: self._tree_change,
            Syscall.rmdir: self._tree_change,
        }
        # Called on the event loop with each TCP port the process starts listening on.
        self.on_listen: Callable[[int], None] | None = None
        # Called on the supervisor thread if it fails (end the process tree).
        self.on_fatal: Callable[[], None] | None = None

        # Owned by the supervisor thread; the loop reads them only after detach().
        self.count = 0
        self.by_nr: collections.Counter[int] = collections.Counter()
        self.fatal = False
        self.failure: BaseException | None = None
        self._poll = select.poll()
        self._poll.register(listener.fileno(), select.POLLIN)

        # Owned by the event loop.
        self.listening: set[int] = set()
        self.peers: dict[int, tuple[int, str, int]] = {}  # socket inode -> original peer
        # Files open for writing on the pod: (tgid, fd in the process) -> path, and every such
        # file's memfd (ours) by path, written back on close and once more when the tree exits
        # (a process may exit, or dup2 and close, without a close of the fd it opened).
        self.writable: dict[tuple[int, int], str] = {}
        self.written: dict[str, tuple[int, int]] = {}  # path -> (our memfd, create mode)
        self.internal_errors = 0
        self._view_serial = 0
        self._tasks: set[asyncio.Task[None]] = set()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- loop integration ------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving notifications: a dedicated thread receives them and answers the
        quick ones itself; anything that needs the agent or the loop's state becomes a task
        on `loop`.

        Why a thread and not the event loop: a notification is exposed to signals until it is
        received (a caller without SA_RESTART then sees EINTR), and most of them (stat and open
        of local files during start-up) are answered with CONTINUE; a thread parked in poll()
        takes them without waiting for the loop to get round to it.
        """
        self._loop = loop
        ports = {self.proxy.port, self.udp.port}
        if self.dns_proxy is not None:
            ports |= {self.dns_proxy.tcp_port, self.dns_proxy.udp_port}
        self._relay_ports = frozenset(ports - {0})
        self._thread = threading.Thread(target=self._run, name="tether-supervisor", daemon=True)
        self._thread.start()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop serving (the process tree is gone)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        for task in list(self._tasks):
            task.cancel()

    def _run(self) -> None:
        try:
            self._loop_notifications()
        except Exception as exc:
            # Without a supervisor every trapped call would fail with ENOSYS or hang: end the
            # process tree rather than leave it half-working (run_exec says why).
            log.debug("the supervisor thread failed", exc_info=exc)
            self.failure = exc
            self.fatal = True
            if self.on_fatal is not None:
                self.on_fatal()

    def _loop_notifications(self) -> None:
        while not self._stopping.is_set():
            events = self._poll.poll(100)
            if not events:
                continue
            if not any(mask & select.POLLIN for _, mask in events):
                if any(mask & (select.POLLHUP | select.POLLERR) for _, mask in events):
                    return  # every intercepted task is gone
                continue
            for _ in range(_DRAIN):
                self._serve_one()
                if not self._poll.poll(0):
                    break

    def _serve_one(self) -> None:
        # A receive that fails (other than for a target gone or a signal) is fatal: _run.
        notif = self.listener.receive()
        if notif is None:
            return
        self.count += 1
        self.by_nr[notif.nr] += 1
        handler = self._handlers.get(notif.nr)
        try:
            if handler is None:
                self.listener.respond_continue(notif.id)
            else:
                handler(notif)
        except OSError as exc:
            # The target vanished mid-way (ESRCH), or its memory was unreadable (EFAULT).
            self._answer_errno(notif, exc.errno or errno.EIO)
        except Exception as exc:
            self._answer_failure(notif)
            self._to_loop(self._report, notif.nr, exc)

    def _answer_errno(self, notif: Notification, err: int) -> None:
        try:
            self.listener.respond_error(notif.id, err)
        except OSError as exc:
            log.debug("could not answer %s", notif, exc_info=exc)

    def _answer_failure(self, notif: Notification) -> None:
        """Answer a call whose handling failed inside tether (from either thread)."""
        answer = failure_answer(notif.nr)
        try:
            if answer is None:
                self.listener.respond_continue(notif.id)
            else:
                self.listener.respond_error(notif.id, answer)
        except OSError as exc:
            log.debug("could not answer %s", notif, exc_info=exc)

    def _report(self, nr: int, exc: BaseException) -> None:
        """Count an internal error (on the loop); the first one is shown, in one line."""
        self.internal_errors += 1
        log.debug("internal error handling %s", _call_name(nr), exc_info=exc)
        if self.internal_errors > 1:
            return
        answer = failure_answer(nr)
        how = (
            "let it run untrapped"
            if answer is None
            else f"failed it with {errno.errorcode[answer]}"
        )
        self.progress.warn(
            f"internal error handling {_call_name(nr)} ({_one_line(exc)}); tether {how}"
            " (later internal errors are counted, not shown)"
        )

    def _to_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run `callback(*args)` on the event loop (from the supervisor thread)."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: tether is exiting
            log.debug("event loop closed; dropped %s", callback)

    def _spawn(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the loop (from the supervisor thread); errors become errno answers."""
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._spawn_now, notif, coro)
        except BaseException:
            coro.close()
            raise

    def _spawn_now(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except RemoteOpError as exc:
                self._answer_errno(notif, exc.error.errno or errno.EIO)
            except TunnelClosedError:
                self._answer_errno(notif, errno.EIO)
            except OSError as exc:
                self._answer_errno(notif, exc.errno or errno.EIO)
            except Exception as exc:
                self._answer_failure(notif)
                self._report(notif.nr, exc)

        try:
            task = asyncio.ensure_future(guarded())
        except Exception as exc:  # a callback's error would only be logged: answer here
            coro.close()
            self._answer_failure(notif)
            self._report(notif.nr, exc)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- paths -------------------------------------------------------------------------------

    def _path(self, notif: Notification, dirfd_arg: int | None, path_arg: int) -> str:
        """The absolute, normalised path a call names (dirfd-relative and cwd-relative too),
        with a path inside a view of a remote directory mapped back to the remote one."""
        raw = read_cstring(notif.pid, notif.args[path_arg]).decode(errors="surrogateescape")
        if raw.startswith("/"):
            path = posixpath.normpath(raw)
        else:
            dirfd = AT_FDCWD if dirfd_arg is None else _i32(notif.args[dirfd_arg])
            if dirfd == AT_FDCWD:
                base = str(Path(f"/proc/{notif.pid}/cwd").readlink())
            else:
                base = str(Path(f"/proc/{tgid_of(notif.pid)}/fd/{dirfd}").readlink())
            path = posixpath.normpath(posixpath.join(base, raw)) if raw else base
        return view_source(path, self.views) or path

    def _cwd_of(self, notif: Notification) -> str | None:
        """The calling thread's current directory, None if unknown or a remote directory's
        view (which is the pod's, not a local place)."""
        try:
            cwd = str(Path(f"/proc/{notif.pid}/cwd").readlink())
        except OSError:
            return None
        return None if view_source(cwd, self.views) is not None else posixpath.normpath(cwd)

    def _decide(self, notif: Notification, path: str, *, write: bool) -> FileAction:
        return self.files.decide(path, write=write, cwd=lambda: self._cwd_of(notif))

    # -- open --------------------------------------------------------------------------------

    def _open(self, notif: Notification) -> None:
        nr = notif.nr
        if nr == Syscall.open:
            path = self._path(notif, None, 0)
            flags = notif.args[1]
        elif nr == Syscall.openat:
            path = self._path(notif, 0, 1)
            flags = notif.args[2]
        else:  # openat2: flags live in struct open_how
            path = self._path(notif, 0, 1)
            flags = struct.unpack("<Q", read_bytes(notif.pid, notif.args[2], 8))[0]
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
            mode = notif.args[2] if nr == Syscall.open else notif.args[3]
            self._spawn(notif, self._open_for_write(notif, path, flags, mode & 0o7777))
        elif flags & os.O_DIRECTORY:
            self._spawn(notif, self._open_remote_dir(notif, path, flags))
        else:
            self._spawn(notif, self._open_remote(notif, path, flags))

    def _serve_bytes(self, notif: Notification, data: bytes, flags: int) -> None:
        fd = os.memfd_create("tether", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            self.listener.add_fd(notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)

    async def _open_remote(self, notif: Notification, path: str, flags: int) -> None:
        written = self.written.get(path)
        if written is not None:
            # Written in this session and maybe not sent back yet (a dup2 closes without a
            # close call): read our copy, so the process sees its own writes.
            self._serve_bytes(notif, _memfd_bytes(written[0]), flags)
            return
        try:
            st = await self.remote.stat(path, follow=True)
        except RemoteOpError as exc:
            self.listener.respond_error(notif.id, exc.error.errno or errno.ENOENT)
            return
        if (st["st_mode"] & 0o170000) == 0o040000:
            await self._open_remote_dir(notif, path, flags)
            return
        fd = await self.remote.read_into_memfd(path)
        try:
            self.listener.add_fd(notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)

    async def _open_for_write(self, notif: Notification, path: str, flags: int, mode: int) -> None:
        """A writable memfd holding the remote file (empty if truncated or new); its content
        goes back to the pod when the process closes it and when the process tree exits."""
        exists = True
        try:
            st = await self.remote.stat(path, follow=True)
            if (st["st_mode"] & 0o170000) == 0o040000:
                self.listener.respond_error(notif.id, errno.EISDIR)
                return
        except RemoteOpError as exc:
            if exc.error.errno != errno.ENOENT or not flags & os.O_CREAT:
                raise
            exists = False
        if exists and flags & os.O_CREAT and flags & os.O_EXCL:
            self.listener.respond_error(notif.id, errno.EEXIST)
            return
        previous = self.written.get(path)
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
        previous = self.written.pop(path, None)
        if previous is not None:
            os.close(previous[0])
        self.written[path] = (fd, mode or 0o644)
        if not exists:
            await self.remote.write_back(path, fd)  # O_CREAT: the file exists from now on
        # Install the fd first and answer only once it is registered: answering at once
        # (ADDFD_FLAG_SEND) lets the process write and close it before `writable` knows it,
        # and that close would then skip the write-back.
        target_fd = self.listener.add_fd(
            notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC), send=False
        )
        if target_fd is not None:
            self.writable[(tgid_of(notif.pid), target_fd)] = path
            self.listener.respond_value(notif.id, target_fd)

    async def _open_remote_dir(self, notif: Notification, path: str, flags: int) -> None:
        entries = (await self.tunnel.call(FsListdir(path))).entries
        self._view_serial += 1
        view = _mirror_listing(self.views, self._view_serial, path, entries)
        fd = os.open(view, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.listener.add_fd(notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)

    def cleanup(self) -> None:
        """Remove the local mirrors of remote directories."""
        shutil.rmtree(self.views, ignore_errors=True)

    def _close(self, notif: Notification) -> None:
        # Only the close of one of our write memfds needs the loop (which owns `writable`);
        # /proc tells which fds those are without asking it.
        fd = _i32(notif.args[0])
        try:
            target = str(Path(f"/proc/{notif.pid}/fd/{fd}").readlink())
        except OSError:
            target = ""
        if not target.startswith("/memfd:" + _WRITE_MEMFD):
            self.listener.respond_continue(notif.id)
            return
        self._spawn(notif, self._close_written(notif, (tgid_of(notif.pid), fd)))

    async def _close_written(self, notif: Notification, key: tuple[int, int]) -> None:
        path = self.writable.pop(key, None)
        entry = None if path is None else self.written.get(path)
        if path is not None and entry is not None:
            await self.remote.write_back(path, entry[0])
        self.listener.respond_continue(notif.id)

    async def flush_writes(self) -> None:
        """Send every file written on the pod back once more (the tree has exited)."""
        for path, (fd, _mode) in list(self.written.items()):
            try:
                await self.remote.write_back(path, fd)
            except (RemoteOpError, TunnelClosedError) as exc:
                self.progress.warn(f"could not write {path} back to the pod: {exc}")
            finally:
                os.close(fd)
        self.written.clear()

    def _tree_change(self, notif: Notification) -> None:
        nr = notif.nr
        if nr in (Syscall.unlink, Syscall.mkdir, Syscall.rmdir):
            path, flags, mode = self._path(notif, None, 0), 0, notif.args[1]
        else:
            path, flags, mode = self._path(notif, 0, 1), notif.args[2], notif.args[2]
        if self._decide(notif, path, write=True) is not FileAction.REMOTE_RW:
            self.listener.respond_continue(notif.id)
            return
        change: FsMkdir | FsRmdir | FsUnlink
        if nr in (Syscall.mkdir, Syscall.mkdirat):
            change = FsMkdir(path, mode & 0o7777)
        elif nr == Syscall.rmdir or (nr == Syscall.unlinkat and flags & AT_REMOVEDIR):
            change = FsRmdir(path)
        else:
            change = FsUnlink(path)

        async def remote_change() -> None:
            await self.tunnel.call(change)
            entry = self.written.pop(path, None) if isinstance(change, FsUnlink) else None
            if entry is not None:
                os.close(entry[0])
            self.listener.respond_value(notif.id, 0)

        self._spawn(notif, remote_change())

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

    def _stat(self, notif: Notification) -> None:
        nr = notif.nr
        if nr in (Syscall.stat, Syscall.lstat):
            path_arg, dirfd_arg, flags, buf = 0, None, 0, notif.args[1]
            follow = nr == Syscall.stat
        elif nr == Syscall.newfstatat:
            path_arg, dirfd_arg, flags, buf = 1, 0, notif.args[3], notif.args[2]
            follow = not flags & AT_SYMLINK_NOFOLLOW
        else:  # statx(dirfd, path, flags, mask, buf)
            path_arg, dirfd_arg, flags, buf = 1, 0, notif.args[2], notif.args[4]
            follow = not flags & AT_SYMLINK_NOFOLLOW
        if flags & AT_EMPTY_PATH and read_bytes(notif.pid, notif.args[path_arg], 1) == b"\0":
            self.listener.respond_continue(notif.id)  # fstat of an fd: native
            return
        path = self._path(notif, dirfd_arg, path_arg)
        if not self._answered_here(notif, path):
            self._spawn(notif, self._stat_remote(notif, path, follow, buf))

    async def _stat_remote(self, notif: Notification, path: str, follow: bool, buf: int) -> None:
        st = await self.remote.stat(path, follow)
        statx = notif.nr == Syscall.statx
        packed = pack_statx(st, notif.args[3]) if statx else pack_stat(st)
        if self.listener.id_valid(notif.id):
            write_bytes(notif.pid, buf, packed)
            self.listener.respond_value(notif.id, 0)

    def _access(self, notif: Notification) -> None:
        if notif.nr == Syscall.access:
            path, mode = self._path(notif, None, 0), notif.args[1]
        else:
            path, mode = self._path(notif, 0, 1), notif.args[2]
        if self._answered_here(notif, path):
            return

        async def remote_access() -> None:
            await self.remote.access(path, mode)
            self.listener.respond_value(notif.id, 0)

        self._spawn(notif, remote_access())

    def _readlink(self, notif: Notification) -> None:
        if notif.nr == Syscall.readlink:
            path, buf, size = self._path(notif, None, 0), notif.args[1], notif.args[2]
        else:
            path, buf, size = self._path(notif, 0, 1), notif.args[2], notif.args[3]
        if self._answered_here(notif, path):
            return

        async def remote_readlink() -> None:
            target = (await self.remote.readlink(path)).encode(errors="surrogateescape")
            data = target[: _i32(size)]
            if self.listener.id_valid(notif.id):
                write_bytes(notif.pid, buf, data)
                self.listener.respond_value(notif.id, len(data))

        self._spawn(notif, remote_readlink())

    # -- network -----------------------------------------------------------------------------

    def _connect(self, notif: Notification) -> None:
        length = _i32(notif.args[2])
        if length < 2:
            self.listener.respond_continue(notif.id)
            return
        addr = parse_sockaddr(read_bytes(notif.pid, notif.args[1], min(length, 128)))
        if addr is None or len(addr) != 3:
            self.listener.respond_continue(notif.id)  # AF_UNIX and friends stay local
            return
        family, host, port = addr
        sock = socket.socket(fileno=dup_from(notif.pid, _i32(notif.args[0])))
        try:
            self._route_connect(notif, sock, family, host, port)
        except BaseException:
            sock.close()
            raise

    def _route_connect(
        self, notif: Notification, sock: socket.socket, family: int, host: str, port: int
    ) -> None:
        """Decide where a connect goes; `sock` (our dup of the app's socket) is closed, or
        handed to the task that now owns it."""
        kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        proto: Literal["tcp", "udp"] = "tcp" if kind == socket.SOCK_STREAM else "udp"
        if (
            self.dns_proxy is not None
            and port == 53
            and normalize_address(host) in self.nameservers
            and kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        ):
            self._spawn(notif, self._connect_dns(notif, sock, proto, family, host))
        elif kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            sock.close()
            self.listener.respond_continue(notif.id)
        elif self.net.needs_names(host, proto=proto):
            # The names behind the address are the loop's (the DNS proxy learns them there).
            self._spawn(notif, self._connect_by_name(notif, sock, family, host, port, proto))
        elif self.net.decide(host, port, proto=proto) is Side.LOCAL:
            sock.close()
            self.listener.respond_continue(notif.id)
        else:
            self._spawn(notif, self._connect_remote(notif, sock, family, host, port))

    async def _connect_by_name(
        self,
        notif: Notification,
        sock: socket.socket,
        family: int,
        host: str,
        port: int,
        proto: Literal["tcp", "udp"],
    ) -> None:
        names = () if self.names is None else self.names.names(host)
        if self.net.decide(host, port, hostnames=names, proto=proto) is Side.REMOTE:
            await self._connect_remote(notif, sock, family, host, port)
            return
        sock.close()
        self.listener.respond_continue(notif.id)
        shown = f"{names[0]} ({host})" if names else host
        self.progress.detail(f"{proto} {shown}:{port} -> from this machine")

    def _redirect(
        self,
        notif: Notification,
        sock: socket.socket,
        loopback_port: int,
        peer: tuple[int, str, int],
        register: Callable[[int], None],
    ) -> bool:
        """Connect the app's socket (through our dup, which shares its open file description)
        to one of our loopback endpoints, hand its source port to `register`, remember the
        peer for getpeername, and answer the connect as the kernel would. False if the
        loopback connect itself failed (the errno has been answered). On the loop only."""
        blocking = os.get_blocking(sock.fileno())
        # An IPv6 socket reaches our IPv4 loopback endpoints through the v4-mapped address.
        target = "::ffff:127.0.0.1" if sock.family == socket.AF_INET6 else "127.0.0.1"
        # Register the source port before connecting: the endpoint must know it when it
        # accepts, which a non-blocking connect lets happen before we are past connect_ex.
        source = int(sock.getsockname()[1])
        if source == 0:
            sock.bind((target, 0))
            source = int(sock.getsockname()[1])
        register(source)
        self.peers[os.fstat(sock.fileno()).st_ino] = peer
        err = sock.connect_ex((target, loopback_port))
        if err not in (0, errno.EINPROGRESS, errno.EISCONN):
            self.listener.respond_error(notif.id, err)
            return False
        if blocking or err != errno.EINPROGRESS:
            self.listener.respond_value(notif.id, 0)
        else:
            self.listener.respond_error(notif.id, errno.EINPROGRESS)
        return True

    async def _connect_dns(
        self, notif: Notification, sock: socket.socket, proto: str, family: int, host: str
    ) -> None:
        """Point a connection to one of the process's nameservers at the DNS proxy."""
        dns_proxy = self.dns_proxy
        assert dns_proxy is not None
        port = dns_proxy.tcp_port if proto == "tcp" else dns_proxy.udp_port
        with sock:
            self._redirect(
                notif, sock, port, (family, host, 53), lambda src: dns_proxy.expect(src, (host, 53))
            )

    async def _connect_remote(
        self, notif: Notification, sock: socket.socket, family: int, host: str, port: int
    ) -> None:
        """TCP or connected UDP through the pod: the stream first (so a refused destination
        fails the connect with its errno), then the socket to our loopback relay."""
        with sock:
            udp = sock.type == socket.SOCK_DGRAM
            kind = "udp" if udp else "tcp"
            stream = await self.tunnel.open_stream(kind, {"host": host, "port": port})
            if not self.listener.id_valid(notif.id):
                stream.reset("ECONNABORTED", "the application gave up", 103)
                return
            relay: OutgoingProxy | UdpProxy = self.udp if udp else self.proxy
            if self._redirect(
                notif, sock, relay.port, (family, host, port), lambda src: relay.expect(src, stream)
            ):
                self.progress.detail(f"{kind} {host}:{port} -> via the pod")
            else:
                stream.reset("ECONNABORTED", "loopback relay unreachable", 103)

    def _redirected(self, notif: Notification) -> tuple[int, int] | None:
        """(inode, local port) of the call's socket if it is connected to one of our relays
        (only those have a peer in `peers`); None for any other fd."""
        with socket.socket(fileno=dup_from(notif.pid, _i32(notif.args[0]))) as sock:
            if sock.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            try:
                peer = sock.getpeername()
                local = sock.getsockname()
            except OSError:
                return None  # not connected: the kernel's answer is the truth
            if peer[1] not in self._relay_ports or normalize_address(peer[0]) != "127.0.0.1":
                return None
            return os.fstat(sock.fileno()).st_ino, int(local[1])

    def _getpeername(self, notif: Notification) -> None:
        found = self._redirected(notif)
        if found is None:
            self.listener.respond_continue(notif.id)
            return
        self._spawn(notif, self._answer_peer(notif, found[0]))

    async def _answer_peer(self, notif: Notification, inode: int) -> None:
        peer = self.peers.get(inode)
        if peer is None:
            self.listener.respond_continue(notif.id)
            return
        self._answer_sockaddr(notif, pack_sockaddr(*peer))

    def _answer_sockaddr(self, notif: Notification, data: bytes) -> None:
        """Complete getpeername/getsockname(fd, addr, addrlen) with `data`, truncated to the
        room the caller gave, as the kernel does."""
        (room,) = struct.unpack("<i", read_bytes(notif.pid, notif.args[2], 4))
        write_bytes(notif.pid, notif.args[1], data[: max(0, room)])
        write_bytes(notif.pid, notif.args[2], struct.pack("<i", len(data)))
        self.listener.respond_value(notif.id, 0)

    def _getsockname(self, notif: Notification) -> None:
        """A redirected socket's local address is the pod's IP (with the real local port), as
        the connection would have had from the pod."""
        found = self._redirected(notif) if self.pod_ip else None
        if found is None:
            self.listener.respond_continue(notif.id)
            return
        self._spawn(notif, self._answer_sockname(notif, *found))

    async def _answer_sockname(self, notif: Notification, inode: int, local_port: int) -> None:
        peer = self.peers.get(inode)
        if peer is None or peer[0] != socket.AF_INET or not self.pod_ip:
            self.listener.respond_continue(notif.id)
            return
        self._answer_sockaddr(notif, pack_sockaddr(socket.AF_INET, self.pod_ip, local_port))

    def _listen(self, notif: Notification) -> None:
        try:
            with socket.socket(fileno=dup_from(notif.pid, _i32(notif.args[0]))) as sock:
                name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                self._to_loop(self._listened, int(name[1]))
        finally:
            self.listener.respond_continue(notif.id)

    def _listened(self, port: int) -> None:
        self.listening.add(port)
        self.progress.detail(f"the process listens on port {port}")
        if port and self.on_listen is not None:
            self.on_listen(port)

    def _uname(self, notif: Notification) -> None:
        fields = list(os.uname())
        fields[1] = self.hostname
        data = b"".join(
            f.encode()[: _UTSNAME_FIELD - 1].ljust(_UTSNAME_FIELD, b"\0") for f in fields
        )
        data += b"\0" * _UTSNAME_FIELD  # domainname
        write_bytes(notif.pid, notif.args[0], data)
        self.listener.respond_value(notif.id, 0)
