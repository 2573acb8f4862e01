"""Tunnel: one protocol Connection driven over a Transport by a reader and a writer task.

A resumable tunnel (its handshake gave a resume token) outlives its transport: when the
transport breaks, the tunnel is *suspended* (requests and streams wait, nothing fails) until
the client side `resume`s it over a new transport, or the agent side `adopt`s the transport
a resuming client came back on, or someone gives up (`abandon`).
"""

import asyncio
import contextlib
import errno
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tether.errors import UserError
from tether.protocol import (
    BufferRoom,
    Connection,
    ConnectionTerminated,
    DataReceived,
    Handshaken,
    HandshakeRejected,
    PongReceived,
    ProtocolError,
    RemoteError,
    RequestReceived,
    ResponseReceived,
    Resumed,
    ResumeRequested,
    StreamAccepted,
    StreamEnded,
    StreamOpened,
    StreamReset,
    WindowUpdated,
)
from tether.protocol.errors import LocalProtocolError
from tether.protocol.messages import MessageError, Request, decode_answer, encode_request
from tether.tunnel.stream import TunnelStream
from tether.tunnel.transport import Transport

A = TypeVar("A")
log = logging.getLogger("tether.tunnel")

RequestHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
StreamHandler = Callable[[TunnelStream], Awaitable[None]]
_WRITE_CHUNK = 256 * 1024


class TunnelClosedError(UserError, ConnectionError):
    """The tunnel is gone (transport closed, protocol error, or rejected handshake)."""


class PeerMovedError(TunnelClosedError):
    """The peer ended the session with a GOAWAY code the tunnel was told to follow
    (`follow_codes`): it is suspended, waiting for a `rebase` onto another peer."""

    def __init__(self, reason: str, code: str) -> None:
        super().__init__(reason)
        self.code = code


class ResumeRefusedError(TunnelClosedError):
    """The agent would not take the session back (it expired, or the agent is another)."""


class RemoteOpError(UserError):
    """The peer answered a request or a stream open with an error."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(error.message or error.code)
        self.error = error


class Tunnel:
    """Drives a Connection over a Transport. Use `start()`, then requests and streams."""

    def __init__(
        self,
        conn: Connection,
        transport: Transport,
        *,
        on_request: RequestHandler | None = None,
        on_stream: StreamHandler | None = None,
    ) -> None:
        self.conn = conn
        self.transport = transport
        self._on_request = on_request
        self._on_stream = on_stream
        self._streams: dict[int, TunnelStream] = {}
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._opening: dict[int, asyncio.Future[TunnelStream]] = {}
        loop = asyncio.get_running_loop()
        self._handshake: asyncio.Future[Handshaken | ResumeRequested] = loop.create_future()
        self._resumed: asyncio.Future[None] | None = None
        self._pongs: dict[bytes, asyncio.Future[float]] = {}
        self._ping_ids = itertools.count()
        self._dirty = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        # The reader and writer of the current transport; a new transport gets new ones.
        self._loops: list[asyncio.Task[Any]] = []
        self._generation = 0
        self._closed: BaseException | None = None
        self._done = asyncio.Event()
        # Set while the transport is down and the tunnel waits for a resume (`lost_because`
        # says why); cleared by a resume.
        self._interrupted = asyncio.Event()
        self._connected = asyncio.Event()
        self._connected.set()
        self._suspensions = 0
        self._handing_over = False
        self.lost_because: BaseException | None = None
        self.last_received = time.monotonic()
        # The peer ended the tunnel on purpose (GOAWAY), as opposed to the transport failing.
        self.peer_closed = False
        # GOAWAY codes after which the tunnel waits for a `rebase` instead of ending.
        self.follow_codes: frozenset[str] = frozenset()

    def set_request_handler(self, handler: RequestHandler | None) -> None:
        """Answer the peer's requests with `handler` from now on (None: ENOSYS)."""
        self._on_request = handler

    def set_stream_handler(self, handler: StreamHandler | None) -> None:
        """Serve streams the peer opens with `handler` from now on (None: refuse them)."""
        self._on_stream = handler

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, timeout: float = 10.0) -> Handshaken | ResumeRequested:
        """Run the reader/writer tasks and complete the handshake (client or agent side).

        On the agent side the peer may instead ask to resume another session: then this
        tunnel stops reading and returns the `ResumeRequested`; pass its transport to that
        session's `adopt` (`hand_over`) or `refuse` it."""
        if self.conn.role.value == "client":
            self.conn.initiate()
            self._flush()
        self._run_loops()
        try:
            return await asyncio.wait_for(asyncio.shield(self._handshake), timeout)
        except TimeoutError:
            await self.close("handshake timeout")
            raise TunnelClosedError(f"no handshake within {timeout:.0f} s") from None

    def _run_loops(self) -> None:
        self._generation += 1
        generation = self._generation
        self._loops = [
            asyncio.ensure_future(self._read_loop(generation)),
            asyncio.ensure_future(self._write_loop(generation)),
        ]

    def _stop_loops(self) -> None:
        for task in self._loops:
            if task is not asyncio.current_task():
                task.cancel()
        self._loops = []

    async def wait_closed(self) -> BaseException | None:
        """Wait until the tunnel ends; return why (None for a clean close)."""
        await self._done.wait()
        return self._closed

    async def wait_interrupted(self) -> None:
        """Wait until the transport is lost (the tunnel is suspended) or the tunnel ends."""
        done = asyncio.ensure_future(self._done.wait())
        lost = asyncio.ensure_future(self._interrupted.wait())
        try:
            await asyncio.wait([done, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            lost.cancel()

    async def wait_connected(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a suspended tunnel to be resumed; False if it was not
        (or it ended)."""
        done = asyncio.ensure_future(self._done.wait())
        back = asyncio.ensure_future(self._connected.wait())
        try:
            await asyncio.wait([done, back], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            done.cancel()
            back.cancel()
        return self._connected.is_set() and not self._done.is_set()

    @property
    def suspended(self) -> bool:
        """Whether the transport is gone and the tunnel waits for a resume."""
        return self._interrupted.is_set() and not self._done.is_set()

    @property
    def resumable(self) -> bool:
        """Whether a lost transport suspends this tunnel instead of ending it."""
        return self.conn.resumable

    def transport_failed(self, why: BaseException) -> None:
        """The transport is dead (it failed, or keepalives went unanswered): suspend a
        resumable tunnel, end any other."""
        if self._resumed is not None and not self._resumed.done():
            # The new transport of a resume in progress failed too: `resume` says so.
            self._resumed.set_exception(TunnelClosedError(f"the new connection failed: {why}"))
            return
        if self._done.is_set() or self._interrupted.is_set():
            return
        if not self.conn.resumable or self.peer_closed or self.conn.closed:
            self._finish(why)
            self._spawn(self.transport.close())
            return
        log.info("transport lost: %s", why)
        self._suspend(why)

    def _suspend(self, why: BaseException) -> None:
        self.lost_because = why
        self._suspensions += 1
        self._connected.clear()
        self._interrupted.set()
        self._stop_loops()
        self.conn.transport_lost()
        self._spawn(self.transport.close())

    async def rebase(self, conn: Connection, transport: Transport, timeout: float = 10.0) -> None:
        """Carry on with another peer: a fresh client `conn` over `transport` (an agent next
        to another pod of the workload). What lived on the old connection cannot move:
        every stream is reset (ECONNRESET) and every pending request fails; the handlers,
        and so whoever holds this tunnel, stay.

        Raises TunnelClosedError (or the transport's error) if the handshake fails; the
        tunnel is then still suspended, for another try."""
        gone = RemoteError("ECONNRESET", "the pod went away", errno.ECONNRESET)
        moved = TunnelClosedError("the pod went away")
        for stream in list(self._streams.values()):
            stream._on_reset(gone)
        self._streams.clear()
        for fut in [*self._pending.values(), *self._opening.values(), *self._pongs.values()]:
            if not fut.done():
                fut.set_exception(moved)
        self._pending.clear()
        self._opening.clear()
        self._pongs.clear()
        self._stop_loops()
        self.conn = conn
        self.transport = transport
        self.peer_closed = False
        self._handing_over = False
        self._handshake = asyncio.get_running_loop().create_future()
        conn.initiate()
        self._run_loops()
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self._handshake), timeout)
        except TimeoutError:
            await self._drop(transport)
            raise TunnelClosedError(f"no handshake within {timeout:g} s") from None
        self.lost_because = None
        self._interrupted.clear()
        self._connected.set()
        self.last_received = time.monotonic()

    async def resume(self, transport: Transport, timeout: float = 10.0) -> None:
        """Client: carry on over `transport` (a new port-forward to the same agent).

        Raises ResumeRefusedError when the agent will not take us back (the tunnel is then
        closed), TunnelClosedError/OSError when this transport failed too (still suspended:
        try again)."""
        if not self.suspended:
            raise TunnelClosedError("the tunnel is not waiting for a resume")
        self.transport = transport
        self.conn.resume()
        loop = asyncio.get_running_loop()
        self._resumed = loop.create_future()
        self._run_loops()
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(self._resumed), timeout)
        except TimeoutError:
            await self._drop(transport)
            raise TunnelClosedError(f"no answer to the resume within {timeout:g} s") from None
        except BaseException:
            if not self._done.is_set():
                await self._drop(transport)
            raise
        finally:
            self._resumed = None

    async def _drop(self, transport: Transport) -> None:
        # A new transport that failed during its handshake: back to waiting for the next.
        self._stop_loops()
        self.conn.transport_lost()
        await transport.close()

    def hand_over(self) -> Transport:
        """Agent: this (fresh) tunnel's peer asked to resume another session: stop reading
        and give its transport away, without closing it."""
        self._stop_loops()
        self._closed = TunnelClosedError("handed over to a resumed session")
        self._done.set()
        return self.transport

    async def refuse(self, code: str, reason: str) -> None:
        """Agent: refuse the resume this (fresh) tunnel's peer asked for, with one line."""
        self._stop_loops()
        self.conn.reject(code, reason)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.transport.write(self.conn.data_to_send()), 2)
        self._finish(TunnelClosedError(reason))
        await self.transport.close()

    def adopt(self, transport: Transport, peer_received: int) -> None:
        """Agent: the client came back on `transport`; resume over it (LocalProtocolError if
        its count does not fit this session: refuse it then)."""
        if self._done.is_set():
            raise LocalProtocolError("the session is over")
        old = self.transport
        self.conn.accept_resume(peer_received)
        self._stop_loops()
        self.transport = transport
        if old is not transport:
            self._spawn(old.close())
        self.lost_because = None
        self._interrupted.clear()
        self._connected.set()
        self.last_received = time.monotonic()
        self._run_loops()
        self._flush()
        self._wake_writers()

    def abandon(self, why: BaseException) -> None:
        """Give up on a suspended tunnel: fail everything that waited for the resume."""
        self._stop_loops()
        self._finish(why)

    @property
    def closed_because(self) -> BaseException | None:
        """Why the tunnel closed (None while it is open)."""
        return self._closed

    @property
    def closed(self) -> bool:
        """Whether the tunnel has ended."""
        return self._done.is_set()

    async def close(self, reason: str = "", code: str = "") -> None:
        """Say GOAWAY (with `code` for the peer to act on), flush, close the transport, and
        fail everything pending."""
        if self._done.is_set():
            return
        with contextlib.suppress(LocalProtocolError):
            self.conn.close(reason, code)
        data = self.conn.data_to_send()
        if data:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.transport.write(data), 2)
        self._finish(None)
        await self.transport.close()

    def _finish(self, why: BaseException | None) -> None:
        if self._done.is_set():
            return
        self._closed = why
        self._done.set()
        closed = TunnelClosedError(str(why) if why else "tunnel closed")
        gone = RemoteError("ECONNRESET", "tunnel closed", errno.ECONNRESET)
        for fut in [*self._pending.values(), *self._opening.values(), *self._pongs.values()]:
            if not fut.done():
                fut.set_exception(closed)
        if not self._handshake.done():
            self._handshake.set_exception(closed)
        if self._resumed is not None and not self._resumed.done():
            self._resumed.set_exception(closed)
        for stream in list(self._streams.values()):
            stream._on_reset(gone)
        self._streams.clear()
        self._stop_loops()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- I/O loops ---------------------------------------------------------------------------

    async def _read_loop(self, generation: int) -> None:
        transport = self.transport
        try:
            while True:
                try:
                    data = await transport.read()
                except (OSError, ConnectionError):
                    raise
                except Exception as exc:  # a transport's own error type (PortForwardError)
                    raise ConnectionError(str(exc)) from exc
                if generation != self._generation:
                    return
                if not data:
                    # asyncio keeps a socket open after the peer's EOF: without closing it,
                    # every session that hangs up would leave the agent a half-closed one.
                    self.transport_failed(TunnelClosedError("the other side closed the tunnel"))
                    await transport.close()
                    return
                self.last_received = time.monotonic()
                for event in self.conn.receive_data(data):
                    self._handle(event)
                self._flush()
                if self._handing_over:
                    return  # the shell hands this transport to the session it names
        except ProtocolError as exc:
            self._flush()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.write(self.conn.data_to_send()), 1)
            self._finish(exc)
            await transport.close()
        except (OSError, ConnectionError) as exc:
            if generation == self._generation:
                self.transport_failed(exc)
            await transport.close()

    async def _write_loop(self, generation: int) -> None:
        transport = self.transport
        try:
            while True:
                await self._dirty.wait()
                if generation != self._generation:
                    return
                self._dirty.clear()
                data = self.conn.data_to_send()
                for start in range(0, len(data), _WRITE_CHUNK):
                    await transport.write(data[start : start + _WRITE_CHUNK])
        except Exception as exc:  # OSError, or a transport's own (PortForwardError)
            if generation == self._generation:
                self.transport_failed(exc)

    def _flush(self) -> None:
        # Most calls (an acknowledgement below the batching threshold) queue nothing: waking
        # the writer for them would cost a task switch per chunk on the hot path.
        if self.conn.wants_write:
            self._dirty.set()

    # -- events ------------------------------------------------------------------------------

    def _handle(self, event: object) -> None:
        if isinstance(event, DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_data(event.data)
        elif isinstance(event, WindowUpdated):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_credit()
        elif isinstance(event, ResponseReceived):
            fut = self._pending.pop(event.request_id, None)
            if fut is not None and not fut.done():
                if event.error is not None:
                    fut.set_exception(RemoteOpError(event.error))
                else:
                    fut.set_result(event.result)
        elif isinstance(event, RequestReceived):
            self._spawn(self._serve_request(event))
        elif isinstance(event, StreamOpened):
            stream = TunnelStream(self, event.stream_id, event.kind, event.params)
            self._streams[event.stream_id] = stream
            if self._on_stream is None:
                self._reset(
                    event.stream_id, RemoteError("EOPNOTSUPP", "no streams here", errno.EOPNOTSUPP)
                )
            else:
                self._spawn(self._serve_stream(stream))
        elif isinstance(event, StreamAccepted):
            opening = self._opening.pop(event.stream_id, None)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.info = event.info
                stream._on_credit()
                if opening is not None and not opening.done():
                    opening.set_result(stream)
        elif isinstance(event, StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream._on_eof()
        elif isinstance(event, StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream._on_reset(event.error)
            opening = self._opening.pop(event.stream_id, None)
            if opening is not None and not opening.done():
                opening.set_exception(RemoteOpError(event.error))
        elif isinstance(event, PongReceived):
            pong = self._pongs.pop(event.data, None)
            if pong is not None and not pong.done():
                pong.set_result(time.monotonic())
        elif isinstance(event, BufferRoom):
            self._wake_writers()
        elif isinstance(event, (Handshaken, ResumeRequested)):
            self._handing_over = isinstance(event, ResumeRequested)
            if not self._handshake.done():
                self._handshake.set_result(event)
        elif isinstance(event, Resumed):
            self.lost_because = None
            self._interrupted.clear()
            self._connected.set()
            if self._resumed is not None and not self._resumed.done():
                self._resumed.set_result(None)
            self._wake_writers()
        elif isinstance(event, HandshakeRejected):
            error: TunnelClosedError = (
                ResumeRefusedError(event.reason)
                if self._resumed is not None
                else TunnelClosedError(event.reason)
            )
            if not self._handshake.done():
                self._handshake.set_exception(error)
            if self._resumed is not None and not self._resumed.done():
                self._resumed.set_exception(error)
            self._finish(error)
        elif isinstance(event, ConnectionTerminated):
            self.peer_closed = True
            why = TunnelClosedError(event.reason or "the other side closed the tunnel")
            if event.code and event.code in self.follow_codes:
                # The session may carry on elsewhere (`rebase`): wait for that instead.
                self._suspend(PeerMovedError(event.reason, event.code))
                return
            self._finish(why)

    async def _serve_request(self, event: RequestReceived) -> None:
        try:
            if self._on_request is None:
                raise RemoteOpError(
                    RemoteError("ENOSYS", f"unsupported operation {event.op}", errno.ENOSYS)
                )
            result = await self._on_request(event.op, event.args)
        except RemoteOpError as exc:
            self._answer_error(event.request_id, exc.error)
        except OSError as exc:
            self._answer_error(event.request_id, RemoteError.from_os_error(exc, str(exc)))
        except Exception as exc:  # one bad request must never take the tunnel down
            log.exception("request %s failed", event.op)
            self._answer_error(
                event.request_id, RemoteError("EIO", f"{type(exc).__name__}: {exc}", errno.EIO)
            )
        else:
            if not self._done.is_set():
                self.conn.send_response(event.request_id, result)
                self._flush()

    def _answer_error(self, request_id: int, error: RemoteError) -> None:
        if not self._done.is_set():
            self.conn.send_error(request_id, error)
            self._flush()

    async def _serve_stream(self, stream: TunnelStream) -> None:
        assert self._on_stream is not None
        try:
            await self._on_stream(stream)
        except Exception as exc:
            log.exception("stream %s (%s) failed", stream.id, stream.kind)
            stream.reset("EIO", str(exc), errno.EIO)
        finally:
            self._forget(stream.id)

    # -- used by TunnelStream ----------------------------------------------------------------

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if not self._done.is_set():
            self.conn.acknowledge(stream_id, size)
            self._flush()

    def _credit(self, stream_id: int) -> int:
        try:
            return self.conn.send_credit(stream_id)
        except LocalProtocolError:
            return 0

    def _wake_writers(self) -> None:
        # Credit may be back for every stream at once (a resume, or room in the retransmit
        # buffer): each writer checks its own.
        for stream in self._streams.values():
            stream._on_credit()

    def _send(self, stream_id: int, data: bytes) -> None:
        self.conn.send_data(stream_id, data)
        self._flush()

    def _end(self, stream_id: int) -> None:
        with contextlib.suppress(LocalProtocolError):
            self.conn.end_stream(stream_id)
            self._flush()

    def _reset(self, stream_id: int, error: RemoteError) -> None:
        self._streams.pop(stream_id, None)
        if not self._done.is_set():
            self.conn.reset_stream(stream_id, error)
            self._flush()

    def _forget(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None and stream_id not in self.conn.stream_ids():
            del self._streams[stream_id]

    # -- public operations -------------------------------------------------------------------

    async def request(self, op: str, args: dict[str, Any], timeout: float | None = 30) -> Any:
        """Ask the peer for `op`; return its result or raise RemoteOpError / TunnelClosedError."""
        if self._done.is_set():
            raise TunnelClosedError(str(self._closed or "tunnel closed"))
        rid = self.conn.send_request(op, args)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        self._flush()
        try:
            while True:
                suspensions = self._suspensions
                try:
                    return await asyncio.wait_for(asyncio.shield(fut), timeout)
                except TimeoutError:
                    # Time spent reconnecting is not the peer's slowness: the answer comes
                    # after the resume (or the tunnel ends, failing `fut`).
                    if self.suspended or suspensions != self._suspensions:
                        continue
                    raise
        finally:
            self._pending.pop(rid, None)

    async def call(self, request: Request[A], timeout: float | None = 30) -> A:
        """Send a typed request (protocol/messages.py); return its typed answer.

        Raises RemoteOpError (the peer refused, or answered outside the vocabulary) and
        TunnelClosedError."""
        op, args = encode_request(request)
        result = await self.request(op, args, timeout)
        try:
            return decode_answer(request, result)
        except MessageError as exc:
            raise RemoteOpError(exc.error) from None

    async def open_stream(self, kind: str, params: dict[str, Any]) -> TunnelStream:
        """Open a stream and wait until the peer accepts it (RemoteOpError if refused)."""
        if self._done.is_set():
            raise TunnelClosedError(str(self._closed or "tunnel closed"))
        sid = self.conn.open_stream(kind, params)
        stream = TunnelStream(self, sid, kind, params)
        self._streams[sid] = stream
        fut: asyncio.Future[TunnelStream] = asyncio.get_running_loop().create_future()
        self._opening[sid] = fut
        self._flush()
        return await fut

    def accept(self, stream: TunnelStream, info: dict[str, Any] | None = None) -> None:
        """Accept a stream the peer opened (in the on_stream handler)."""
        stream.info = info or {}
        self.conn.accept_stream(stream.id, info)
        self._flush()

    def poke(self) -> None:
        """Queue a keepalive ping without waiting for its pong (any answer from the peer
        counts as life: `last_received`)."""
        if not self._done.is_set() and not self.suspended:
            self.conn.ping(b"k")
            self._flush()

    async def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time of a keepalive ping, in seconds."""
        if self._done.is_set() or self.suspended:
            raise TunnelClosedError("the tunnel's transport is down")
        token = str(next(self._ping_ids)).encode()
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._pongs[token] = fut
        sent = time.monotonic()
        self.conn.ping(token)
        self._flush()
        try:
            return await asyncio.wait_for(fut, timeout) - sent
        finally:
            self._pongs.pop(token, None)
