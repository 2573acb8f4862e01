"""The seccomp supervisor: answers the intercepted process tree's trapped syscalls.

Its parts each have a module: `syscalls` decodes a notification into a typed call (pure, with
every argument position in one table), `dispatcher` runs the thread that receives the
notifications and sees to it that each gets an answer, `fs` serves the file calls (with
`views` for remote directories and `writeback` for files written on the pod) and `net` the
network calls. This module builds them and routes each typed call to its handler.
"""

import asyncio
import collections
from collections.abc import Callable
from typing import assert_never

from tether.intercept.seccomp import Listener, Notification
from tether.local.exec.dispatcher import Dispatcher
from tether.local.exec.fs import FileCalls
from tether.local.exec.net import NetCalls
from tether.local.exec.remote_fs import RemoteFiles
from tether.local.exec.syscalls import (
    Access,
    Call,
    Close,
    Connect,
    Listen,
    Mkdir,
    Open,
    Readlink,
    Rmdir,
    SocketName,
    Stat,
    Uname,
    Unlink,
)
from tether.local.policy.names import NameCache
from tether.local.policy.rules import FileRules, NetRules
from tether.local.proxies.dns_proxy import DnsProxy
from tether.local.proxies.outgoing import OutgoingProxy, UdpProxy
from tether.local.session.progress import Progress
from tether.tunnel import Tunnel


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
        self.dispatcher = Dispatcher(listener, progress, self._route)
        self.fs = FileCalls(self.dispatcher, RemoteFiles(tunnel), files, served, progress)
        self.net = NetCalls(
            self.dispatcher,
            tunnel,
            net,
            proxy,
            udp,
            progress,
            hostname=hostname,
            dns_proxy=dns_proxy,
            nameservers=nameservers,
            names=names,
            pod_ip=pod_ip,
        )

    def _route(self, notif: Notification, call: Call) -> None:
        match call:
            case Open():
                self.fs.open(notif, call)
            case Stat():
                self.fs.stat(notif, call)
            case Access():
                self.fs.access(notif, call)
            case Readlink():
                self.fs.readlink(notif, call)
            case Close():
                self.fs.close(notif, call)
            case Mkdir() | Rmdir() | Unlink():
                self.fs.change(notif, call)
            case Connect():
                self.net.connect(notif, call)
            case SocketName():
                self.net.socket_name(notif, call)
            case Listen():
                self.net.listen(notif, call)
            case Uname():
                self.net.uname(notif, call)
            case _:
                assert_never(call)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start serving notifications (see `Dispatcher.attach`); the relays listen by now."""
        self.net.start()
        self.dispatcher.attach(loop)

    def detach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Stop serving (the process tree is gone)."""
        self.dispatcher.detach()

    async def flush_writes(self) -> None:
        """Send every file written on the pod back once more (the tree has exited)."""
        await self.fs.flush()

    def cleanup(self) -> None:
        """Remove the local mirrors of remote directories."""
        self.fs.cleanup()

    @property
    def on_listen(self) -> Callable[[int], None] | None:
        """Called on the event loop with each TCP port the process starts listening on."""
        return self.net.on_listen

    @on_listen.setter
    def on_listen(self, callback: Callable[[int], None] | None) -> None:
        self.net.on_listen = callback

    @property
    def on_fatal(self) -> Callable[[], None] | None:
        """Called on the supervisor thread if it fails (end the process tree)."""
        return self.dispatcher.on_fatal

    @on_fatal.setter
    def on_fatal(self, callback: Callable[[], None] | None) -> None:
        self.dispatcher.on_fatal = callback

    # What the run reports once `detach` has joined the thread.

    @property
    def count(self) -> int:
        """Notifications received."""
        return self.dispatcher.count

    @property
    def by_nr(self) -> collections.Counter[int]:
        """Notifications received, by syscall number."""
        return self.dispatcher.by_nr

    @property
    def fatal(self) -> bool:
        """Whether the supervisor thread failed (and the process tree was ended)."""
        return self.dispatcher.fatal

    @property
    def failure(self) -> BaseException | None:
        """What the supervisor thread failed with."""
        return self.dispatcher.failure

    @property
    def internal_errors(self) -> int:
        """Calls whose handling failed inside tether (each answered all the same)."""
        return self.dispatcher.internal_errors

    @property
    def listening(self) -> set[int]:
        """The ports the process listened on."""
        return self.net.listening
