"""The agent's request operations, one handler per op name, per session.

Each session gets its own RootFS so open file handles die with the session.
"""

import asyncio
import errno
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
from tether.tunnel import RemoteOpError

# A response must fit one frame together with msgpack's few bytes of framing.
MAX_IO = MAX_PAYLOAD - 4096
_FAMILIES = {0: socket.AF_UNSPEC, 4: socket.AF_INET, 6: socket.AF_INET6}


def _str(args: dict[str, Any], key: str) -> str:
    value = args.get(key)
    if not isinstance(value, str):
        raise RemoteOpError(
            RemoteError("EINVAL", f"argument {key!r} must be a string", errno.EINVAL)
        )
    return value


def _int(args: dict[str, Any], key: str, default: int | None = None) -> int:
    value = args.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise RemoteOpError(
            RemoteError("EINVAL", f"argument {key!r} must be an integer", errno.EINVAL)
        )
    return value


def _globs(args: dict[str, Any], key: str, default: list[str]) -> list[str]:
    value = args.get(key, default)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RemoteOpError(
            RemoteError("EINVAL", f"argument {key!r} must be a list of strings", errno.EINVAL)
        )
    return value


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
    """Request handlers for one session."""

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
        self.on_leave = on_leave

    def close(self) -> None:
        """Release the session's open files."""
        self.fs.close_all()

    async def __call__(self, op: str, args: dict[str, Any]) -> Any:
        """Dispatch `op`; unknown ops are ENOSYS."""
        handler = getattr(self, "op_" + op.replace(".", "_"), None)
        if handler is None:
            raise RemoteOpError(RemoteError("ENOSYS", f"unknown operation {op!r}", errno.ENOSYS))
        return await handler(args)

    async def op_env(self, args: dict[str, Any]) -> dict[str, Any]:
        env = read_environ(self.target.pid)
        include = _globs(args, "include", ["*"])
        exclude = _globs(args, "exclude", [])
        return {"env": filter_env(env, include, exclude)}

    async def op_hostname(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            name = self.fs.read_file("/etc/hostname", 4096).decode(errors="replace").strip()
        except OSError:
            name = ""
        return {"hostname": name or os.uname().nodename}

    async def op_resolve(self, args: dict[str, Any]) -> dict[str, Any]:
        family = _FAMILIES.get(_int(args, "family", 0))
        if family is None:
            raise RemoteOpError(RemoteError("EAI_FAMILY", "family must be 0, 4 or 6", None))
        try:
            addresses = await self.resolver.resolve(_str(args, "name"), family)
        except ResolveError as exc:
            raise resolve_error(exc) from None
        return {"addresses": addresses}

    async def op_dns_query(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            records = await self.resolver.query(_str(args, "name"), _str(args, "rdtype"))
        except ResolveError as exc:
            raise resolve_error(exc) from None
        return {"records": records}

    async def op_fs_stat(self, args: dict[str, Any]) -> dict[str, Any]:
        follow = bool(args.get("follow", True))
        return await asyncio.to_thread(self.fs.stat, _str(args, "path"), follow)

    async def op_fs_listdir(self, args: dict[str, Any]) -> list[tuple[str, int, int]]:
        return await asyncio.to_thread(self.fs.listdir, _str(args, "path"))

    async def op_fs_readlink(self, args: dict[str, Any]) -> str:
        return self.fs.readlink(_str(args, "path"))

    async def op_fs_access(self, args: dict[str, Any]) -> None:
        self.fs.access(_str(args, "path"), _int(args, "mode", os.F_OK))

    async def op_fs_open(self, args: dict[str, Any]) -> dict[str, Any]:
        handle = self.fs.open(
            _str(args, "path"), _int(args, "flags", os.O_RDONLY), _int(args, "mode", 0o666)
        )
        return {"handle": handle, "stat": self.fs.fstat(handle)}

    async def op_fs_read(self, args: dict[str, Any]) -> bytes:
        size = min(_int(args, "size"), MAX_IO)
        return await asyncio.to_thread(
            self.fs.read, _int(args, "handle"), _int(args, "offset"), size
        )

    async def op_fs_write(self, args: dict[str, Any]) -> int:
        data = args.get("data")
        if not isinstance(data, bytes):
            raise RemoteOpError(
                RemoteError("EINVAL", "argument 'data' must be bytes", errno.EINVAL)
            )
        return await asyncio.to_thread(
            self.fs.write, _int(args, "handle"), _int(args, "offset", -1), data
        )

    async def op_fs_fstat(self, args: dict[str, Any]) -> dict[str, int]:
        return self.fs.fstat(_int(args, "handle"))

    async def op_fs_close(self, args: dict[str, Any]) -> None:
        self.fs.close(_int(args, "handle"))

    async def op_fs_unlink(self, args: dict[str, Any]) -> None:
        self.fs.unlink(_str(args, "path"))

    async def op_fs_mkdir(self, args: dict[str, Any]) -> None:
        self.fs.mkdir(_str(args, "path"), _int(args, "mode", 0o777))

    async def op_fs_rmdir(self, args: dict[str, Any]) -> None:
        self.fs.rmdir(_str(args, "path"))

    async def op_fs_rename(self, args: dict[str, Any]) -> None:
        self.fs.rename(_str(args, "old"), _str(args, "new"))

    async def op_session_target(self, args: dict[str, Any]) -> dict[str, Any]:
        """Serve this session from another container of the agent's pod (the agent is shared
        per pod; its own target is the container of the session that started it)."""
        container_id = _str(args, "container_id")
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
        return {"pid": target.pid}

    async def op_session_leave(self, args: dict[str, Any]) -> dict[str, Any]:
        """The session is about to close; tell it whether it was the agent's last one (then
        the agent stops taking sessions and exits, and the session removes its Job)."""
        return {"last": self.on_leave() if self.on_leave is not None else True}

    def _incoming(self) -> tuple[IncomingManager, SessionRef]:
        if self.incoming is None or self.session is None:
            raise RemoteOpError(
                RemoteError(
                    "EOPNOTSUPP", "incoming traffic needs a target (this agent is targetless)", 95
                )
            )
        return self.incoming, self.session

    async def op_incoming_subscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        incoming, session = self._incoming()
        port = _int(args, "port")
        if not 0 < port < 65536:
            raise RemoteOpError(RemoteError("EINVAL", f"port {port} is out of range", errno.EINVAL))
        mode = args.get("mode")
        if mode not in ("mirror", "steal"):
            raise RemoteOpError(RemoteError("EINVAL", "mode must be mirror or steal", errno.EINVAL))
        wire = args.get("filter")
        http_filter = None
        if wire is not None:
            try:
                http_filter = HttpFilter.from_wire(wire)
            except ValueError as exc:
                raise RemoteOpError(RemoteError("EINVAL", str(exc), errno.EINVAL)) from None
        who = args.get("who")
        if isinstance(who, str) and who:
            session.who = who
        try:
            warnings = await incoming.subscribe(
                session,
                port,
                mode,
                http_filter,
                steal_probes=bool(args.get("steal_probes", False)),
                override=bool(args.get("override", False)),
                reset=bool(args.get("reset", True)),
            )
        except IncomingError as exc:
            raise exc.as_remote() from None
        return {"warnings": warnings}

    async def op_incoming_unsubscribe(self, args: dict[str, Any]) -> dict[str, Any]:
        incoming, session = self._incoming()
        return {"removed": await incoming.unsubscribe(session, _int(args, "port"))}

    async def op_incoming_list(self, args: dict[str, Any]) -> dict[str, Any]:
        incoming, session = self._incoming()
        return {
            "subscriptions": [
                {
                    "port": s.port,
                    "mode": s.mode,
                    "filter": s.filter.to_wire() if s.filter else None,
                    "who": s.session.who,
                    "mine": s.session is session,
                }
                for s in incoming.subscriptions()
            ]
        }
