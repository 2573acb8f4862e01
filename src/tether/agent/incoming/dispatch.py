"""Each redirected connection's fate, decided when it arrives from the subscriptions then:

- an unfiltered steal takes the whole connection to its session's local app (a kube-probe's
  request passes through unless the steal asked for probes);
- filtered steals route each HTTP request (first matching filter, in subscription order);
- otherwise the connection passes through to the original app.

Mirroring sessions get a copy of the client's bytes in every case (mirror.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Hashable
from typing import Any

from tether.agent.incoming.mirror import OPEN_TIMEOUT, MirrorCopy, TeePipe
from tether.agent.incoming.pipes import Pipe, SocketPipe, StreamPipe
from tether.agent.incoming.router import RequestHead, looks_like_http, route_http
from tether.agent.incoming.sockopts import original_dst
from tether.agent.incoming.subscriptions import (
    Subscription,
    active,
    filtered_steals,
    is_probe_request,
    route_request,
    whole_steal,
)
from tether.agent.iptables import BYPASS_MARK
from tether.agent.netns import NetnsExecutor
from tether.tunnel import RemoteOpError, TunnelClosedError

log = logging.getLogger("tether.agent.incoming")

CONNECT_TIMEOUT = 5.0
# How long a connection may stay silent before we decide it is not HTTP (filtered steal) or
# not a probe (unfiltered steal). Clients of HTTP speak first, so this is rarely waited out.
FIRST_BYTES_TIMEOUT = 1.0
PROBE_PEEK_TIMEOUT = 0.2
PROBE_PEEK_LIMIT = 16384

SubscriptionsOf = Callable[[int], "list[Subscription] | None"]


async def splice(a: Pipe, b: Pipe) -> None:
    """Copy bytes both ways until both directions ended (or one side reset)."""

    async def one_way(src: Pipe, dst: Pipe) -> None:
        try:
            while data := await src.read():
                await dst.write(data)
            dst.write_eof()
        except (ConnectionError, OSError):
            a.abort()
            b.abort()

    await asyncio.gather(one_way(a, b), one_way(b, a))


class _OriginalPipe(SocketPipe):
    """A connection to the original app, registered while open so that resetting the app's
    connections at a steal's start spares the ones the agent itself relays."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: tuple[str, int],
        registry: set[tuple[str, int]],
    ) -> None:
        super().__init__(reader, writer)
        self.local = local
        self.registry = registry
        registry.add(local)

    def forget(self) -> None:
        """Unregister (idempotent)."""
        self.registry.discard(self.local)

    async def close(self) -> None:
        self.forget()
        await super().close()


class Dispatcher:
    """Serves the connections redirected to a port's listener.

    `subscriptions_of(port)` gives the port's subscriptions at that moment (None once the
    port is no longer redirected). `relayed` holds the local addresses of the agent's own
    connections to the app, which resetting the app's connections must spare.
    """

    def __init__(
        self,
        executor: NetnsExecutor,
        subscriptions_of: SubscriptionsOf,
        first_bytes_timeout: float = FIRST_BYTES_TIMEOUT,
    ) -> None:
        self.executor = executor
        self.subscriptions_of = subscriptions_of
        self.first_bytes_timeout = first_bytes_timeout
        self.relayed: set[tuple[str, int]] = set()

    async def serve(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Decide and carry out the fate of one connection redirected from `port`."""
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        client = SocketPipe(reader, writer)
        try:
            dst = original_dst(sock)
        except OSError:
            dst = None
        current = self.subscriptions_of(port)
        if dst is None or current is None or dst[1] != port:
            # Reached our listener directly (not through the redirect), or the port is gone.
            client.abort()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        params = {
            "port": port,
            "peer": [str(peer[0]), int(peer[1])] if isinstance(peer, tuple) else None,
            "dst": [dst[0], dst[1]],
        }
        subs = list(current)
        copies = [
            MirrorCopy(s, {**params, "mode": "mirror"}) for s in active(subs) if s.mode == "mirror"
        ]
        tee = TeePipe(client, copies)
        try:
            await self._dispatch(tee, subs, dst, params)
        except (ConnectionError, OSError, TimeoutError) as exc:
            log.debug("port %d: connection from %s ended: %s", port, peer, exc)
            client.abort()
        finally:
            for copy in copies:
                copy.end()
            await client.close()

    async def _dispatch(
        self,
        client: TeePipe,
        subs: list[Subscription],
        dst: tuple[str, int],
        params: dict[str, Any],
    ) -> None:
        whole = whole_steal(subs)
        filtered = filtered_steals(subs)
        if whole is not None:
            first = b""
            if not whole.steal_probes:
                first = await _peek_request(client) or b""
                if first and is_probe_request(first):
                    await self._passthrough_with(client, dst, first)
                    return
            await self._steal_whole(client, whole, first, params)
            return
        if filtered:
            opening = await _first_bytes(client, self.first_bytes_timeout)
            if opening is None:
                await self._silent_client(client, dst, params)
                return
            if opening and looks_like_http(opening):
                await self._route(client, opening, dst, params)
                return
            await self._passthrough_with(client, dst, opening)
            return
        await self._passthrough_with(client, dst, b"")

    async def _steal_whole(
        self, client: Pipe, sub: Subscription, first: bytes, params: dict[str, Any]
    ) -> None:
        try:
            stream = await asyncio.wait_for(
                sub.session.tunnel.open_stream("incoming", {**params, "mode": "steal"}),
                OPEN_TIMEOUT,
            )
        except (RemoteOpError, TunnelClosedError, TimeoutError) as exc:
            log.info("port %d: %s could not take a connection: %s", sub.port, sub.session.who, exc)
            client.abort()
            return
        upstream = StreamPipe(stream)
        if first:
            await upstream.write(first)
        await splice(client, upstream)

    async def _open_original(self, dst: tuple[str, int]) -> _OriginalPipe:
        # The mark lets this connection past our own OUTPUT redirect to the app.
        sock = await self.executor.open_tcp(dst[0], dst[1], CONNECT_TIMEOUT, mark=BYPASS_MARK)
        local = sock.getsockname()
        reader, writer = await asyncio.open_connection(sock=sock)
        return _OriginalPipe(reader, writer, (str(local[0]), int(local[1])), self.relayed)

    async def _passthrough_with(self, client: Pipe, dst: tuple[str, int], first: bytes) -> None:
        original = await self._open_original(dst)
        try:
            if first:
                await original.write(first)
            await splice(client, original)
        finally:
            await original.close()

    async def _silent_client(
        self, client: Pipe, dst: tuple[str, int], params: dict[str, Any]
    ) -> None:
        """A client that sent nothing at first: either the app speaks first (SMTP, MySQL...)
        or an HTTP client opened the connection ahead of its first request. Connect to the app
        and see who speaks: the app's bytes mean passthrough, the client's are routed."""
        original = await self._open_original(dst)
        used = False
        from_client = asyncio.ensure_future(client.read())
        from_app = asyncio.ensure_future(original.read())
        try:
            await asyncio.wait({from_client, from_app}, return_when=asyncio.FIRST_COMPLETED)
            app_first = from_app.done()
            client_bytes = await _settle(from_client)
            app_bytes = await _settle(from_app)
            if client_bytes == b"" or app_bytes == b"":
                return  # one side hung up before anything was said
            if not app_first and client_bytes and looks_like_http(client_bytes):
                used = True
                await self._route(client, client_bytes, dst, params, original)
                return
            if app_bytes:
                await client.write(app_bytes)
            if client_bytes:
                await original.write(client_bytes)
            await splice(client, original)
        finally:
            from_client.cancel()
            from_app.cancel()
            if not used:
                await original.close()

    async def _route(
        self,
        client: Pipe,
        first: bytes,
        dst: tuple[str, int],
        params: dict[str, Any],
        original: _OriginalPipe | None = None,
    ) -> None:
        port = dst[1]
        opened: list[_OriginalPipe] = []
        ready = [original] if original is not None else []

        def decide(head: RequestHead) -> Hashable | None:
            sub = route_request(self.subscriptions_of(port) or [], head)
            return sub.session.key if sub is not None else None

        async def connect(key: Hashable | None) -> Pipe:
            if key is None:
                # A connection to the app opened already (see _silent_client) serves first.
                pipe = ready.pop() if ready else await self._open_original(dst)
                opened.append(pipe)
                return pipe
            current = self.subscriptions_of(port) or []
            sub = next((s for s in current if s.session.key == key), None)
            if sub is None:
                raise ConnectionRefusedError("the session left")
            try:
                stream = await asyncio.wait_for(
                    sub.session.tunnel.open_stream("incoming", {**params, "mode": "steal"}),
                    OPEN_TIMEOUT,
                )
            except (RemoteOpError, TunnelClosedError, TimeoutError) as exc:
                raise ConnectionRefusedError(str(exc)) from None
            return StreamPipe(stream)

        try:
            await route_http(client, first, decide, connect)
        finally:
            for pipe in opened:
                pipe.forget()
            for pipe in ready:
                await pipe.close()  # never asked for: the router did not take it over


async def _first_bytes(client: Pipe, timeout: float) -> bytes | None:
    """The client's first bytes (b"" at EOF), or None if it sent nothing within `timeout`."""
    try:
        return await asyncio.wait_for(client.read(), timeout)
    except TimeoutError:
        return None


async def _settle(task: asyncio.Future[bytes]) -> bytes | None:
    """What a read task got, cancelling it if it is still waiting (then None; a cancelled
    stream read loses no bytes). Read errors count as the peer hanging up."""
    if not task.done():
        task.cancel()
    (result,) = await asyncio.gather(task, return_exceptions=True)
    if isinstance(result, asyncio.CancelledError):
        return None
    if isinstance(result, BaseException):
        return b""
    return result


async def _peek_request(client: Pipe) -> bytes | None:
    """The client's first bytes, up to the end of an HTTP request head if it sends one;
    None if it sent nothing at first."""
    data = await _first_bytes(client, PROBE_PEEK_TIMEOUT)
    if not data or not looks_like_http(data) or data.startswith(b"PRI "):
        return data
    while b"\r\n\r\n" not in data and len(data) < PROBE_PEEK_LIMIT:
        more = await _first_bytes(client, PROBE_PEEK_TIMEOUT)
        if not more:
            break
        data += more
    return data
