"""HTTP/2 request routing (cleartext, prior knowledge; this is how gRPC talks): the asyncio
shell around `http2_core.Http2Core`, which holds every h2 state machine, the flow-control
accounting and the routing decisions.

The shell only moves bytes: a read loop per connection feeds the core, and the core's
actions are performed at once and never wait. Bytes go out through one writer task per
connection (so a slow peer never blocks the handling of another), which waits for the pipe's
back-pressure; what can pile up before a writer is bounded by the peers' flow-control
windows, since the core acknowledges data only once it was handed on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable, Coroutine, Hashable
from typing import Any

from tether.agent.incoming.http2_core import (
    PREFACE,
    Action,
    CloseClient,
    CloseUpstream,
    Http2Core,
    OpenUpstream,
    SendClient,
    SendUpstream,
    request_head,
)
from tether.agent.incoming.pipes import Pipe
from tether.agent.incoming.routing import Connect, Decide, log

__all__ = ["PREFACE", "request_head", "serve_http2"]

# How long an upstream may take to send its SETTINGS after we connected.
_HANDSHAKE_TIMEOUT = 10.0
# How long we try to get our last frames (GOAWAY) out when a connection ends.
_CLOSE_TIMEOUT = 1.0


class _Writer:
    """Writes what the core sends on one connection, in order, one write at a time."""

    def __init__(self, pipe: Pipe, on_failed: Callable[[OSError], None]) -> None:
        self.pipe = pipe
        self.task: asyncio.Task[None] | None = None
        self._on_failed = on_failed
        self._queue: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False

    def send(self, data: bytes) -> None:
        self._queue.append(data)
        self._wake.set()

    async def run(self) -> None:
        queue = self._queue
        try:
            while True:
                if not queue:
                    if self._closing:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if len(queue) == 1:
                    data = queue.popleft()
                else:
                    # What piled up during the last write goes out in one (fewer syscalls).
                    data = b"".join(queue)
                    queue.clear()
                await self.pipe.write(data)
        except OSError as exc:
            self._on_failed(exc)

    async def finish(self) -> None:
        """Write what is queued (giving up after _CLOSE_TIMEOUT), then stop."""
        self._closing = True
        self._wake.set()
        if self.task is not None:
            await asyncio.wait({self.task}, timeout=_CLOSE_TIMEOUT)
            await _cancel(self.task)


class _Link:
    """The shell's end of one upstream connection: its connect, then its reader and writer."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id
        self.pipe: Pipe | None = None
        self.writer: _Writer | None = None
        self.connecting: asyncio.Task[None] | None = None
        self.reader: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.closed = False

    def stop(self, *, keep_writer: bool) -> None:
        """Stop the tasks (but the current one, which is about to return on its own)."""
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        current = asyncio.current_task()
        tasks = [self.connecting, self.reader]
        if not keep_writer and self.writer is not None:
            tasks.append(self.writer.task)
        for task in tasks:
            if task is not None and task is not current:
                task.cancel()

    def abort(self) -> None:
        self.stop(keep_writer=False)
        if self.pipe is not None:
            self.pipe.abort()


class _Http2Shell:
    """Serves one HTTP/2 client connection: performs the core's actions, feeds it what the
    connections bring."""

    def __init__(self, client: Pipe, decide: Decide, connect: Connect) -> None:
        self.core = Http2Core(decide)
        self.client = client
        self.connect = connect
        self.client_writer = _Writer(client, self._client_write_failed)
        self.links: dict[int, _Link] = {}  # open ones, by conn id
        self.live: set[_Link] = set()  # open or still closing (to abort if we are cancelled)
        self.closing: set[asyncio.Task[None]] = set()  # graceful closes under way
        self.tasks: set[asyncio.Task[None]] = set()
        self.done = asyncio.Event()
        self.graceful = True

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, SendClient):
                self.client_writer.send(action.data)
            elif isinstance(action, SendUpstream):
                link = self.links.get(action.conn_id)
                if link is not None and link.writer is not None:
                    link.writer.send(action.data)
            elif isinstance(action, OpenUpstream):
                link = _Link(action.conn_id)
                self.links[action.conn_id] = link
                self.live.add(link)
                link.connecting = self._spawn(self._open(link, action.key))
            elif isinstance(action, CloseUpstream):
                self._close_link(action.conn_id, graceful=action.graceful)
            elif isinstance(action, CloseClient):
                self.graceful = action.graceful
                self.done.set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    # -- the client connection ------------------------------------------------------------

    async def serve(self, first: bytes) -> None:
        self.client_writer.task = self._spawn(self.client_writer.run())
        reader = asyncio.create_task(self._read_client(first))
        try:
            await self.done.wait()
            await _cancel(reader)
            for conn_id in list(self.links):  # (the core closed them all, unless it failed)
                self._close_link(conn_id, graceful=self.graceful)
            if self.closing:
                if not self.graceful:
                    for task in self.closing:
                        task.cancel()  # (it resets its connection)
                await asyncio.wait(set(self.closing))
            if self.graceful:
                await self.client_writer.finish()
                with contextlib.suppress(OSError):
                    await self.client.close()
            else:
                self.client.abort()
            for task in list(self.tasks):
                await _cancel(task)
        except asyncio.CancelledError:
            # No awaiting here: a cancelled task must not be stopped halfway through cleanup.
            reader.cancel()
            for task in self.tasks:
                task.cancel()
            for link in self.live:
                link.abort()
            self.client.abort()
            raise

    async def _read_client(self, first: bytes) -> None:
        try:
            data = first
            while data:
                self.apply(self.core.client_data(data))
                if self.done.is_set():
                    return
                data = await self.client.read()
            self.apply(self.core.client_eof())
        except OSError as exc:
            log.debug("HTTP/2 client connection broke: %r", exc)
            self.apply(self.core.client_eof())
        finally:
            self.done.set()  # (also when the core failed: the connection ends)

    def _client_write_failed(self, exc: OSError) -> None:
        log.debug("writing to the HTTP/2 client failed: %r", exc)
        self.apply(self.core.client_failed())

    # -- upstream connections -------------------------------------------------------------

    async def _open(self, link: _Link, key: Hashable | None) -> None:
        try:
            pipe = await self.connect(key)
        except Exception as exc:
            self.apply(self.core.upstream_failed(link.conn_id, str(exc)))
            return
        link.pipe = pipe
        link.writer = _Writer(
            pipe, lambda exc: self._upstream_failed(link, f"writing failed: {exc}")
        )
        link.writer.task = self._spawn(link.writer.run())
        link.reader = self._spawn(self._read_upstream(link, pipe))
        link.timer = asyncio.get_running_loop().call_later(
            _HANDSHAKE_TIMEOUT, lambda: self.apply(self.core.handshake_timeout(link.conn_id))
        )
        self.apply(self.core.upstream_opened(link.conn_id))

    async def _read_upstream(self, link: _Link, pipe: Pipe) -> None:
        try:
            while data := await pipe.read():
                self.apply(self.core.upstream_data(link.conn_id, data))
                if link.closed:
                    return
        except OSError as exc:
            self._upstream_failed(link, f"the upstream connection broke: {exc}")
        except Exception as exc:
            log.debug("relaying from the upstream failed", exc_info=True)
            self._upstream_failed(link, f"tether failed: {exc!r}")
        else:
            self.apply(self.core.upstream_eof(link.conn_id))

    def _upstream_failed(self, link: _Link, reason: str) -> None:
        self.apply(self.core.upstream_failed(link.conn_id, reason))

    def _close_link(self, conn_id: int, *, graceful: bool) -> None:
        link = self.links.pop(conn_id, None)
        if link is None:
            return
        if graceful and link.writer is not None:
            link.stop(keep_writer=True)
            task = self._spawn(self._finish(link))
            self.closing.add(task)
            task.add_done_callback(self.closing.discard)
        else:
            link.abort()
            self.live.discard(link)

    async def _finish(self, link: _Link) -> None:
        """Close an upstream connection gracefully: what was sent to it (our GOAWAY last)
        goes out first."""
        try:
            if link.reader is not None:
                await _cancel(link.reader)
            if link.writer is not None:
                await link.writer.finish()
            if link.pipe is not None:
                with contextlib.suppress(OSError):
                    await link.pipe.close()
        except asyncio.CancelledError:
            if link.pipe is not None:
                link.pipe.abort()
            raise
        finally:
            self.live.discard(link)


async def serve_http2(client: Pipe, first: bytes, decide: Decide, connect: Connect) -> None:
    """Route the streams of one HTTP/2 client connection (see `router.route_http`); `first`
    starts with the connection preface."""
    await _Http2Shell(client, decide, connect).serve(first)


async def _cancel(task: asyncio.Future[Any]) -> None:
    """Cancel a helper task and wait until it is over, whatever it ended with."""
    if task is asyncio.current_task():
        return
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.debug("helper task ended with %r", exc, exc_info=exc)
