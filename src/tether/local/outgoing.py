"""Outgoing connections of an intercepted process, carried over the tunnel.

The supervisor opens the tunnel stream first (so a refused or unreachable destination fails the
app's connect() with the real errno), then connects a duplicate of the app's socket to this
proxy on loopback. The proxy recognises the connection by its source port and relays it to the
stream that is waiting for it.
"""

import asyncio
import contextlib
import socket
import time

from tether.local.progress import Progress
from tether.tunnel import TunnelStream

# A registered stream whose loopback connection never arrives is dropped after this long.
_PENDING_TTL = 30.0


class OutgoingProxy:
    """Loopback listener that pairs redirected sockets with their tunnel streams."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._pending: dict[int, tuple[TunnelStream, float]] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> int:
        """Listen on 127.0.0.1 (an ephemeral port); return the port."""
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0, backlog=1024)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    def expect(self, source_port: int, stream: TunnelStream) -> None:
        """The next loopback connection from `source_port` belongs to `stream`."""
        now = time.monotonic()
        for port, (old, since) in list(self._pending.items()):
            if now - since > _PENDING_TTL:
                del self._pending[port]
                old.reset("ETIMEDOUT", "the application never used the connection", 110)
        self._pending[source_port] = (stream, now)

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        entry = self._pending.pop(int(peer[1]), None) if peer else None
        if entry is None:
            writer.transport.abort()
            return
        stream = entry[0]
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await stream.relay(reader, writer)
        except asyncio.CancelledError:
            # Ending normally keeps Python 3.11's start_server callback from logging.
            stream.reset("ECONNABORTED", "tether is exiting", 103)
            writer.transport.abort()

    async def close(self) -> None:
        """Stop listening and drop streams nobody claimed."""
        for stream, _ in self._pending.values():
            stream.reset("ECONNABORTED", "tether is exiting", 103)
        self._pending.clear()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
