"""Worker threads that live in the target's network namespace.

setns(2) changes the namespace of the calling thread only, and a socket stays in the namespace
it was created in. So the event loop thread stays in the agent's own namespace (where it listens
for the client) while sockets made by these workers reach what the target pod reaches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000

_libc: ctypes.CDLL | None = None


def setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (os.setns arrives only in Python 3.12)."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def enter_netns(fd: int) -> None:
    """Move the calling thread into the network namespace `fd`, unless it is there already.

    An ephemeral agent lives in its target's namespace, and setns(2) asks CAP_SYS_ADMIN
    even to enter the namespace one is in: that capability it does not have.
    """
    mine = Path("/proc/thread-self/ns/net").stat()
    theirs = os.fstat(fd)
    if (mine.st_dev, mine.st_ino) != (theirs.st_dev, theirs.st_ino):
        setns(fd, CLONE_NEWNET)


def _family(host_ip: str) -> socket.AddressFamily:
    try:
        version = ipaddress.ip_address(host_ip).version
    except ValueError:
        raise OSError(errno.EINVAL, f"not an IP address: {host_ip!r}") from None
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _connect_tcp(host_ip: str, port: int, timeout: float, mark: int | None) -> socket.socket:
    sock = socket.socket(_family(host_ip), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        sock.settimeout(timeout)
        try:
            sock.connect((host_ip, port))
        except TimeoutError as e:
            # A socket timeout carries no errno; callers map errnos onto the wire.
            if e.errno is None:
                raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
            raise
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _listen_tcp(host_ip: str, backlog: int) -> socket.socket:
    sock = socket.socket(_family(host_ip), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host_ip, 0))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _connect_udp(host_ip: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host_ip), socket.SOCK_DGRAM)
    try:
        sock.connect((host_ip, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class NetnsExecutor:
    """A thread pool whose threads run in the network namespace at `netns_path`.

    `netns_path=None` (targetless) leaves the threads in the agent's own namespace. The
    namespace file is opened at once, so a vanished target fails here and the namespace stays
    pinned for the executor's lifetime even if the target process exits.
    """

    def __init__(self, netns_path: Path | None, max_workers: int = 8) -> None:
        self.netns_path = netns_path
        self._fd: int | None = None
        if netns_path is not None:
            self._fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="netns", initializer=self._enter
        )

    def _enter(self) -> None:
        # Failing here would break the whole pool; remember the error and raise it per call.
        self._local.error = None
        with self._lock:
            if self._fd is None:
                if self.netns_path is not None:
                    self._local.error = OSError(errno.EBADF, "netns executor is shut down")
                return
            try:
                enter_netns(self._fd)
            except OSError as e:
                self._local.error = e

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        error: OSError | None = getattr(self._local, "error", None)
        if error is not None:
            raise OSError(error.errno, f"cannot enter {self.netns_path}: {error.strerror}")
        return fn(*args)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` in a worker thread (so inside the target's network namespace).

        Raises what `fn` raises, OSError if the thread could not enter the namespace, and
        RuntimeError after `shutdown()`.
        """
        return await asyncio.wrap_future(self._pool.submit(self._call, fn, *args))

    async def _run_socket(self, fn: Callable[..., socket.socket], *args: Any) -> socket.socket:
        future = self._pool.submit(self._call, fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            # The worker may still finish connecting after we stop waiting: don't leak it.
            future.add_done_callback(_close_result)
            raise

    async def open_tcp(
        self, host_ip: str, port: int, timeout: float, mark: int | None = None
    ) -> socket.socket:
        """A TCP socket connected from inside the namespace, non-blocking, TCP_NODELAY set,
        with SO_MARK `mark` if given (so the incoming redirect rules let it pass).

        Wrap it with `asyncio.open_connection(sock=...)`. Raises OSError with the connect
        errno (ECONNREFUSED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ...; EINVAL for a non-IP).
        """
        return await self._run_socket(_connect_tcp, host_ip, port, timeout, mark)

    async def listen_tcp(self, host_ip: str = "0.0.0.0", backlog: int = 1024) -> socket.socket:
        """A non-blocking TCP socket listening on an ephemeral port inside the namespace."""
        return await self._run_socket(_listen_tcp, host_ip, backlog)

    async def open_udp(self, host_ip: str, port: int) -> socket.socket:
        """A connected, non-blocking UDP socket created inside the namespace."""
        return await self._run_socket(_connect_udp, host_ip, port)

    def shutdown(self) -> None:
        """Stop the workers (queued calls are cancelled) and release the namespace."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> NetnsExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


def _close_result(future: concurrent.futures.Future[socket.socket]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
