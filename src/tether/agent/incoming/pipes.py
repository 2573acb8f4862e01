"""One byte-pipe interface over the two kinds of connection incoming traffic moves between:
sockets (the client, the original app) and tunnel streams (a session's local app)."""

import asyncio
import contextlib
import errno
from typing import Protocol

from tether.tunnel import TunnelStream
from tether.tunnel.stream import StreamResetError

_CHUNK = 65536


class Pipe(Protocol):
    """A bidirectional byte stream with half-close."""

    async def read(self) -> bytes:
        """The next bytes; b"" at the peer's EOF. Raises ConnectionError when reset."""
        ...

    async def write(self, data: bytes) -> None:
        """Send all of `data` (waits for back-pressure). Raises ConnectionError when reset."""
        ...

    def write_eof(self) -> None:
        """Half-close our sending direction."""
        ...

    def abort(self) -> None:
        """Reset the connection at once."""
        ...

    async def close(self) -> None:
        """Close gracefully (both directions)."""
        ...


class SocketPipe:
    """A Pipe over an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> bytes:
        return await self.reader.read(_CHUNK)

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def write_eof(self) -> None:
        if self.writer.is_closing():
            return
        with contextlib.suppress(OSError):
            if self.writer.can_write_eof():
                self.writer.write_eof()

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self.writer.wait_closed()


class StreamPipe:
    """A Pipe over a tunnel stream (a connection to a session's local app)."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream

    async def read(self) -> bytes:
        try:
            return await self.stream.read()
        except StreamResetError as exc:
            raise ConnectionResetError(str(exc)) from None

    async def write(self, data: bytes) -> None:
        try:
            await self.stream.write(data)
        except StreamResetError as exc:
            raise ConnectionResetError(str(exc)) from None

    def write_eof(self) -> None:
        self.stream.write_eof()

    def abort(self) -> None:
        self.stream.reset("ECONNRESET", "connection reset", errno.ECONNRESET)

    async def close(self) -> None:
        self.stream.write_eof()
