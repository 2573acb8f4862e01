"""Incoming traffic on this side: asking the agent to mirror or steal a target port, and
delivering what it sends (one tunnel stream per connection) to the local app's port."""

import asyncio
import contextlib
import errno
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from tether.config.models import IncomingConfig
from tether.errors import UserError
from tether.local.session.progress import Progress
from tether.protocol import RemoteError
from tether.protocol.messages import (
    Done,
    IncomingLost,
    MessageError,
    decode_request,
    encode_answer,
)
from tether.tunnel import RemoteOpError, Tunnel, TunnelStream

Mode = Literal["mirror", "steal"]
CONNECT_TIMEOUT = 5.0
_LOOPBACKS = (("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6))


class IncomingError(UserError):
    """The agent refused a subscription; the message is one line for the user."""


class IncomingClient:
    """Subscriptions of one session, and delivery of their connections to local ports."""

    def __init__(
        self, tunnel: Tunnel, config: IncomingConfig, progress: Progress, who: str
    ) -> None:
        self.tunnel = tunnel
        self.config = config
        self.progress = progress
        self.who = who
        self.ports: dict[int, int] = {}
        """Subscribed remote port -> local port."""
        self.delivered: Counter[int] = Counter()
        self.failed: Counter[int] = Counter()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._granted: set[int] = set()
        self.on_subscribed: Callable[[int, int, Mode | None], Awaitable[None]] | None = None
        """Called after each subscription the agent granted (remote, local, mode): how the
        other replicas of a workload follow (replicas.py)."""
        tunnel.set_stream_handler(self._on_stream)
        tunnel.set_request_handler(self._on_request)

    async def subscribe(
        self, remote: int, local: int | None = None, mode: Mode | None = None
    ) -> None:
        """Ask the agent for `remote`'s traffic, delivered to `local` (default: the config's
        port map). Raises IncomingError when the agent refuses (e.g. another session holds
        the port)."""
        chosen: Mode = mode or ("steal" if self.config.mode == "steal" else "mirror")
        target_port = local if local is not None else self.config.local_port(remote)
        previous = self.ports.get(remote)
        self.ports[remote] = target_port
        request = self.config.subscription(remote, self.who, chosen)
        try:
            answer = await self.tunnel.call(request)
        except RemoteOpError as exc:
            # A refused change leaves an earlier subscription of the port (still honoured).
            if remote in self._granted and previous is not None:
                self.ports[remote] = previous
            else:
                self.ports.pop(remote, None)
            raise IncomingError(f"cannot {chosen} port {remote}: {exc}") from None
        self._granted.add(remote)
        for warning in answer.warnings:
            self.progress.warn(warning)
        what: str = chosen
        if chosen == "steal" and self.config.http_filter is not None:
            what = "steal requests matching the filter on"
        self.progress.step(f"incoming: {what} port {remote} -> localhost:{target_port}")
        if self.on_subscribed is not None:
            await self.on_subscribed(remote, target_port, mode)

    async def resubscribe(self, target: object = None) -> None:
        """Subscribe every granted port again: the session moved to another pod's agent,
        which knows nothing of them (a session's `on_moved` callback)."""
        for remote in sorted(self._granted):
            local = self.ports.get(remote)
            if local is None:
                continue
            self._granted.discard(remote)
            try:
                await self.subscribe(remote, local)
            except IncomingError as exc:
                self.progress.warn(f"{exc}; the app gets no incoming traffic on it")

    def subscribe_soon(self, local: int) -> None:
        """The local app listens on `local`: subscribe the remote port that maps to it, if
        the config wants it (called from the interceptor, so it must not block)."""
        if self.config.mode == "off":
            return
        remote = self.config.remote_port(local)
        if remote is None or remote in self.ports:
            return
        self.ports[remote] = local  # claimed now: a second listen() must not subscribe again

        async def go() -> None:
            try:
                await self.subscribe(remote, local)
            except IncomingError as exc:
                self.progress.warn(f"{exc}; the app gets no incoming traffic on it")
            except (RemoteOpError, ConnectionError, TimeoutError) as exc:
                self.progress.warn(f"incoming traffic on port {remote} failed: {exc}")

        task = asyncio.ensure_future(go())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stop delivering (the agent drops the subscriptions when the session leaves)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for remote in sorted(set(self.delivered) | set(self._granted)):
            self.progress.detail(
                f"incoming: port {remote}: {self.delivered[remote]} connection(s) delivered"
            )

    async def _on_request(self, op: str, args: dict[str, Any]) -> Any:
        """The agent's notices: IncomingLost when another session took a port over."""
        try:
            request = decode_request(op, args)
        except MessageError as exc:
            raise RemoteOpError(exc.error) from None
        if not isinstance(request, IncomingLost):
            raise RemoteOpError(
                RemoteError("ENOSYS", f"{op} is not the CLI's to answer", errno.ENOSYS)
            )
        self.ports.pop(request.port, None)
        self._granted.discard(request.port)
        self.progress.warn(
            f"port {request.port} was taken over by {request.by} (--override):"
            " this session no longer receives its traffic"
        )
        return encode_answer(Done())

    async def _on_stream(self, stream: TunnelStream) -> None:
        if stream.kind != "incoming":
            stream.reset("EOPNOTSUPP", f"unsupported stream kind {stream.kind!r}", 95)
            return
        remote = stream.params.get("port")
        local = self.ports.get(remote) if isinstance(remote, int) else None
        if local is None or not isinstance(remote, int):
            stream.reset("ECONNREFUSED", f"port {remote} is not subscribed here", 111)
            return
        try:
            reader, writer = await _connect_local(local)
        except OSError as exc:
            if not self.failed[local]:
                self.progress.warn(
                    f"incoming connection for port {remote}: nothing accepts on"
                    f" localhost:{local} ({exc.strerror or exc})"
                )
            self.failed[local] += 1
            stream.reset("ECONNREFUSED", f"nothing listens on local port {local}", 111)
            return
        self.delivered[remote] += 1
        stream.accept({})
        await stream.relay(reader, writer)


async def _connect_local(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    error: OSError | None = None
    for host, _family in _LOOPBACKS:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), CONNECT_TIMEOUT
            )
        except TimeoutError:
            error = OSError(110, "timed out")
            continue
        except OSError as exc:
            error = exc
            continue
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer
    assert error is not None
    raise error
