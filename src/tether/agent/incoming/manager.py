"""The agent's incoming traffic: which sessions mirror or steal which ports of the target, the
redirect rules that follow from that, and what happens to each redirected connection.

Every redirected connection lands on one listener per port, inside the target's network
namespace. Its fate is decided when it arrives, from the subscriptions of that moment:

- an unfiltered steal takes the whole connection to its session's local app;
- filtered steals route each HTTP request (first matching filter, in subscription order);
- otherwise the connection passes through to the original app.

Mirroring sessions get a copy of the client's bytes in every case. The copy never holds up
the real traffic: each copy has a bounded queue, and a copy that falls behind is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import time
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass, field
from typing import Any, Literal

from tether.agent.incoming.filters import HttpFilter, is_probe, overlaps
from tether.agent.incoming.pipes import Pipe, SocketPipe, StreamPipe
from tether.agent.incoming.redirect import BYPASS_MARK, RedirectError, Redirector
from tether.agent.incoming.router import RequestHead, looks_like_http, route_http
from tether.agent.incoming.sockopts import original_dst, reset_connections
from tether.agent.netns import NetnsExecutor
from tether.protocol import RemoteError
from tether.tunnel import RemoteOpError, Tunnel, TunnelClosedError, TunnelStream

log = logging.getLogger("tether.agent.incoming")

Mode = Literal["mirror", "steal"]
CONNECT_TIMEOUT = 5.0
OPEN_TIMEOUT = 10.0
# How long a connection may stay silent before we decide it is not HTTP (filtered steal) or
# not a probe (unfiltered steal). Clients of HTTP speak first, so this is rarely waited out.
FIRST_BYTES_TIMEOUT = 1.0
PROBE_PEEK_TIMEOUT = 0.2
PROBE_PEEK_LIMIT = 16384
# Per mirrored connection and session: beyond this many queued bytes the copy is dropped.
MIRROR_QUEUE_LIMIT = 1 << 20


class IncomingError(Exception):
    """A subscription that cannot be granted; `code` is the protocol error code."""

    def __init__(self, code: str, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.errno = errno

    def as_remote(self) -> RemoteOpError:
        """The error as the session sees it."""
        return RemoteOpError(RemoteError(self.code, str(self), self.errno))


@dataclass(eq=False)
class SessionRef:
    """One connected session, as incoming traffic knows it."""

    tunnel: Tunnel
    key: int
    who: str = "another session"


@dataclass(eq=False)
class Subscription:
    """One session's interest in one port."""

    session: SessionRef
    port: int
    mode: Mode
    filter: HttpFilter | None
    steal_probes: bool
    since: float = field(default_factory=time.time)

    @property
    def whole(self) -> bool:
        """An unfiltered steal: whole connections go to the session."""
        return self.mode == "steal" and self.filter is None

    def describe(self) -> str:
        """Who holds it and how, for other sessions' messages."""
        when = time.strftime("%H:%M:%S", time.localtime(self.since))
        how = "mirrors" if self.mode == "mirror" else "steals"
        what = f" requests matching {self.filter.describe()}" if self.filter else ""
        return f"{self.session.who} {how}{what} (since {when})"


class _PortState:
    def __init__(self, port: int, server: asyncio.Server, listen_port: int) -> None:
        self.port = port
        self.server = server
        self.listen_port = listen_port
        self.subs: list[Subscription] = []


class MirrorCopy:
    """A copy of one connection's client bytes on its way to one mirroring session."""

    def __init__(self, sub: Subscription, params: dict[str, Any]) -> None:
        self.sub = sub
        self._chunks: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._eof = False
        self._dropped = False
        self._wake = asyncio.Event()
        self._stream: TunnelStream | None = None
        self._task = asyncio.ensure_future(self._run(params))

    def feed(self, data: bytes) -> None:
        """Queue `data` for the session, or drop the copy if it fell too far behind."""
        if self._dropped:
            return
        if self._queued + len(data) > MIRROR_QUEUE_LIMIT:
            log.info("mirror copy to %s fell behind: dropped", self.sub.session.who)
            self.cancel()
            return
        self._chunks.append(data)
        self._queued += len(data)
        self._wake.set()

    def end(self) -> None:
        """The client finished sending."""
        self._eof = True
        self._wake.set()

    def cancel(self) -> None:
        """Stop copying at once."""
        self._dropped = True
        self._chunks.clear()
        self._wake.set()
        # `_run` may be stuck in a write waiting for credit that a stuck local app never gives
        # back: resetting the stream here ends that wait too, so the stream and the data held
        # for it go now, not when the session leaves.
        if self._stream is not None:
            self._stream.reset("ECONNRESET", "mirror copy dropped", 104)

    async def _run(self, params: dict[str, Any]) -> None:
        stream: TunnelStream | None = None
        try:
            stream = await asyncio.wait_for(
                self.sub.session.tunnel.open_stream("incoming", params), OPEN_TIMEOUT
            )
            self._stream = stream
            drain = asyncio.ensure_future(_discard(stream))
            try:
                while True:
                    while not self._chunks and not self._eof and not self._dropped:
                        self._wake.clear()
                        await self._wake.wait()
                    if self._dropped:
                        stream.reset("ECONNRESET", "mirror copy dropped", 104)
                        return
                    if self._chunks:
                        data = b"".join(self._chunks)
                        self._chunks.clear()
                        self._queued = 0
                        await stream.write(data)
                        continue
                    stream.write_eof()
                    # The local app's answer is not wanted, but reading it to the end lets the
                    # stream finish cleanly instead of being reset.
                    await asyncio.wait_for(drain, OPEN_TIMEOUT)
                    return
            finally:
                drain.cancel()
        except (TimeoutError, RemoteOpError, TunnelClosedError, ConnectionError) as exc:
            log.debug("mirror copy to %s ended: %s", self.sub.session.who, exc)
            if stream is not None:
                stream.reset("ECONNRESET", "mirror copy failed", 104)
        finally:
            # Nothing takes from the queue any more (say the local app is down): without this,
            # each connection would keep up to MIRROR_QUEUE_LIMIT of its bytes for nothing.
            self._dropped = True
            self._chunks.clear()


async def _discard(stream: TunnelStream) -> None:
    with contextlib.suppress(ConnectionError):
        while await stream.read():
            pass


class TeePipe:
    """The client's Pipe, copying every byte read from it to mirroring sessions."""

    def __init__(self, inner: Pipe, copies: list[MirrorCopy]) -> None:
        self.inner = inner
        self.copies = copies

    async def read(self) -> bytes:
        data = await self.inner.read()
        for copy in self.copies:
            if data:
                copy.feed(data)
            else:
                copy.end()
        return data

    async def write(self, data: bytes) -> None:
        await self.inner.write(data)

    def write_eof(self) -> None:
        self.inner.write_eof()

    def abort(self) -> None:
        self.inner.abort()

    async def close(self) -> None:
        await self.inner.close()


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


class IncomingManager:
    """Subscriptions of every session of one agent, and the traffic that follows from them."""

    def __init__(
        self,
        executor: NetnsExecutor,
        redirector: Redirector | None = None,
        refusal: str | None = None,
    ) -> None:
        self.executor = executor
        # Set when this target's ports must never be redirected (host_network_refusal).
        self.refusal = refusal
        self.redirector = redirector or Redirector(executor)
        self.ports: dict[int, _PortState] = {}
        self._lock = asyncio.Lock()
        self._rules_up = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._passthrough: set[tuple[str, int]] = set()

    # -- subscriptions -----------------------------------------------------------------------

    async def subscribe(
        self,
        session: SessionRef,
        port: int,
        mode: Mode,
        http_filter: HttpFilter | None,
        *,
        steal_probes: bool = False,
        override: bool = False,
        reset: bool = True,
    ) -> list[str]:
        """Add (or replace) `session`'s subscription to `port`; return warnings for the user.

        Raises IncomingError EBUSY when an unfiltered steal would collide with another
        session's steal (unless `override`), and for redirect failures.
        """
        if mode == "mirror" and http_filter is not None:
            raise IncomingError("EINVAL", "a mirror takes no HTTP filter", 22)
        if self.refusal is not None:
            raise IncomingError("EPERM", f"cannot {mode} port {port}: {self.refusal}", 1)
        sub = Subscription(session, port, mode, http_filter, steal_probes)
        warnings: list[str] = []
        async with self._lock:
            state = self.ports.get(port)
            others = [s for s in state.subs if s.session is not session] if state else []
            if mode == "steal":
                warnings += self._check_steal(sub, others, override)
            if state is None:
                state = await self._open_port(port)
            state.subs = [s for s in state.subs if s.session is not session]
            if override and sub.whole:
                for lost in [s for s in state.subs if s.mode == "steal"]:
                    log.info("port %d: %s overrides %s", port, session.who, lost.describe())
                    warnings.append(f"took port {port} from {lost.describe()}")
                    state.subs.remove(lost)
                    self._spawn(_tell_lost(lost, session.who))
            state.subs.append(sub)
        log.info("port %d: %s", port, sub.describe())
        if mode == "steal" and reset:
            warnings += await self._reset(port)
        return warnings

    def _check_steal(
        self, sub: Subscription, others: list[Subscription], override: bool
    ) -> list[str]:
        warnings: list[str] = []
        steals = [s for s in others if s.mode == "steal"]
        whole = [s for s in steals if s.whole]
        if sub.whole and steals and not override:
            holder = (whole or steals)[0]
            raise IncomingError(
                "EBUSY",
                f"port {sub.port} is taken: {holder.describe()}; pass --override to take it"
                + (" (their requests would come to you)" if not whole else ""),
                16,
            )
        if not sub.whole and whole:
            warnings.append(
                f"port {sub.port}: {whole[0].describe()} without a filter; your filter gets"
                " nothing until they leave"
            )
        if sub.filter is not None:
            for other in steals:
                if other.filter is not None and overlaps(sub.filter, other.filter):
                    warnings.append(
                        f"port {sub.port}: your filter {sub.filter.describe()} overlaps"
                        f" {other.describe()}; requests matching both go to them (first come)"
                    )
        return warnings

    async def unsubscribe(self, session: SessionRef, port: int) -> bool:
        """Remove `session`'s subscription to `port`; False if it had none."""
        async with self._lock:
            state = self.ports.get(port)
            if state is None or not any(s.session is session for s in state.subs):
                return False
            state.subs = [s for s in state.subs if s.session is not session]
            await self._maybe_close(state)
        return True

    async def drop_session(self, session: SessionRef) -> None:
        """Forget every subscription of a session that left (or whose tunnel died)."""
        async with self._lock:
            for state in list(self.ports.values()):
                before = len(state.subs)
                state.subs = [s for s in state.subs if s.session is not session]
                if len(state.subs) != before:
                    log.info("port %d: %s left", state.port, session.who)
                await self._maybe_close(state)

    def subscriptions(self) -> list[Subscription]:
        """Every subscription, port by port in subscription order."""
        return [s for state in self.ports.values() for s in state.subs]

    async def close(self) -> None:
        """Remove every rule and listener (the agent is exiting)."""
        async with self._lock:
            for state in list(self.ports.values()):
                state.subs.clear()
                await self._maybe_close(state)
            if self._rules_up:
                await self.redirector.teardown()
                self._rules_up = False
        for task in list(self._tasks):
            task.cancel()

    # -- ports -------------------------------------------------------------------------------

    async def _open_port(self, port: int) -> _PortState:
        sock = await self.executor.listen_tcp()
        listen_port = int(sock.getsockname()[1])
        try:
            server = await asyncio.start_server(
                lambda r, w: self._on_connection(port, r, w), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        try:
            if not self._rules_up:
                await self.redirector.setup()
                self._rules_up = True
            await self.redirector.add(port, listen_port)
        except Exception as exc:
            # Nothing of this port may stay behind: its listener, and the chains if no other
            # port uses them, so the app keeps its traffic.
            server.close()
            if not self.ports and self._rules_up:
                with contextlib.suppress(RedirectError):
                    await self.redirector.teardown()
                self._rules_up = False
            raise IncomingError("EIO", f"cannot redirect port {port}: {exc}", 5) from None
        state = _PortState(port, server, listen_port)
        self.ports[port] = state
        log.info("port %d: redirected to %d", port, listen_port)
        return state

    async def _maybe_close(self, state: _PortState) -> None:
        if state.subs:
            return
        del self.ports[state.port]
        with contextlib.suppress(RedirectError):
            await self.redirector.remove(state.port)
        # Connections already accepted keep going; only new ones reach the app directly.
        state.server.close()
        log.info("port %d: no subscription left; redirect removed", state.port)
        if not self.ports and self._rules_up:
            with contextlib.suppress(RedirectError):
                await self.redirector.teardown()
            self._rules_up = False

    async def _reset(self, port: int) -> list[str]:
        """Reset the app's open connections to a stolen port; a warning for the user if that
        fails. The steal itself stands either way: its rules are in and new connections come
        to the session, so failing here would only leave the port half set up."""
        try:
            killed = await reset_connections(self.executor, port, keep_peers=set(self._passthrough))
        except Exception as exc:
            log.warning("port %d: could not reset open connections: %s", port, exc)
            return [
                f"port {port}: new connections are stolen, but the ones already open were not"
                f" reset and stay with the pod until they close ({exc})"
            ]
        if killed:
            log.info("port %d: reset %d open connection(s) of the app", port, killed)
        return []

    # -- connections -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_connection(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self._spawn(self._serve(port, reader, writer))

    async def _serve(
        self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername")
        client = SocketPipe(reader, writer)
        try:
            dst = original_dst(sock)
        except OSError:
            dst = None
        state = self.ports.get(port)
        if dst is None or state is None or dst[1] != port:
            # Reached our listener directly (not through the redirect), or the port is gone.
            client.abort()
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        params = {
            "port": port,
            "peer": [str(peer[0]), int(peer[1])] if isinstance(peer, tuple) else None,
            "dst": [dst[0], dst[1]],
        }
        subs = list(state.subs)
        copies = [MirrorCopy(s, {**params, "mode": "mirror"}) for s in subs if s.mode == "mirror"]
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
        whole = next((s for s in subs if s.whole), None)
        filtered = [s for s in subs if s.mode == "steal" and s.filter is not None]
        if whole is not None:
            first = b""
            if not whole.steal_probes:
                first = await _peek_request(client) or b""
                if first and _is_probe_request(first):
                    await self._passthrough_with(client, dst, first)
                    return
            await self._steal_whole(client, whole, first, params)
            return
        if filtered:
            opening = await _first_bytes(client, FIRST_BYTES_TIMEOUT)
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
        return _OriginalPipe(reader, writer, (str(local[0]), int(local[1])), self._passthrough)

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
            state = self.ports.get(port)
            if state is None:
                return None
            probe = is_probe(head.headers)
            for sub in state.subs:
                if sub.mode != "steal" or sub.filter is None:
                    continue
                if probe and not (sub.steal_probes or sub.filter.steal_probes):
                    continue
                if sub.filter.matches(head.method, head.target, head.headers):
                    return sub.session.key
            return None

        async def connect(key: Hashable | None) -> Pipe:
            if key is None:
                # A connection to the app opened already (see _silent_client) serves first.
                pipe = ready.pop() if ready else await self._open_original(dst)
                opened.append(pipe)
                return pipe
            state = self.ports.get(port)
            sub = next((s for s in (state.subs if state else []) if s.session.key == key), None)
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


async def _tell_lost(lost: Subscription, by: str) -> None:
    """Let a session know another one took its port (best effort: it may be gone too)."""
    with contextlib.suppress(RemoteOpError, TunnelClosedError, TimeoutError):
        await lost.session.tunnel.request(
            "incoming.lost", {"port": lost.port, "by": by}, timeout=OPEN_TIMEOUT
        )


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


def _is_probe_request(data: bytes) -> bool:
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    headers = []
    for line in head.split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers.append((name.strip(), value.strip()))
    return is_probe(headers)
