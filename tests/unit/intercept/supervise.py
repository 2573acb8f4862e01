"""A minimal synchronous supervisor for the intercept tests, and a stand-in proxy.

Arguments are decoded with tether's own decoder (`tether.local.exec.syscalls`), so these
tests and the real supervisor read each call the same way.

It poll()s the listener and the child's stdout, dispatches notifications to handlers (CONTINUE
for syscalls without one), and stops when the child has exited. Whenever connect is trapped,
connections to anything but loopback, a Unix socket or REMOTE (which is redirected or refused)
fail with ENETUNREACH, so even a test bug cannot send a packet off the machine: tests whose
child might connect must trap connect.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from tether.intercept.launcher import Launch
from tether.intercept.memory import dup_from, pack_sockaddr, read_bytes, write_bytes
from tether.intercept.seccomp import Listener, Notification, Syscall
from tether.local.exec.syscalls import Connect, ProcessMemory, SocketName, decode

REMOTE = ("198.51.100.7", 80)  # TEST-NET-2: never routed; the supervisor redirects it
Handler = Callable[[Notification], None]
C = TypeVar("C")


def kill_and_reap(pid: int) -> None:
    """SIGKILL `pid` if still there and reap it; quiet if it is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


@dataclass
class Result:
    status: int
    output: bytes
    notifications: list[Notification]


def decoded(notif: Notification, kind: type[C]) -> C:
    """The `kind` of call `notif` is, as tether's supervisor decodes it."""
    call = decode(notif, ProcessMemory(notif.pid))
    assert isinstance(call, kind), call
    return call


def guard_connect(listener: Listener, notif: Notification, call: Connect) -> bool:
    """Answer a connect that must stay on the machine; False if it is one to redirect.

    Unix and loopback connects run; any other destination but REMOTE fails with ENETUNREACH.
    """
    addr = call.ip
    if addr is None:  # AF_UNIX (nscd, ...) and unknown families
        if call.address is None and call.length >= 2:
            listener.respond_error(notif.id, errno.EAFNOSUPPORT)
        else:
            listener.respond_continue(notif.id)
        return True
    if addr[1] in ("127.0.0.1", "::1"):
        listener.respond_continue(notif.id)
        return True
    if (addr[1], addr[2]) != REMOTE:
        listener.respond_error(notif.id, errno.ENETUNREACH)
        return True
    return False


@dataclass
class MiniSupervisor:
    """Serves one child. Without a connect handler, REMOTE connects fail with ENETUNREACH."""

    launch: Launch
    handlers: dict[int, Handler] = field(default_factory=dict)
    output_fd: int | None = None
    notifications: list[Notification] = field(default_factory=list)

    def __post_init__(self) -> None:
        listener = self.launch.listener

        def refuse(notif: Notification) -> None:
            call = decoded(notif, Connect)
            if not guard_connect(listener, notif, call):
                listener.respond_error(notif.id, errno.ENETUNREACH)

        self.handlers.setdefault(Syscall.connect, refuse)

    def run(self, timeout: float = 30.0) -> Result:
        """Serve until the child exits; return its wait status and what it printed."""
        listener = self.launch.listener
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        if self.output_fd is not None:
            poller.register(self.output_fd, select.POLLIN)
        output = bytearray()
        deadline = time.monotonic() + timeout
        listening = True
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("the child did not finish in time")
            for fd, events in poller.poll(200):
                if fd == self.output_fd:
                    chunk = os.read(fd, 65536)
                    output += chunk
                    if not chunk:
                        poller.unregister(fd)
                        self.output_fd = None
                elif events & select.POLLIN:
                    self.dispatch()
                elif events & (select.POLLHUP | select.POLLERR):
                    poller.unregister(fd)  # no filtered task left
                    listening = False
            if not listening and self.output_fd is None:
                break
            if not listening and self.output_fd is not None:
                continue  # drain what the child wrote before exiting
        _, status = os.waitpid(self.launch.pid, 0)
        return Result(status, bytes(output), self.notifications)

    def dispatch(self) -> None:
        """Receive one notification and answer it."""
        listener = self.launch.listener
        notif = listener.receive()
        if notif is None:
            return
        self.notifications.append(notif)
        handler = self.handlers.get(notif.nr)
        if handler is None:
            listener.respond_continue(notif.id)
            return
        try:
            handler(notif)
        except OSError as exc:
            listener.respond_error(notif.id, exc.errno or errno.EIO)


class Proxy:
    """A local TCP server that answers every connection with b"proxied"."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.server.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return  # closed
            self.accepted += 1
            with conn:
                conn.sendall(b"proxied")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self._thread.join(5)


@contextlib.contextmanager
def running_proxy() -> Iterator[Proxy]:
    proxy = Proxy()
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class Redirector:
    """connect() to REMOTE goes to the proxy instead; getpeername() tells the original."""

    launch: Launch
    proxy_port: int
    original: dict[tuple[str, int], tuple[str, int]] = field(default_factory=dict)
    redirected_tids: list[int] = field(default_factory=list)
    nonblocking: int = 0

    def handlers(self) -> dict[int, Handler]:
        return {Syscall.connect: self.connect, Syscall.getpeername: self.getpeername}

    def connect(self, notif: Notification) -> None:
        listener = self.launch.listener
        call = decoded(notif, Connect)
        if guard_connect(listener, notif, call):
            return
        dup = dup_from(notif.pid, call.fd)
        # The dup shares the target's open file description: never change its flags.
        nonblocking = bool(fcntl.fcntl(dup, fcntl.F_GETFL) & os.O_NONBLOCK)
        with socket.socket(fileno=dup) as sock:
            err = sock.connect_ex(("127.0.0.1", self.proxy_port))
            if err in (0, errno.EINPROGRESS, errno.EISCONN):
                host, port = sock.getsockname()[:2]
                self.original[(host, port)] = REMOTE
        self.redirected_tids.append(notif.pid)
        if err in (0, errno.EISCONN):
            listener.respond_value(notif.id, 0)
        elif err == errno.EINPROGRESS and nonblocking:
            self.nonblocking += 1
            listener.respond_error(notif.id, errno.EINPROGRESS)  # what a real connect says
        else:
            listener.respond_error(notif.id, err)

    def getpeername(self, notif: Notification) -> None:
        listener = self.launch.listener
        call = decoded(notif, SocketName)
        with socket.socket(fileno=dup_from(notif.pid, call.fd)) as sock:
            local = sock.getsockname()
        original = self.original.get((local[0], local[1]))
        if original is None:
            listener.respond_continue(notif.id)
            return
        data = pack_sockaddr(socket.AF_INET, *original)
        (room,) = struct.unpack("=I", read_bytes(notif.pid, call.addrlen, 4))
        if listener.id_valid(notif.id):
            # Like the kernel: truncate to the caller's buffer, report the full length.
            write_bytes(notif.pid, call.addr, data[:room])
            write_bytes(notif.pid, call.addrlen, struct.pack("=I", len(data)))
            listener.respond_value(notif.id, 0)
