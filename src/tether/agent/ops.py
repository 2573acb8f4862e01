"""The agent's answers to a session's requests (protocol/messages.py), one session each.

Each session gets its own RootFS so open file handles die with the session.
"""

import asyncio
import errno
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from tether.agent.environ import filter_env, read_environ
from tether.agent.files import RootFS
from tether.agent.incoming.filters import HttpFilter
from tether.agent.incoming.manager import IncomingError, IncomingManager, SessionRef
from tether.agent.resolver import PodResolver, ResolveError
from tether.agent.target import Target, TargetNotFound, same_netns
from tether.protocol import MAX_PAYLOAD, RemoteError
from tether.protocol.events import SESSION_TARGET_GONE, TARGET_GONE_REASON
from tether.protocol.messages import (
    Data,
    Done,
    EnvAnswer,
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
    GetEnv,
    GetHostname,
    HostnameAnswer,
    IncomingSubscribe,
    LeaveAnswer,
    LinkTarget,
    Listing,
    MessageError,
    Opened,
    Request,
    SessionLeave,
    SessionTarget,
    StatAnswer,
    Subscribed,
    TargetAnswer,
    Written,
    decode_request,
    encode_answer,
)
from tether.tunnel import RemoteOpError

log = logging.getLogger("tether.agent.ops")

# A response must fit one frame together with msgpack's few bytes of framing.
MAX_IO = MAX_PAYLOAD - 4096


def resolve_error(exc: ResolveError) -> RemoteOpError:
    """A resolver failure as the protocol error the local side maps to getaddrinfo codes."""
    names = {
        socket.EAI_NONAME: "EAI_NONAME",
        socket.EAI_NODATA: "EAI_NODATA",
        socket.EAI_AGAIN: "EAI_AGAIN",
        socket.EAI_FAMILY: "EAI_FAMILY",
        socket.EAI_ADDRFAMILY: "EAI_ADDRFAMILY",
    }
    code = names.get(exc.errno or 0, "EAI_FAIL")
    message = exc.strerror or (exc.args[-1] if exc.args else "") or code
    return RemoteOpError(RemoteError(code, str(message), exc.errno))


class Operations:
    """Request handlers for one session: the tunnel's `on_request`."""

    def __init__(
        self,
        target: Target,
        resolver: PodResolver,
        incoming: IncomingManager | None = None,
        session: SessionRef | None = None,
        on_leave: Callable[[], bool] | None = None,
    ) -> None:
        self.target = target
        self.resolver = resolver
        self.fs = RootFS(target.root)
        self.incoming = incoming
        self.session = session
        self._watching: tuple[asyncio.AbstractEventLoop, int] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.on_leave = on_leave

    def close(self) -> None:
        """Release the session's open files (and its watch on its own target)."""
        self.fs.close_all()
        self._unwatch()

    def _unwatch(self) -> None:
        if self._watching is not None:
            loop, fd = self._watching
            self._watching = None
            loop.remove_reader(fd)
            os.close(fd)

    def _watch(self, pid: int | None) -> None:
        """End this session (GOAWAY target-gone) when the container it moved to exits: the
        agent's own watch covers only the target it started on (maybe a pod's sandbox)."""
        self._unwatch()
        if pid is None or self.session is None:
            return
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            return
        loop = asyncio.get_running_loop()
        tunnel = self.session.tunnel

        def gone() -> None:
            self._unwatch()
            log.warning("the session's target process %s exited: ending the session", pid)
            task = asyncio.ensure_future(tunnel.close(TARGET_GONE_REASON, SESSION_TARGET_GONE))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        loop.add_reader(fd, gone)
        self._watching = (loop, fd)

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        """Decode, answer and encode one request; ENOSYS/EINVAL for one outside the
        vocabulary."""
        try:
            request = decode_request(op, args)
        except MessageError as exc:
            raise RemoteOpError(exc.error) from None
        return encode_answer(await self.answer(request))

    async def answer(self, request: Request[Any]) -> Any:
        """The answer to one request (raises OSError or RemoteOpError for the peer)."""
        fs = self.fs
        match request:
            case GetEnv(include, exclude):
                return EnvAnswer(filter_env(read_environ(self.target.pid), include, exclude))
            case GetHostname():
                return HostnameAnswer(self._hostname())
            case FsStat(path, follow):
                return StatAnswer(await asyncio.to_thread(fs.stat, path, follow))
            case FsListdir(path):
                return Listing(await asyncio.to_thread(fs.listdir, path))
            case FsReadlink(path):
                return LinkTarget(fs.readlink(path))
            case FsAccess(path, mode):
                fs.access(path, mode)
                return Done()
            case FsOpen(path, flags, mode):
                handle = fs.open(path, flags, mode)
                return Opened(handle, fs.fstat(handle))
            case FsRead(handle, offset, size):
                data = await asyncio.to_thread(fs.read, handle, offset, min(size, MAX_IO))
                return Data(data)
            case FsWrite(handle, data, offset):
                return Written(await asyncio.to_thread(fs.write, handle, offset, data))
            case FsClose(handle):
                fs.close(handle)
                return Done()
            case FsUnlink(path):
                fs.unlink(path)
                return Done()
            case FsMkdir(path, mode):
                fs.mkdir(path, mode)
                return Done()
            case FsRmdir(path):
                fs.rmdir(path)
                return Done()
            case SessionTarget(container_id):
                return TargetAnswer(self._serve_container(container_id))
            case SessionLeave():
                # Its subscriptions go before the answer, not when its tunnel closes later:
                # whatever the leaver does next (subscribe again elsewhere) meets none of them.
                if self.incoming is not None and self.session is not None:
                    await self.incoming.drop_session(self.session)
                return LeaveAnswer(self.on_leave() if self.on_leave is not None else True)
            case IncomingSubscribe():
                return await self._subscribe(request)
        raise RemoteOpError(
            RemoteError("ENOSYS", f"{request.OP} is not the agent's to answer", errno.ENOSYS)
        )

    def _hostname(self) -> str:
        try:
            name = self.fs.read_file("/etc/hostname", 4096).decode(errors="replace").strip()
        except OSError:
            name = ""
        return name or os.uname().nodename

    def _serve_container(self, container_id: str) -> int | None:
        """Serve this session from another container of the agent's pod (the agent is shared
        per pod; its own target is the container of the session that started it)."""
        if self.target.in_pod:
            # It sees only the processes of the container it was added for.
            raise RemoteOpError(
                RemoteError(
                    "EXDEV",
                    "an ephemeral agent serves only the container it was added to",
                    errno.EXDEV,
                )
            )
        try:
            target = Target.find(container_id)
        except (TargetNotFound, ValueError) as exc:
            raise RemoteOpError(RemoteError("ENOENT", str(exc), errno.ENOENT)) from None
        if not same_netns(target, self.target):
            raise RemoteOpError(
                RemoteError(
                    "EXDEV", f"container {container_id} is not in this agent's pod", errno.EXDEV
                )
            )
        if target != self.target:
            self.fs.close_all()
            self.target = target
            self.fs = RootFS(target.root)
            self._watch(target.pid)
        return target.pid

    async def _subscribe(self, request: IncomingSubscribe) -> Subscribed:
        if self.incoming is None or self.session is None:
            raise RemoteOpError(
                RemoteError(
                    "EOPNOTSUPP",
                    "incoming traffic needs a target (this agent is targetless)",
                    errno.EOPNOTSUPP,
                )
            )
        if not 0 < request.port < 65536:
            raise RemoteOpError(
                RemoteError("EINVAL", f"port {request.port} is out of range", errno.EINVAL)
            )
        if request.mode not in ("mirror", "steal"):
            raise RemoteOpError(RemoteError("EINVAL", "mode must be mirror or steal", errno.EINVAL))
        http_filter = None
        if request.filter is not None:
            try:
                http_filter = HttpFilter.from_wire(request.filter)
            except ValueError as exc:
                raise RemoteOpError(RemoteError("EINVAL", str(exc), errno.EINVAL)) from None
        if request.who:
            self.session.who = request.who
        try:
            warnings = await self.incoming.subscribe(
                self.session,
                request.port,
                "steal" if request.mode == "steal" else "mirror",
                http_filter,
                steal_probes=request.steal_probes,
                override=request.override,
                reset=request.reset,
            )
        except IncomingError as exc:
            raise exc.as_remote() from None
        return Subscribed(warnings)
