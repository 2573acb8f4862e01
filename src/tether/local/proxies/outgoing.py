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
from typing import Any

from tether.local.session.progress import Progress
from tether.tunnel import TunnelStream
from tether.tunnel.datagrams import Deframer, frame
from tether.tunnel.stream import StreamResetError

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


class UdpProxy(asyncio.DatagramProtocol):
    """Loopback UDP endpoint for redirected connected-UDP sockets: each app socket (known by
    its source port) is paired with a "udp" stream whose far end is in the pod."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self._flows: dict[int, TunnelStream] = {}
        self._readers: set[asyncio.Task[None]] = set()
        self._transport: asyncio.DatagramTransport | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind 127.0.0.1 (an ephemeral port); return the port."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        self.port = int(transport.get_extra_info("sockname")[1])
        return self.port

    def expect(self, source_port: int, stream: TunnelStream) -> None:
        """Datagrams from `source_port` go to `stream`, and its datagrams back to that port."""
        old = self._flows.pop(source_port, None)
        if old is not None:
            old.reset("ECONNABORTED", "socket reconnected", 103)
        self._flows[source_port] = stream
        task = asyncio.ensure_future(self._back(source_port, stream))
        self._readers.add(task)
        task.add_done_callback(self._readers.discard)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        stream = self._flows.get(int(addr[1]))
        if stream is not None and not stream.is_reset:
            task = asyncio.ensure_future(self._forward(stream, data))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)

    async def _forward(self, stream: TunnelStream, data: bytes) -> None:
        with contextlib.suppress(StreamResetError):
            await stream.write(frame(data))

    async def _back(self, port: int, stream: TunnelStream) -> None:
        deframer = Deframer()
        try:
            while data := await stream.read():
                for datagram in deframer.feed(data):
                    if self._transport is not None:
                        self._transport.sendto(datagram, ("127.0.0.1", port))
        except StreamResetError:
            pass
        finally:
            if self._flows.get(port) is stream:
                del self._flows[port]

    async def close(self) -> None:
        """Drop every flow and the endpoint."""
        for stream in self._flows.values():
            stream.reset("ECONNABORTED", "tether is exiting", 103)
        self._flows.clear()
        for task in list(self._readers):
            task.cancel()
        if self._transport is not None:
            self._transport.close()
