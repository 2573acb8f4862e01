"""HTTP/1.x request routing: each request of a client connection goes to the upstream its
route key names (the original app, or a session's local app).

What to do is decided by `http1_core.Http1Core` (events in, actions out; see there for the
routing itself). This module is its asyncio shell: it owns the pipes, reads the client and the
upstreams and feeds the core, and performs the actions: connecting, writing with back-pressure,
splicing raw bytes after a protocol switch, lingering before closing.

Tasks: one reads the client, one per upstream connection reads it (after connecting it), and
the serving task waits for the end and cleans up. Whoever's event made bytes to send writes
them itself before reading on (`_Out`), so each direction runs at its reader's pace, as with
plain `await write(...)`, while the two directions of an exchange stay independent: an app may
answer before it has read the request body.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any

from tether.agent.incoming.http1_core import (
    AbortClient,
    Action,
    CloseClient,
    CloseUpstream,
    Http1Core,
    OpenUpstream,
    ReadClient,
    SendClient,
    SendUpstream,
    Splice,
)
from tether.agent.incoming.pipes import Pipe
from tether.agent.incoming.routing import Connect, Decide, log

# How long, and for how many bytes, we keep reading (and dropping) what a client still sends
# after we decided to close its connection. Closing a socket with unread data makes the
# kernel send RST, which can destroy the response still on its way to the client.
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 1 << 20
# Queued pieces up to this size together are joined into one write (see _Out._take).
_SMALL = 16384

_Final = Splice | CloseClient | AbortClient


class _Out:
    """The bytes queued for one pipe, written in order.

    Whoever queues bytes writes them too (`flush`) before reading on: that is the
    back-pressure. A flush waits only for bytes queued before its own (another task may be
    writing those), never for later ones, so no task waits on a direction it does not feed.
    """

    __slots__ = (
        "_waiters",
        "busy",
        "closed",
        "failed",
        "owner",
        "pipe",
        "pushed",
        "queue",
        "taken",
        "written",
    )

    def __init__(self, pipe: Pipe, owner: int | None) -> None:
        self.pipe = pipe
        self.owner = owner  # the upstream connection id; None for the client
        self.queue: collections.deque[bytes | None] = collections.deque()  # None: half-close
        # Items queued, taken off the queue to be written, and written (or given up on).
        self.pushed = self.taken = self.written = 0
        self.busy = False  # a flush is writing
        self.closed = False
        self.failed: OSError | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def push(self, item: bytes | None) -> int:
        """Queue bytes (None: half-close after them); the mark to `flush` up to."""
        if not self.closed:
            self.queue.append(item)
            self.pushed += 1
        return self.pushed

    async def flush(self, upto: int) -> OSError | None:
        """Write what was queued up to mark `upto`; the error if writing failed."""
        while self.written < upto and not self.closed:
            if self.busy:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
                continue
            self.busy = True
            try:
                while self.taken < upto:
                    item = self._take(upto)
                    if item is None:
                        self.pipe.write_eof()
                    else:
                        await self.pipe.write(item)
                    self.written = self.taken
            except OSError as exc:
                self.failed = exc
                self.close()
            finally:
                # A write cut short (cancelled) counts as written: it is never repeated.
                self.written = self.taken
                self.busy = False
                waiters, self._waiters = self._waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
        return self.failed

    def _take(self, upto: int) -> bytes | None:
        """The next item to write. Small pieces queued together come joined: a head and a
        short body go out in one write (one system call, one packet)."""
        queue = self.queue
        item = queue.popleft()
        self.taken += 1
        if item is None or len(item) >= _SMALL:
            return item
        parts = [item]
        size = len(item)
        while self.taken < upto:
            following = queue[0]
            if following is None or size + len(following) > _SMALL:
                break
            queue.popleft()
            parts.append(following)
            self.taken += 1
            size += len(following)
        return item if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        """Drop what is queued and take no more."""
        self.closed = True
        self.queue.clear()
        self.taken = self.written = self.pushed


class _Link:
    """The shell's side of one upstream connection."""

    __slots__ = ("closed", "id", "key", "out", "pipe", "reading", "task")

    def __init__(self, conn_id: int, key: Hashable | None) -> None:
        self.id = conn_id
        self.key = key
        self.pipe: Pipe | None = None  # None while connecting
        self.out: _Out | None = None
        self.task: asyncio.Task[None] | None = None  # connecting, then reading
        self.reading = False  # the task waits in pipe.read()
        self.closed = False


class _Http1Shell:
    """Serves one HTTP/1.x client connection by running an `Http1Core`."""

    def __init__(self, client: Pipe, decide: Decide, connect: Connect) -> None:
        self.client = client
        self.connect = connect
        self.core = Http1Core(decide)
        self.client_out = _Out(client, None)
        self.links: dict[int, _Link] = {}
        self.tasks: set[asyncio.Task[None]] = set()  # connecting and reading upstreams
        self.closing: set[asyncio.Task[None]] = set()  # closing upstreams
        self.final: _Final | None = None
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.spliced: _Link | None = None
        # The client reader: whether the core wants client bytes, and how (ReadClient).
        self.want_client = False
        self.pace_client = False
        self.client_wakeup: asyncio.Future[None] | None = None
        self.client_task: asyncio.Task[None] | None = None

    # -- the connection ---------------------------------------------------------------------

    async def serve(self, first: bytes) -> None:
        try:
            self.client_task = asyncio.create_task(self._read_client(first))
            await self.finished
            if isinstance(self.final, Splice):
                await self._splice(self.final)
            await self._wind_down()
        except asyncio.CancelledError:
            # No awaiting here: a cancelled task must not be stopped halfway through cleanup.
            for task in self._tasks():
                task.cancel()
            for link in self.links.values():
                if link.pipe is not None:
                    link.pipe.abort()
            self.client.abort()
            raise

    def _tasks(self) -> list[asyncio.Task[None]]:
        tasks = [*self.tasks, self.client_task] if self.client_task is not None else [*self.tasks]
        return [task for task in tasks if not task.done()]

    def _spawn(
        self, coro: Coroutine[Any, Any, None], into: set[asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)
        return task

    async def _wind_down(self) -> None:
        """After the final action: the last answer out, then every upstream closed, then the
        client (lingering, or reset)."""
        final = self.final
        graceful = not isinstance(final, AbortClient)
        if isinstance(final, CloseClient):
            error = await self.client_out.flush(self.client_out.pushed)
            if error is not None:
                log.debug("HTTP/1 connection ended: %r", error)
                graceful = False
        stopped = self._tasks()
        for task in stopped:
            task.cancel()
        for conn in list(self.links):
            self._close_link(conn)
        await _settle([*stopped, *self.closing])
        if not graceful:
            self.client.abort()
            with contextlib.suppress(OSError):
                await self.client.close()
            return
        if isinstance(final, CloseClient) and final.linger:
            self.client.write_eof()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(_LINGER_SECONDS):
                    drained = 0
                    while drained < _LINGER_BYTES:
                        data = await self.client.read()
                        if not data:
                            break
                        drained += len(data)
        with contextlib.suppress(OSError):
            await self.client.close()

    def _fail(self) -> None:
        """An unexpected error in a task: give up on the connection."""
        log.debug("HTTP/1 connection failed", exc_info=True)
        self._finish(AbortClient())

    def _finish(self, final: _Final) -> None:
        if self.final is None:
            self.final = final
            self.finished.set_result(None)
            self._wake_client()

    # -- performing actions -----------------------------------------------------------------

    async def _apply(self, actions: list[Action]) -> None:
        """Perform `actions` in order. Bytes are queued at once and then written by this task
        (that is its back-pressure); closing and ending wait until the bytes queued before
        them are written, as their order asks. A failed write is reported to the core, and
        what it answers is performed too."""
        while actions:
            flushes: dict[_Out, int] = {}
            ends: list[CloseUpstream | Splice | CloseClient] = []
            for action in actions:
                if isinstance(action, SendClient):
                    flushes[self.client_out] = self.client_out.push(action.data)
                elif isinstance(action, SendUpstream):
                    link = self.links.get(action.conn)
                    if link is not None and link.out is not None:
                        flushes[link.out] = link.out.push(action.data)
                elif isinstance(action, ReadClient):
                    self.want_client = True
                    self.pace_client = action.next_request
                    self._wake_client()
                elif isinstance(action, OpenUpstream):
                    self._open(action.conn, action.key)
                elif isinstance(action, AbortClient):
                    self._finish(action)  # at once: what is still queued does not matter
                else:
                    ends.append(action)
            actions = await self._flush(flushes)
            for end in ends:
                if isinstance(end, CloseUpstream):
                    self._close_link(end.conn)
                elif isinstance(end, Splice):
                    flushes = self._start_splice(end)
                    self._finish(end)
                    actions += await self._flush(flushes)
                else:
                    self._finish(end)

    async def _flush(self, flushes: dict[_Out, int]) -> list[Action]:
        """Write the queues up to the marks; the core's answers to failed writes."""
        actions: list[Action] = []
        for out, upto in flushes.items():
            error = await out.flush(upto)
            if error is not None:
                actions += self._write_failed(out, error)
        return actions

    def _write_failed(self, out: _Out, error: OSError) -> list[Action]:
        if self.spliced is not None:
            return []  # the splice's own relays see it
        if out.owner is None:
            log.debug("HTTP/1 connection ended: %r", error)
            return self.core.client_reset()
        return self.core.upstream_write_failed(out.owner, error)

    # -- the client ------------------------------------------------------------------------

    def _wake_client(self) -> None:
        if self.client_wakeup is not None and not self.client_wakeup.done():
            self.client_wakeup.set_result(None)

    async def _read_client(self, first: bytes) -> None:
        """Read the client whenever the core asks, and feed it; relay raw after a splice."""
        unread: bytes | None = None  # read just as the splice began (not expected)
        try:
            await self._apply(self.core.client_data(first))
            while self.final is None:
                if not self.want_client:
                    self.client_wakeup = asyncio.get_running_loop().create_future()
                    await self.client_wakeup
                    continue
                self.want_client = False
                if self.pace_client:
                    # Earlier answers go out before the next request is read.
                    error = await self.client_out.flush(self.client_out.pushed)
                    if error is not None:
                        await self._apply(self._write_failed(self.client_out, error))
                        continue
                try:
                    data = await self.client.read()
                except OSError as exc:
                    log.debug("HTTP/1 connection ended: %r", exc)
                    await self._apply(self.core.client_reset())
                    return
                if self.final is not None:
                    unread = data
                    break
                await self._apply(self.core.client_data(data) if data else self.core.client_eof())
                if not data:
                    return
        except Exception:
            self._fail()
            return
        link = self.spliced
        if isinstance(self.final, Splice) and link is not None and link.out is not None:
            # The splice's client-to-upstream direction (its errors end the splice).
            if self.final.client_ended:
                await _flush_or_raise(link.out)
            else:
                await _relay_raw(self.client.read, link.out, unread)

    # -- upstreams ---------------------------------------------------------------------------

    def _open(self, conn: int, key: Hashable | None) -> None:
        link = _Link(conn, key)
        self.links[conn] = link
        link.task = self._spawn(self._connect(link), self.tasks)

    async def _connect(self, link: _Link) -> None:
        try:
            try:
                pipe = await self.connect(link.key)
            except Exception as exc:
                if not link.closed:
                    await self._apply(self.core.upstream_failed(link.id, exc))
                return
            if link.closed:  # abandoned while connecting
                await _close_quietly(pipe)
                return
            link.pipe = pipe
            link.out = _Out(pipe, link.id)
            # Reading starts at once, in a task of its own: the answer may come while this
            # task still writes the request body.
            link.task = self._spawn(self._read_upstream(link, pipe), self.tasks)
            await self._apply(self.core.upstream_opened(link.id))
        except Exception:
            self._fail()

    async def _read_upstream(self, link: _Link, pipe: Pipe) -> None:
        """Read an upstream connection all the time and feed the core; relay raw after a
        splice (whose errors end the splice, see `_splice`)."""
        try:
            while not link.closed:
                link.reading = True
                try:
                    data = await pipe.read()
                except OSError as exc:
                    link.reading = False  # (before the finally) a busy writer is not cut short
                    if self.spliced is link:
                        raise
                    await self._apply(self.core.upstream_reset(link.id, exc))
                    return
                finally:
                    link.reading = False
                if self.spliced is link:
                    await _relay_raw(pipe.read, self.client_out, data)
                    return
                if link.closed or self.final is not None:
                    return
                if not data:
                    await self._apply(self.core.upstream_eof(link.id))
                    return
                await self._apply(self.core.upstream_data(link.id, data))
                if self.spliced is link:
                    await _relay_raw(pipe.read, self.client_out)
                    return
        except Exception:
            if self.spliced is link:
                raise
            self._fail()

    def _close_link(self, conn: int) -> None:
        link = self.links.pop(conn, None)
        if link is None:
            return
        link.closed = True
        if link.out is not None:
            link.out.close()
        task = link.task
        # Only a read is cut short: a reader busy writing what it read (to the client, which
        # others write to as well) must not leave half a message there; it sees `closed`.
        if (
            task is not None
            and task is not asyncio.current_task()
            and (link.reading or link.pipe is None)
        ):
            task.cancel()
        if link.pipe is not None:
            self._spawn(_close_quietly(link.pipe), self.closing)

    # -- after a protocol switch ------------------------------------------------------------

    def _start_splice(self, splice: Splice) -> dict[_Out, int]:
        """Queue the bytes h11 already holds for each side (the relays read on after them)."""
        link = self.links[splice.conn]
        assert link.out is not None
        self.spliced = link
        flushes: dict[_Out, int] = {}
        if splice.to_upstream:
            flushes[link.out] = link.out.push(splice.to_upstream)
        if splice.client_ended:
            flushes[link.out] = link.out.push(None)
        if splice.to_client:
            flushes[self.client_out] = self.client_out.push(splice.to_client)
        if splice.upstream_ended:
            flushes[self.client_out] = self.client_out.push(None)
        return flushes

    async def _splice(self, splice: Splice) -> None:
        """Wait until both directions of the splice have ended (WebSocket, CONNECT, h2c...):
        the client's reader relays to the upstream, the upstream's reader to the client."""
        link = self.links[splice.conn]
        relays = [task for task in (self.client_task, link.task) if task is not None]
        if splice.upstream_ended:  # nobody reads the upstream any more: just the last bytes
            relays.append(self._spawn(_flush_or_raise(self.client_out), self.tasks))
        done, _ = await asyncio.wait(relays, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if failed:
            log.debug("spliced connection broke: %r", failed[0].exception())
            if link.pipe is not None:
                link.pipe.abort()
            self.client.abort()
        for task in relays:
            task.cancel()
        await asyncio.wait(relays)
        for task in relays:
            if not task.cancelled():
                task.exception()  # seen (the first one is logged above)


async def serve_http1(client: Pipe, first: bytes, decide: Decide, connect: Connect) -> None:
    """Route the requests of one HTTP/1.x client connection (see `router.route_http`)."""
    await _Http1Shell(client, decide, connect).serve(first)


# -- helpers -------------------------------------------------------------------------------------


async def _relay_raw(
    read: Callable[[], Awaitable[bytes]], out: _Out, data: bytes | None = None
) -> None:
    """One direction of a splice: `data` (already read) and then whatever `read` gives, to
    `out`, then a half-close. Raises OSError when either side breaks."""
    while True:
        if data is None:
            data = await read()
        if not data:
            break
        out.push(data)
        await _flush_or_raise(out)
        data = None
    out.push(None)
    await _flush_or_raise(out)


async def _flush_or_raise(out: _Out) -> None:
    error = await out.flush(out.pushed)
    if error is not None:
        raise error


async def _close_quietly(pipe: Pipe) -> None:
    with contextlib.suppress(OSError):
        await pipe.close()


async def _settle(tasks: list[asyncio.Task[None]]) -> None:
    """Wait until `tasks` are over, whatever they ended with (errors logged, not raised)."""
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("helper task ended with %r", exc, exc_info=exc)
