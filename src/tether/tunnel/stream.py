"""One multiplexed stream, as an async reader/writer with protocol back-pressure."""

import asyncio
import collections
import contextlib
import errno
from typing import TYPE_CHECKING, Any

from tether.protocol import RemoteError

if TYPE_CHECKING:
    from tether.tunnel.tunnel import Tunnel

_RELAY_CHUNK = 262144


class StreamResetError(ConnectionResetError):
    """The stream was reset by the peer (or by us); `error` says why."""

    def __init__(self, error: RemoteError) -> None:
        super().__init__(error.errno or 0, f"{error.code}: {error.message}")
        self.error = error


class TunnelStream:
    """A stream of a Tunnel: `read`, `write`, `write_eof`, `reset`, and `relay` to a socket."""

    def __init__(self, tunnel: "Tunnel", stream_id: int, kind: str, params: dict[str, Any]):
        self._tunnel = tunnel
        self.id = stream_id
        self.kind = kind
        self.params = params
        self.info: dict[str, Any] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._eof = False
        self._reset: RemoteError | None = None

    # -- fed by the Tunnel -------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._readable.set()

    def _on_eof(self) -> None:
        self._eof = True
        self._readable.set()

    def _on_credit(self) -> None:
        self._writable.set()

    def _on_reset(self, error: RemoteError) -> None:
        self._reset = error
        self._readable.set()
        self._writable.set()

    # -- public ------------------------------------------------------------------------------

    @property
    def is_reset(self) -> bool:
        """Whether the stream was reset (by either side)."""
        return self._reset is not None

    async def read(self) -> bytes:
        """The next chunk; b"" after the peer's EOF. Raises StreamResetError if reset."""
        while not self._chunks:
            if self._reset is not None:
                raise StreamResetError(self._reset)
            if self._eof:
                return b""
            self._readable.clear()
            await self._readable.wait()
        chunks = self._chunks
        # Hand over everything queued at once: one socket write instead of one per frame.
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        # Credit goes back only once the application took the bytes: a slow reader slows its
        # own stream, never the tunnel.
        self._tunnel._acknowledge(self.id, len(data))
        return data

    async def write(self, data: bytes) -> None:
        """Send all of `data`, waiting for credit as needed."""
        pos, size = 0, len(data)
        while pos < size:
            if self._reset is not None:
                raise StreamResetError(self._reset)
            credit = self._tunnel._credit(self.id)
            if credit <= 0:
                self._writable.clear()
                await self._writable.wait()
                continue
            end = min(size, pos + credit)
            self._tunnel._send(self.id, data if pos == 0 and end == size else data[pos:end])
            pos = end

    def accept(self, info: dict[str, Any] | None = None) -> None:
        """Accept this stream (one the peer opened); data may flow both ways after it."""
        self._tunnel.accept(self, info)

    def write_eof(self) -> None:
        """Half-close our direction."""
        if self._reset is None:
            self._tunnel._end(self.id)

    def reset(self, code: str = "ECONNRESET", message: str = "", errno: int | None = None) -> None:
        """Abort the stream."""
        if self._reset is None:
            error = RemoteError(code, message, errno)
            self._reset = error
            self._tunnel._reset(self.id, error)
            self._readable.set()
            self._writable.set()

    async def relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Pump bytes both ways between this stream and a socket until both directions end."""

        async def upstream() -> None:
            # socket -> tunnel
            try:
                while data := await reader.read(_RELAY_CHUNK):
                    await self.write(data)
            except ConnectionError:
                self.reset("ECONNRESET", "connection reset", errno.ECONNRESET)
                return
            self.write_eof()

        async def downstream() -> None:
            # tunnel -> socket
            try:
                while data := await self.read():
                    writer.write(data)
                    await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
            except (OSError, StreamResetError):
                # OSError covers ENOTCONN from write_eof on a socket the client already shut.
                self.reset("ECONNRESET", "connection reset", errno.ECONNRESET)
                writer.transport.abort()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            self._tunnel._forget(self.id)
