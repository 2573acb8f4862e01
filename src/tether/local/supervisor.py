"""The seccomp supervisor: answers the intercepted process tree's trapped syscalls.

Runs on tether's event loop: the listener fd is watched with `add_reader`; each notification is
decided at once when it can be (CONTINUE for local files, an errno, a write-back of emulated
results) and handed to a task when it needs the agent (remote files, outgoing connects).
Replies may go out of order: each carries its notification id. Nothing here may raise out of
a handler: a dead supervisor would make every trapped syscall fail with ENOSYS.
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
from typing import Any, Literal

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
from tether.local.outgoing import OutgoingProxy, UdpProxy
from tether.local.progress import Progress
from tether.local.remote_fs import RemoteFiles
from tether.local.rules import FileAction, FileRules, NetRules, Side
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError

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


def _i32(value: int) -> int:
    """A syscall argument (u64) as the C int it holds."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _mirror_listing(entries: list[tuple[str, int, int]]) -> str:
    """A new local directory holding an empty entry of the right type per remote entry."""
    view = tempfile.mkdtemp(prefix="tether-dir-")
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
        pod_ip: str | None = None,
    ) -> None:
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
        self.nameservers = nameservers
        self.remote = RemoteFiles(tunnel)
        self.listening: set[int] = set()
        # Called on the event loop with each TCP port the process starts listening on.
        self.on_listen: Callable[[int], None] | None = None
        self.peers: dict[int, tuple[int, str, int]] = {}  # socket inode -> original peer
        self.failure: BaseException | None = None
        # Files open for writing on the pod: (tgid, fd in the process) -> path, and every such
        # file's memfd (ours) by path, written back on close and once more when the tree exits
        # (a process may exit, or dup2 and close, without a close of the fd it opened).
        self.writable: dict[tuple[int, int], str] = {}
        self.written: dict[str, tuple[int, int]] = {}  # path -> (our memfd, create mode)
        # Remote directories opened for listing are mirrored as local directories of empty
        # entries (getdents then works natively); paths relative to such a directory fd map
        # back to the remote directory.
        self.dir_views: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
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
        self.count = 0
        self.by_nr: collections.Counter[int] = collections.Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.on_fatal: Callable[[], None] | None = None
        self.fatal = False
        self._poll = select.poll()
        self._poll.register(listener.fileno(), select.POLLIN)

    # -- loop integration ------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving notifications: a dedicated thread receives them and answers the
        quick ones itself; anything that needs the agent becomes a task on `loop`.

        Why a thread and not the event loop: a notification is exposed to signals until it is
        received (a caller without SA_RESTART then sees EINTR), and most of them (stat and open
        of local files during start-up) are answered with CONTINUE; a thread parked in poll()
        takes them without waiting for the loop to get round to it.
        """
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="tether-supervisor", daemon=True)
        self._thread.start()

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop serving (the process tree is gone)."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        for task in list(self._tasks):
            task.cancel()

    def _run(self) -> None:
        try:
            self._loop_notifications()
        except Exception as exc:
            # Without a supervisor every trapped call would fail with ENOSYS or hang: end the
            # process tree rather than leave it half-working, and say why.
            log.exception("the supervisor thread failed")
            self.failure = exc
            self.fatal = True
            if self.on_fatal is not None:
                self.on_fatal()

    def _loop_notifications(self) -> None:
        while not self._stopping:
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
        try:
            notif = self.listener.receive()
            if notif is None:
                return
            self.count += 1
            self.by_nr[notif.nr] += 1
            handler = self._handlers.get(notif.nr)
            if handler is None:
                self.listener.respond_continue(notif.id)
                return
            try:
                handler(notif)
            except OSError as exc:
                # The target vanished mid-way (ESRCH), or its memory was unreadable (EFAULT).
                self.listener.respond_error(notif.id, exc.errno or errno.EIO)
        except Exception as exc:  # the supervisor must not die: record and keep serving
            log.exception("supervisor error")
            self.failure = exc

    def _spawn(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` on the loop (from the supervisor thread); errors become errno answers."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._spawn_now, notif, coro)

    def _spawn_now(self, notif: Notification, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
            except RemoteOpError as exc:
                self.listener.respond_error(notif.id, exc.error.errno or errno.EIO)
            except TunnelClosedError:
                self.listener.respond_error(notif.id, errno.EIO)
            except OSError as exc:
                self.listener.respond_error(notif.id, exc.errno or errno.EIO)
            except Exception as exc:
                log.exception("supervisor task error")
                self.failure = exc
                self.listener.respond_error(notif.id, errno.EIO)

        task = asyncio.ensure_future(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- paths -------------------------------------------------------------------------------

    def _path(self, notif: Notification, dirfd_arg: int | None, path_arg: int) -> str:
        """The absolute, normalised path a call names (dirfd-relative and cwd-relative too)."""
        raw = read_cstring(notif.pid, notif.args[path_arg]).decode(errors="surrogateescape")
        if raw.startswith("/"):
            return posixpath.normpath(raw)
        dirfd = AT_FDCWD if dirfd_arg is None else _i32(notif.args[dirfd_arg])
        if dirfd == AT_FDCWD:
            base = str(Path(f"/proc/{notif.pid}/cwd").readlink())
        else:
            base = str(Path(f"/proc/{tgid_of(notif.pid)}/fd/{dirfd}").readlink())
            base = self.dir_views.get(base, base)
        return posixpath.normpath(posixpath.join(base, raw)) if raw else base

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
        action = self.files.decide(path, write=write)
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
        elif path in self.written:
            # Written in this session and maybe not sent back yet (a dup2 closes without a
            # close call): read our copy, so the process sees its own writes.
            self._serve_bytes(notif, _memfd_bytes(self.written[path][0]), flags)
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
        if exists and not flags & os.O_TRUNC:
            fd = await self.remote.read_into_memfd(path)
        else:
            fd = os.memfd_create(PurePosixPath(path).name or "tether", os.MFD_CLOEXEC)
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
        entries = await self.tunnel.request("fs.listdir", {"path": path})
        view = _mirror_listing(entries)
        self.dir_views[view] = path
        fd = os.open(view, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            self.listener.add_fd(notif.id, fd, cloexec=bool(flags & os.O_CLOEXEC))
        finally:
            os.close(fd)

    def cleanup(self) -> None:
        """Remove the local mirrors of remote directories."""
        for view in self.dir_views:
            shutil.rmtree(view, ignore_errors=True)
        self.dir_views.clear()

    def _close(self, notif: Notification) -> None:
        key = (tgid_of(notif.pid), _i32(notif.args[0]))
        path = self.writable.pop(key, None)
        if path is None or path not in self.written:
            self.listener.respond_continue(notif.id)
            return

        async def write_back() -> None:
            await self.remote.write_back(path, self.written[path][0])
            self.listener.respond_continue(notif.id)

        self._spawn(notif, write_back())

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
        if self.files.decide(path, write=True) is not FileAction.REMOTE_RW:
            self.listener.respond_continue(notif.id)
            return
        if nr in (Syscall.mkdir, Syscall.mkdirat):
            op, args = "fs.mkdir", {"path": path, "mode": mode & 0o7777}
        elif nr == Syscall.rmdir or (nr == Syscall.unlinkat and flags & 0x200):  # AT_REMOVEDIR
            op, args = "fs.rmdir", {"path": path}
        else:
            op, args = "fs.unlink", {"path": path}

        async def remote_change() -> None:
            await self.tunnel.request(op, args)
            entry = self.written.pop(path, None) if op == "fs.unlink" else None
            if entry is not None:
                os.close(entry[0])
            self.listener.respond_value(notif.id, 0)

        self._spawn(notif, remote_change())

    # -- stat, access, readlink --------------------------------------------------------------

    def _answered_here(self, notif: Notification, path: str) -> bool:
        """Answer a metadata call that needs no agent (ENOENT for `not_found`, CONTINUE for a
        local or served path); False when the path is the pod's."""
        action = self.files.decide(path, write=False)
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
        dup = dup_from(notif.pid, _i32(notif.args[0]))
        sock = socket.socket(fileno=dup)
        try:
            kind = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
        except OSError:
            sock.close()
            raise
        proto: Literal["tcp", "udp"] = "tcp" if kind == socket.SOCK_STREAM else "udp"
        if self.dns_proxy is not None and port == 53 and host in self.nameservers:
            self._connect_dns(notif, sock, proto, family, host)
            return
        if kind not in (socket.SOCK_STREAM, socket.SOCK_DGRAM) or (
            self.net.decide(host, port, hostname=None, proto=proto) is Side.LOCAL
        ):
            sock.close()
            self.listener.respond_continue(notif.id)
            return
        self._spawn(notif, self._connect_remote(notif, sock, family, host, port))

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
        loopback connect itself failed (the errno has been answered)."""
        blocking = os.get_blocking(sock.fileno())
        # An IPv6 socket reaches our IPv4 loopback endpoints through the v4-mapped address.
        target = "::ffff:127.0.0.1" if sock.family == socket.AF_INET6 else "127.0.0.1"
        # Register the source port before connecting: the endpoint may accept (on the event
        # loop thread) before this thread gets past connect.
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

    def _connect_dns(
        self, notif: Notification, sock: socket.socket, proto: str, family: int, host: str
    ) -> None:
        """Point a DNS connection at the local DNS responder (local-name patterns are set)."""
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

    def _getpeername(self, notif: Notification) -> None:
        dup = dup_from(notif.pid, _i32(notif.args[0]))
        try:
            peer = self.peers.get(os.fstat(dup).st_ino)
        finally:
            os.close(dup)
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
        if not self.pod_ip:
            self.listener.respond_continue(notif.id)
            return
        with socket.socket(fileno=dup_from(notif.pid, _i32(notif.args[0]))) as sock:
            peer = self.peers.get(os.fstat(sock.fileno()).st_ino)
            local = sock.getsockname() if peer is not None else None
        if peer is None or not isinstance(local, tuple) or peer[0] != socket.AF_INET:
            self.listener.respond_continue(notif.id)
            return
        self._answer_sockaddr(notif, pack_sockaddr(socket.AF_INET, self.pod_ip, int(local[1])))

    def _listen(self, notif: Notification) -> None:
        try:
            with socket.socket(fileno=dup_from(notif.pid, _i32(notif.args[0]))) as sock:
                name = sock.getsockname()
            if isinstance(name, tuple) and len(name) >= 2:
                port = int(name[1])
                self.listening.add(port)
                self.progress.detail(f"the process listens on port {port}")
                if port and self.on_listen is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self.on_listen, port)
        finally:
            self.listener.respond_continue(notif.id)

    def _uname(self, notif: Notification) -> None:
        fields = list(os.uname())
        fields[1] = self.hostname
        data = b"".join(
            f.encode()[: _UTSNAME_FIELD - 1].ljust(_UTSNAME_FIELD, b"\0") for f in fields
        )
        data += b"\0" * _UTSNAME_FIELD  # domainname
        write_bytes(notif.pid, notif.args[0], data)
        self.listener.respond_value(notif.id, 0)
