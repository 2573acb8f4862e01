"""Mirroring: a copy of a connection's client bytes for each mirroring session.

The copy never holds up the real traffic: each has a bounded queue, and a copy that falls
behind is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
from typing import Any

from tether.agent.incoming.pipes import Pipe
from tether.agent.incoming.subscriptions import Subscription
from tether.tunnel import RemoteOpError, TunnelClosedError, TunnelStream

log = logging.getLogger(__name__)

OPEN_TIMEOUT = 10.0
# Per mirrored connection and session: beyond this many queued bytes the copy is dropped.
MIRROR_QUEUE_LIMIT = 1 << 20


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
            self._stream.reset("ECONNRESET", "mirror copy dropped", errno.ECONNRESET)

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
                        stream.reset("ECONNRESET", "mirror copy dropped", errno.ECONNRESET)
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
                stream.reset("ECONNRESET", "mirror copy failed", errno.ECONNRESET)
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
