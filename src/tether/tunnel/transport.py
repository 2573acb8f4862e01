"""What a Tunnel runs over: anything with async read/write/close of bytes."""

import asyncio
import contextlib
import socket
from typing import Protocol


class Transport(Protocol):
    """A reliable, ordered byte pipe (a TCP connection, a port-forward WebSocket)."""

    async def read(self) -> bytes:
        """The next bytes; b"" once the peer closed."""
        ...

    async def write(self, data: bytes) -> None:
        """Send `data`, waiting while the pipe is congested."""
        ...

    async def close(self) -> None:
        """Close the pipe; idempotent."""
        ...


class StreamTransport:
    """A Transport over an asyncio stream pair (the agent's accepted TCP connections)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        sock = writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def read(self) -> bytes:
        """Up to 256 KiB; b"" at EOF or on a reset connection."""
        try:
            return await self._reader.read(262144)
        except ConnectionError:
            return b""

    async def write(self, data: bytes) -> None:
        """Write and drain."""
        self._writer.write(data)
        await self._writer.drain()

    async def close(self) -> None:
        """Close the connection, ignoring a peer that is already gone."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()
